//! The names of the bus's keys, in one place (the CLI's `dlq` commands and
//! torture name dead-letter keys through here too).
//!
//! Every key of one service carries the hash tag `{prefix:service}`, so
//! that on a Redis Cluster all of a service's keys live in one slot and
//! each script, MULTI and pipeline of the bus touches one slot:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{prefix:service}:stream` | stream | the service's events, its consumer group |
//! | `{prefix:service}:dead` | stream | its dead letters |
//! | `{prefix:service}:dead-trimmed` | counter | dead letters the cap dropped |
//! | `{prefix:service}:alive` | sorted set | consumer name -> heartbeat expiry (server ms) |
//!
//! A prefix may not contain `{` or `}` (it would move the hash tag).

use crate::domain::Service;

/// Why `prefix` cannot name a bus's keys, if it cannot.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("a Redis key prefix must not be empty".into());
    }
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "the Redis key prefix {prefix:?} contains a brace: it would move the keys' hash tag {{prefix:service}}"
        ));
    }
    Ok(())
}

/// The hash tag's content of `service`'s keys: `prefix:service`.
pub fn tag(prefix: &str, service: Service) -> String {
    format!("{prefix}:{}", service.slug())
}

/// The stream `service` consumes.
pub fn stream(prefix: &str, service: Service) -> String {
    format!("{{{}}}:stream", tag(prefix, service))
}

/// `service`'s dead-letter stream.
pub fn dead(prefix: &str, service: Service) -> String {
    format!("{{{}}}:dead", tag(prefix, service))
}

/// How many of `service`'s dead letters the cap dropped.
pub fn dead_trimmed(prefix: &str, service: Service) -> String {
    format!("{{{}}}:dead-trimmed", tag(prefix, service))
}

/// The heartbeats of `service`'s consumers: a sorted set of consumer
/// names scored by the server time (ms) their heartbeat expires at.
pub fn alive(prefix: &str, service: Service) -> String {
    format!("{{{}}}:alive", tag(prefix, service))
}

/// A SCAN MATCH pattern that finds every key of `prefix` (and possibly
/// others': filter with [`owned_by`]).
pub fn scan_pattern(prefix: &str) -> String {
    let mut pattern = String::from("{");
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str(":*");
    pattern
}

/// Whether `key` is one of `prefix`'s keys: its hash tag is
/// `prefix:service` for some service.
pub fn owned_by(prefix: &str, key: &str) -> bool {
    let Some(rest) = key.strip_prefix('{') else {
        return false;
    };
    let Some((tag_content, _)) = rest.split_once('}') else {
        return false;
    };
    Service::ALL.iter().any(|s| tag(prefix, *s) == tag_content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_service_shares_its_hash_tag() {
        for service in Service::ALL {
            let tag = format!("{{p:{}}}", service.slug());
            for key in [
                stream("p", service),
                dead("p", service),
                dead_trimmed("p", service),
                alive("p", service),
            ] {
                assert!(key.starts_with(&tag), "{key}");
                assert!(owned_by("p", &key), "{key}");
                assert!(!owned_by("p:x", &key), "{key} is not prefix p:x's");
            }
        }
        assert_eq!(stream("ps", Service::User), "{ps:user}:stream");
    }

    #[test]
    fn other_prefixes_and_foreign_keys_are_not_owned() {
        assert!(!owned_by("p", "{p:x:user}:stream"));
        assert!(!owned_by("p", "p:stream:user"));
        assert!(!owned_by("p", "{p:nobody}:stream"));
        assert!(!owned_by("p", "{p:user"));
    }

    #[test]
    fn a_prefix_with_a_brace_or_nothing_is_refused() {
        assert!(check_prefix("a{b").is_err());
        assert!(check_prefix("a}b").is_err());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("ps_test:x:1").is_ok());
    }

    #[test]
    fn the_scan_pattern_escapes_glob_characters() {
        assert_eq!(scan_pattern("a*b?[c]\\"), "{a\\*b\\?\\[c\\]\\\\:*");
        assert_eq!(scan_pattern("ps:x"), "{ps:x:*");
    }
}
