//! One grammar for the names that become file names, URL paths and store keys: model names
//! and versions, checked the same way at every entry point (the CLI, the API, a bundle's
//! manifest, the agent's config and `import`), and [`join`], the one way to make a path from
//! a name.
//!
//! A name is 1 to 128 characters of ASCII letters, digits, `_`, `-` and `.`, and starts with a
//! letter or a digit. So `.`, `..`, hidden names, slashes, NUL, spaces and control characters
//! can never reach a path: `..` as a model name once stored a bundle one directory above its
//! own and served it as `/v2/models/..`.

use std::path::{Path, PathBuf};

/// The longest name.
pub const MAX_NAME: usize = 128;

/// Why a name is refused; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} `{shown}` must be 1 to {MAX_NAME} characters long", shown = shown(.name))]
    Length { what: &'static str, name: String },
    #[error(
        "{what} `{shown}` may only contain letters, digits, `_`, `-` and `.`, and must start with a letter or digit",
        shown = shown(.name)
    )]
    Characters { what: &'static str, name: String },
}

/// A name as an error or a log shows it: control characters escaped, at most 64 characters.
pub fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Checks `name` against the grammar; `what` says what it names (`model name`, `version`).
pub fn check(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(NameError::Length { what, name: name.chars().take(200).collect() });
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(NameError::Characters { what, name: name.to_owned() });
    }
    Ok(())
}

/// Checks a model name.
pub fn check_model(name: &str) -> Result<(), NameError> {
    check("model name", name)
}

/// `dir/name`, for a name that passes the grammar: the one way a name becomes a path, so it
/// stays one component directly under `dir`.
pub fn join(dir: &Path, what: &'static str, name: &str) -> Result<PathBuf, NameError> {
    check(what, name)?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_their_directory_are_refused_with_the_rule() {
        for good in ["bc", "breast_cancer", "bc-2", "1.0.0", "2.0.0-bad", "a..b", "x".repeat(128).as_str()] {
            assert_eq!(check_model(good), Ok(()), "{good}");
        }
        for bad in [".", "..", ".hidden", "-flag", "_x", "a/b", "a\\b", "a b", "a\0b", "é", "a\nb"] {
            let err = check_model(bad).unwrap_err().to_string();
            assert!(err.contains("must start with a letter or digit"), "{bad:?}: {err}");
        }
        assert!(check_model("").unwrap_err().to_string().contains("1 to 128 characters"));
        assert!(check_model(&"x".repeat(129)).is_err());
        // Control characters never reach a terminal raw.
        let err = check_model("a\u{1b}[2Jb").unwrap_err().to_string();
        assert!(!err.contains('\u{1b}') && err.contains("\\u{1b}"), "{err}");
        assert_eq!(join(Path::new("/s"), "model name", "bc").unwrap(), Path::new("/s/bc"));
        assert!(join(Path::new("/s"), "model name", "..").is_err());
    }
}
