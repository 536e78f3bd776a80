//! Reconnect delays: exponential backoff with full jitter, so a server
//! restart is not met by every browser at the same instant.

/// The first delay's ceiling, in ms.
pub const BASE_MS: f64 = 500.0;
/// The longest delay, in ms.
pub const MAX_MS: f64 = 30_000.0;
/// The shortest delay, in ms (avoids a hot loop when jitter draws near zero).
pub const MIN_MS: f64 = 100.0;

/// The delay before reconnect attempt `attempt` (0-based), given a random
/// number in `[0, 1)`: uniform in `[MIN_MS, min(MAX_MS, BASE_MS · 2^attempt)]`.
pub fn delay_ms(attempt: u32, random: f64) -> f64 {
    let ceiling = (BASE_MS * 2f64.powi(attempt.min(16) as i32)).min(MAX_MS);
    (random.clamp(0.0, 1.0) * ceiling).max(MIN_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        assert_eq!(delay_ms(0, 1.0), 500.0);
        assert_eq!(delay_ms(1, 1.0), 1000.0);
        assert_eq!(delay_ms(3, 1.0), 4000.0);
        assert_eq!(delay_ms(10, 1.0), MAX_MS);
        assert_eq!(delay_ms(u32::MAX, 1.0), MAX_MS);
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        assert_eq!(delay_ms(5, 0.5), 8000.0);
        assert_eq!(delay_ms(5, 0.0), MIN_MS);
        assert_eq!(delay_ms(2, 2.0), 2000.0, "random is clamped");
    }
}
