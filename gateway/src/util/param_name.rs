//! Whether a parameter's name is, to some server, one of a few names the gateway must catch
//! however it is spelled (`_method`, `access_token`): servers read a name as sent (Flask, Go),
//! as PHP rewrites it (leading spaces dropped, cut at a NUL or a `[`, `.` and ` ` read as `_`)
//! or as Rack does (brackets around it dropped, cut at the next one), and compare it in any
//! case (Slim reads `_METHOD`; Go's `encoding/json` folds case).
use super::jsonpath::fold_eq;

/// Whether some server reads `name` as one of `targets` (compared under case folding).
pub fn reads_as(name: &str, targets: &[&str]) -> bool {
    let is = |n: &str| targets.iter().any(|t| fold_eq(n, t));
    // `.` and ` ` read as `_`, allocating only for a name that has them.
    let underscored = |n: &str| n.contains(['.', ' ']) && is(&n.replace(['.', ' '], "_"));
    let php = name.trim_start_matches(' ');
    let php = php.split(['\0', '[']).next().unwrap_or("");
    let rack = name.trim_start_matches(['[', ']']);
    let rack = rack.split(['[', ']']).next().unwrap_or("");
    is(name) || is(php) || underscored(php) || is(rack) || underscored(rack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reading_is_looked_at() {
        for name in [
            "access_token",
            "ACCESS_TOKEN",
            " access_token",
            "access.token",
            "access token",
            "[access_token]",
            "access_token]",
            "access_token[]",
            "access_token\0x",
        ] {
            assert!(reads_as(name, &["access_token"]), "{name:?}");
        }
        for name in ["access_tokens", "xaccess_token", "access", "token"] {
            assert!(!reads_as(name, &["access_token"]), "{name:?}");
        }
    }
}
