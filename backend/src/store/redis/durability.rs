//! The start-up check that Redis keeps what it acknowledges: an `ack` is
//! only as durable as Redis makes the write before it answers.

use std::collections::HashMap;

/// The settings read, and the value each must have for an ack to mean
/// stored: the append-only file on, fsynced before every answer (Redis
/// fsyncs once per event-loop turn, so concurrent writes share it), and no
/// eviction (an evicted stream would look like a lost history and start a
/// new one).
pub const REQUIRED: [(&str, &str); 3] =
    [("appendonly", "yes"), ("appendfsync", "always"), ("maxmemory-policy", "noeviction")];

/// Each setting of [`REQUIRED`] that `settings` (from `CONFIG GET`) does not
/// have as required, as `name is "value" (needs "wanted")`.
pub fn problems(settings: &HashMap<String, String>) -> Vec<String> {
    REQUIRED
        .iter()
        .filter_map(|(name, wanted)| match settings.get(*name) {
            Some(value) if value.eq_ignore_ascii_case(wanted) => None,
            Some(value) => Some(format!("{name} is \"{value}\" (needs \"{wanted}\")")),
            None => Some(format!("{name} cannot be read (needs \"{wanted}\")")),
        })
        .collect()
}

/// `CONFIG GET` of the settings [`REQUIRED`] names.
pub fn command() -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("CONFIG");
    cmd.arg("GET");
    for (name, _) in REQUIRED {
        cmd.arg(name);
    }
    cmd
}

/// Reads the settings [`REQUIRED`] names.
pub async fn read(conn: &mut impl ::redis::aio::ConnectionLike) -> ::redis::RedisResult<HashMap<String, String>> {
    command().query_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn every_missing_setting_is_named_with_what_it_should_be() {
        let good = settings(&[("appendonly", "yes"), ("appendfsync", "always"), ("maxmemory-policy", "noeviction")]);
        assert!(problems(&good).is_empty());
        let everysec =
            settings(&[("appendonly", "yes"), ("appendfsync", "everysec"), ("maxmemory-policy", "noeviction")]);
        assert_eq!(problems(&everysec), [r#"appendfsync is "everysec" (needs "always")"#]);
        let bare = settings(&[("appendonly", "no"), ("appendfsync", "everysec"), ("maxmemory-policy", "allkeys-lru")]);
        assert_eq!(
            problems(&bare),
            [
                r#"appendonly is "no" (needs "yes")"#,
                r#"appendfsync is "everysec" (needs "always")"#,
                r#"maxmemory-policy is "allkeys-lru" (needs "noeviction")"#,
            ]
        );
        assert_eq!(problems(&settings(&[])).len(), 3, "a setting CONFIG did not return is a problem too");
    }
}
