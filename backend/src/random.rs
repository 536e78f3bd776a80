//! Random identifiers from the operating system's generator.

/// `bytes` random bytes as lowercase hex, or `None` if the OS generator failed.
pub fn random_hex(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).ok()?;
    Some(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_the_right_length_and_different_each_time() {
        let a = random_hex(16).expect("os random");
        let b = random_hex(16).expect("os random");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
