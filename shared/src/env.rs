//! Environment overrides that survive what platforms inject.
//!
//! Both binaries read `OUTPOST_*` variables as configuration and refuse unknown keys, so a typo
//! fails at start instead of being ignored. Kubernetes, though, injects *service links* into
//! every pod of a namespace (unless `enableServiceLinks: false`): for a Service named
//! `outpost-coordinator` with port 7400/TCP, `OUTPOST_COORDINATOR_SERVICE_HOST`,
//! `OUTPOST_COORDINATOR_SERVICE_PORT`, `OUTPOST_COORDINATOR_PORT=tcp://…` and
//! `OUTPOST_COORDINATOR_PORT_7400_TCP{,_PROTO,_PORT,_ADDR}`. Those are not configuration and
//! must not stop a pod: [`is_service_link`] recognises them so the loaders skip them (and say so
//! at debug level), while a misspelt real key still fails — with the closest real key named
//! ([`closest`]).
//!
//! Real keys never collide with these shapes: nested keys are joined with `__`, which a
//! service-link name (from a DNS label) does not contain, and no top-level key ends in `port`,
//! `service_host` or a `port_<n>_<protocol>` suffix.

/// Whether `rest` — a variable's name after the binary's prefix, any case — has the shape of
/// a Kubernetes service-link variable.
pub fn is_service_link(rest: &str) -> bool {
    let name = rest.to_ascii_uppercase();
    if name.contains("__") || name.is_empty() {
        return false;
    }
    let parts: Vec<&str> = name.split('_').collect();
    // `…SERVICE_HOST`, `…SERVICE_PORT`, `…SERVICE_PORT_<PORT NAME>`.
    if parts.ends_with(&["SERVICE", "HOST"]) || parts.ends_with(&["SERVICE", "PORT"]) {
        return true;
    }
    if let Some(i) = parts.windows(2).position(|w| w == ["SERVICE", "PORT"])
        && i + 2 < parts.len()
    {
        return true;
    }
    // `…PORT=tcp://…`.
    if parts.last() == Some(&"PORT") {
        return true;
    }
    // `…PORT_<n>_<TCP|UDP|SCTP>` and its `_PROTO`, `_PORT`, `_ADDR` companions.
    parts.windows(3).enumerate().any(|(i, w)| {
        w[0] == "PORT"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
            && match parts.len() - (i + 3) {
                0 => true,
                1 => matches!(parts[i + 3], "PROTO" | "PORT" | "ADDR"),
                _ => false,
            }
    })
}

/// The variables in this process's environment that start with `prefix` and have the shape of
/// a service link (full names, sorted): what a loader skipped, for its one debug line.
pub fn service_links(prefix: &str) -> Vec<String> {
    let prefix = prefix.to_ascii_uppercase();
    let mut out: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| {
            let upper = k.to_ascii_uppercase();
            upper.strip_prefix(&prefix).is_some_and(is_service_link)
        })
        .collect();
    out.sort();
    out
}

/// A configuration loader's error in words, with the closest real key named when the error is
/// an unknown key.
pub fn config_error(e: &figment::Error) -> String {
    let hint = match &e.kind {
        figment::error::Kind::UnknownField(field, expected) => did_you_mean(field, expected),
        _ => String::new(),
    };
    format!("{e}{hint}")
}

/// ` — did you mean `KEY`?` when an unknown key is a likely typo of one of `expected`, else
/// nothing: appended to a loader's "unknown field" error.
pub fn did_you_mean(unknown: &str, expected: &[&str]) -> String {
    closest(unknown, expected).map_or(String::new(), |c| format!(" — did you mean `{c}`?"))
}

/// The candidate nearest to `name` by edit distance, if it is near enough to be a likely typo
/// (at most a third of the name's length, and at least 1 edit allowed).
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (levenshtein(name, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_service_links_are_recognised_and_real_keys_are_not() {
        for injected in [
            "COORDINATOR_SERVICE_HOST",
            "COORDINATOR_SERVICE_PORT",
            "COORDINATOR_SERVICE_PORT_API",
            "COORDINATOR_PORT",
            "COORDINATOR_PORT_7400_TCP",
            "COORDINATOR_PORT_7400_TCP_PROTO",
            "COORDINATOR_PORT_7400_TCP_PORT",
            "COORDINATOR_PORT_7400_TCP_ADDR",
            "SERVICE_HOST",
            "PORT",
            "PORT_8883_TCP_ADDR",
            "port_53_udp",
            "METRICS_PORT_9100_SCTP",
        ] {
            assert!(is_service_link(injected), "{injected}");
        }
        for real in [
            "LISTEN",
            "HTTP__MAX_BODY_BYTES",
            "BROKER__URL",
            "API__PORT",
            "TELEMETRY__INTERVAL_SECS",
            "DATA_DIR",
            "LISTN",
            "PORT_7400_TCP_EXTRA_THING",
            "PORT_X_TCP",
            "",
        ] {
            assert!(!is_service_link(real), "{real}");
        }
    }

    #[test]
    fn a_typo_names_the_closest_key() {
        let keys = ["listen", "data_dir", "models", "telemetry", "http"];
        assert_eq!(closest("listn", &keys), Some("listen"));
        assert_eq!(closest("data_dri", &keys), Some("data_dir"));
        assert_eq!(closest("model", &keys), Some("models"));
        assert_eq!(closest("completely_else", &keys), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }
}
