//! Validation of names and client input that the contract constrains.

use regex::Regex;

use crate::Error;

/// Default pattern of an `order_id`.
pub const DEFAULT_ORDER_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// Whether an attribute name is usable as `{name}` in an upstream URL template and in a
/// composed route's `with`: 1-32 of `a-z 0-9 _`, not starting with a digit, not `order_id`.
pub fn is_attribute_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        && name != "order_id"
}

/// Checks a service (or route, or client) name: `^[a-z][a-z0-9_-]{0,31}$`.
/// Such names become subject tokens and KV keys, so nothing else may pass.
pub fn name(field: &str, value: &str) -> Result<(), Error> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 32
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{value:?} is not a valid name: use 1-32 of a-z 0-9 _ -, starting with a letter"
            ),
        ))
    }
}

/// The compiled `order_id` rule.
#[derive(Debug, Clone)]
pub struct OrderIdRule {
    pattern: Regex,
}

impl OrderIdRule {
    /// Compiles a pattern; it must be anchored so that it constrains the whole id.
    pub fn new(pattern: &str) -> Result<Self, Error> {
        if !pattern.starts_with('^') || !pattern.ends_with('$') {
            return Err(Error::invalid(
                "order_id_pattern",
                "must be anchored with ^ and $",
            ));
        }
        let pattern = Regex::new(pattern)
            .map_err(|e| Error::invalid("order_id_pattern", format!("not a regex: {e}")))?;
        Ok(OrderIdRule { pattern })
    }

    /// Whether `order_id` is acceptable.
    pub fn accepts(&self, order_id: &str) -> bool {
        self.pattern.is_match(order_id)
    }

    /// The pattern, for error messages.
    pub fn as_str(&self) -> &str {
        self.pattern.as_str()
    }

    /// What an unsafe id this pattern lets through, found by probing it: `/` (a path
    /// separator once the upstream decodes it), `%` (an escape, such as `%2F` or `%0D%0A`),
    /// ids of dots only (`.`, `..`: a path segment of their own) and control characters (CR,
    /// LF, NUL…). An id travels percent-encoded to an upstream, but an upstream that decodes
    /// twice, or joins it to a path, sees these. Empty for the default pattern. The probes
    /// are samples (the id alone, inside and around letters and digits), not a proof.
    pub fn risks(&self) -> Vec<&'static str> {
        let wraps = |c: &str| -> Vec<String> {
            [
                c.to_owned(),
                c.repeat(2),
                format!("a{c}a"),
                format!("A1{c}"),
                format!("{c}A1"),
                format!("1{c}1"),
                format!("ab{c}cd"),
                format!("..{c}"),
            ]
            .to_vec()
        };
        let any = |samples: Vec<String>| samples.iter().any(|s| self.accepts(s));
        let mut risks = Vec::new();
        if any(wraps("/")) || any(wraps("\\")) {
            risks.push("a path separator (/ or \\)");
        }
        if any(["%2F", "%0D%0A", "..%2F", "%2e%2e", "%00"]
            .iter()
            .flat_map(|c| wraps(c))
            .chain(wraps("%"))
            .collect())
        {
            risks.push("a percent sign (an escape such as %2F or %0D%0A)");
        }
        if any([".", "..", "...", "...."].map(str::to_owned).to_vec()) {
            risks.push("an id of dots only (. or ..)");
        }
        let controls = ["\r", "\n", "\0", "\t", "\x1b", "\x7f", "\r\n", "\u{85}"];
        if any(controls.iter().flat_map(|c| wraps(c)).collect()) {
            risks.push("control characters (CR, LF, NUL…)");
        }
        risks
    }
}

/// Decodes `%XX` escapes (a path segment, a URL's user or password); `None` when an escape is
/// malformed (`%zz`, a `%` at the end) or the bytes do not make UTF-8. The decoding is the
/// `percent-encoding` crate's, which passes malformed escapes through: they are refused here
/// first, as the contract has always done.
pub fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("A1").as_deref(), Some("A1"));
        assert_eq!(percent_decode("A%2D1").as_deref(), Some("A-1"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_decode("a%2").as_deref(), None);
        assert_eq!(percent_decode("%41%42c").as_deref(), Some("ABc"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("\u{e9}"));
        assert_eq!(percent_decode("100%25").as_deref(), Some("100%"));
    }

    proptest::proptest! {
        /// Whatever is encoded (every byte as `%XX`, or left as it is) decodes back.
        #[test]
        fn percent_decoding_undoes_any_encoding(text in ".{0,24}", mask in proptest::num::u32::ANY) {
            let mut encoded = String::new();
            for (i, c) in text.chars().enumerate() {
                if mask >> (i % 32) & 1 == 1 || c == '%' {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        encoded.push_str(&format!("%{b:02X}"));
                    }
                } else {
                    encoded.push(c);
                }
            }
            proptest::prop_assert_eq!(percent_decode(&encoded), Some(text));
        }
    }

    #[test]
    fn names() {
        for good in ["service1", "a", "s-2_x", "abcdefghijklmnopqrstuvwxyz012345"] {
            assert!(name("f", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Service",
            "a.b",
            "a*",
            "a>",
            "a b",
            "abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            assert!(
                matches!(name("f", bad), Err(Error::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_order_ids() {
        let rule = OrderIdRule::new(DEFAULT_ORDER_ID_PATTERN).expect("the default compiles");
        assert_eq!(rule.as_str(), DEFAULT_ORDER_ID_PATTERN);
        for good in ["A1", "slow-1", "x_y", &"a".repeat(64)] {
            assert!(rule.accepts(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a.b",
            "ä",
            "a/b",
            "a\n",
            &"a".repeat(65),
            "*",
            ">",
        ] {
            assert!(!rule.accepts(bad), "{bad:?}");
        }
    }

    #[test]
    fn permissive_patterns_are_named_for_what_they_let_through() {
        let rule = |p: &str| OrderIdRule::new(p).expect("compiles");
        assert!(rule(DEFAULT_ORDER_ID_PATTERN).risks().is_empty());
        assert!(rule("^[A-Za-z0-9_.-]{1,64}$").risks() == ["an id of dots only (. or ..)"]);
        assert_eq!(
            rule("^.{1,64}$").risks().len(),
            4,
            "{:?}",
            rule("^.{1,64}$").risks()
        );
        assert_eq!(rule("^[^ ]+$").risks().len(), 4);
        assert_eq!(
            rule("^[A-Za-z0-9%]+$").risks(),
            ["a percent sign (an escape such as %2F or %0D%0A)"]
        );
        assert_eq!(rule("^[a-z0-9/]+$").risks(), ["a path separator (/ or \\)"]);
        assert_eq!(
            rule("^[a-z0-9\\s]+$").risks(),
            ["control characters (CR, LF, NUL…)"]
        );
    }

    #[test]
    fn patterns_must_be_anchored_and_valid() {
        assert!(OrderIdRule::new("[0-9]+").is_err());
        assert!(OrderIdRule::new("^[0-9+$").is_err());
        assert!(OrderIdRule::new("^[0-9]{1,10}$").is_ok());
    }
}
