//! How servers read the name of a query or form parameter. Flask, Starlette and Go read it
//! as sent; PHP and Rack (Rails, Sinatra) rewrite it first: PHP drops leading spaces, cuts
//! the name at a NUL and reads `.` and ` ` as `_` (`user.id` is `user_id`); Rack drops `[`
//! and `]` around it (`[amount]` and `amount]` are `amount`); both read `name[...]` as a
//! list or map under `name`. A name that one of them reads as *another* name is refused, so
//! that a condition on `amount` cannot be passed by sending ` amount`; `name[...]` is kept
//! (JSON:API's `filter[status]`) unless `name` is also given as it is.
use super::{ExtractError, path::PathRules};

/// What a parameter's name is to the servers that rewrite names.
#[derive(Debug, PartialEq, Eq)]
pub enum Reading<'a> {
    /// Every server reads it as sent.
    Literal,
    /// `base[...]`: PHP and Rack read a list or map under `base`.
    Nested(&'a str),
}

/// Reads `name` as the servers that rewrite names do; a name one of them reads as another is
/// refused. `rules.dotted_names` keeps `.` and ` ` (AWS query APIs' `Filter.1.Name`) for a
/// service whose server is not PHP.
pub fn read(name: &str, rules: PathRules) -> Result<Reading<'_>, ExtractError> {
    let refuse = |why: &'static str| Err(ExtractError::ParamName(name.to_string(), why));
    if name.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return refuse("PHP ends a name at a NUL; control characters are not names");
    }
    if name.starts_with(' ') {
        return refuse("PHP drops the spaces a name starts with");
    }
    if name.starts_with(['[', ']']) {
        return refuse("Rack drops the brackets a name starts with");
    }
    let (base, nest) = name.split_at(name.find('[').unwrap_or(name.len()));
    if base.contains(']') {
        return refuse("Rack ends a name at a ']'");
    }
    if base.contains(['.', ' ']) && (!rules.dotted_names || overrides_method(name)) {
        return refuse(
            "PHP reads '.' and ' ' in a name as '_'; a service whose server is not PHP may \
             allow them (`paths: { dotted_names: true }`)",
        );
    }
    if nest.is_empty() {
        return Ok(Reading::Literal);
    }
    // `[key]` groups and nothing else: PHP reads an unclosed `[` as `_` and drops what follows
    // a closing one, Rack reads both otherwise.
    let mut rest = nest;
    while let Some(group) = rest.strip_prefix('[') {
        match group.find(['[', ']']) {
            Some(end) if group.as_bytes()[end] == b']' => rest = &group[end + 1..],
            _ => return refuse("PHP reads an unclosed '[' in a name as '_'"),
        }
    }
    if !rest.is_empty() {
        return refuse("PHP drops what follows a name's last ']'");
    }
    Ok(Reading::Nested(base))
}

/// Whether a server that rewrites names (PHP, Rack) reads `name` as `_method`, the field
/// Rails (`Rack::MethodOverride`) and Laravel route as the request's method (Slim reads
/// `_METHOD`: any case). For names in
/// bodies that are not read for arguments (a multipart form, a form sent without a type),
/// where only that reading matters.
pub fn overrides_method(name: &str) -> bool {
    crate::util::param_name::reads_as(name, &["_method"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_(name: &str) -> Result<Reading<'_>, String> {
        read(name, PathRules::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn names_every_server_reads_as_sent_are_kept() {
        for name in ["amount", "user_id", "Amount", "a-b", "", "é", "a\u{a0}b"] {
            assert_eq!(read_(name), Ok(Reading::Literal), "{name:?}");
        }
    }

    #[test]
    fn nested_names_are_read_under_their_base() {
        assert_eq!(read_("ids[]"), Ok(Reading::Nested("ids")));
        assert_eq!(read_("filter[status]"), Ok(Reading::Nested("filter")));
        assert_eq!(read_("a[b][]"), Ok(Reading::Nested("a")));
        assert_eq!(read_("a[x.y]"), Ok(Reading::Nested("a")));
    }

    #[test]
    fn names_php_or_rack_read_as_another_name_are_refused() {
        for name in [
            " amount",
            "amount\0x",
            "\tamount",
            "[amount]",
            "]amount",
            "amount]",
            "am]ount",
            "user.id",
            "user id",
            ".method",
            "amount[",
            "amount[x",
            "a[b]c",
            "a[b[c]]",
        ] {
            assert!(read_(name).is_err(), "{name:?} was kept");
        }
    }

    #[test]
    fn every_reading_of_method_is_found() {
        for name in ["_method", " _method", ".method", "[_method]", "_method]"] {
            assert!(overrides_method(name), "{name:?}");
        }
        for name in ["_method[]", "_method\0x", "_method[x]"] {
            assert!(overrides_method(name), "{name:?}");
        }
        assert!(overrides_method("_METHOD"), "Slim's");
        for name in ["method", "_methods", "x_method", "method_"] {
            assert!(!overrides_method(name), "{name:?}");
        }
    }

    #[test]
    fn a_service_may_keep_dotted_names() {
        let rules = PathRules {
            dotted_names: true,
            ..PathRules::default()
        };
        assert_eq!(read("Filter.1.Name", rules).ok(), Some(Reading::Literal));
        assert_eq!(read("a b", rules).ok(), Some(Reading::Literal));
        assert!(read(" a", rules).is_err());
        // What PHP would route as the request's method is refused whatever the service says.
        assert!(read(".method", rules).is_err());
        assert!(read(".METHOD", rules).is_err());
    }
}
