//! How xtask tells the user what it is doing: one line per step on stderr.

/// Prints a step so the user knows what is happening.
pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}
