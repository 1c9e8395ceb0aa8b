//! Targeted cache control (RFC 9213): `CDN-Cache-Control` and fields like
//! it, which a shared cache obeys instead of `Cache-Control`.
//!
//! A targeted field is a Structured Field Dictionary (RFC 8941 §3.2). The
//! cache walks its target list in order and takes the first field with a
//! valid, non-empty value; `Cache-Control` and `Expires` are then ignored
//! (RFC 9213 §2.2). A field that does not parse is ignored as a whole, and a
//! directive whose value has the wrong type is ignored alone (§2.1).

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The target list a shared cache uses unless told otherwise: our own field
/// first (the most specific), then the one every CDN honours.
pub(crate) fn default_targets() -> Vec<HeaderName> {
    vec![
        HeaderName::from_static("edgecache-cache-control"),
        HeaderName::from_static("cdn-cache-control"),
    ]
}

/// The response headers as the expiry rules should read them: when a
/// targeted field in `targets` has a valid, non-empty value, a copy whose
/// `Cache-Control` is that field's directives and which has no `Expires` or
/// `Pragma`; otherwise the headers themselves.
pub(crate) fn effective_headers<'a>(headers: &'a HeaderMap, targets: &[HeaderName]) -> Cow<'a, HeaderMap> {
    for target in targets {
        if !headers.contains_key(target) {
            continue;
        }
        let Some(directives) = field_value(headers, target).and_then(|value| parse_dictionary(&value)) else {
            continue;
        };
        if directives.is_empty() {
            continue;
        }
        let Ok(cache_control) = HeaderValue::from_str(&as_cache_control(&directives)) else {
            continue;
        };
        let mut effective = headers.clone();
        effective.remove(header::EXPIRES);
        effective.remove(header::PRAGMA);
        effective.insert(header::CACHE_CONTROL, cache_control);
        return Cow::Owned(effective);
    }
    Cow::Borrowed(headers)
}

/// Every line of a field joined with commas (RFC 8941 §4.2); `None` when a
/// line is not text.
fn field_value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut joined = String::new();
    for line in headers.get_all(name) {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(line.to_str().ok()?);
    }
    Some(joined)
}

/// A dictionary member's value, as far as cache directives care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// `?1`, or a bare key.
    True,
    /// `?0`: as if the directive were absent.
    False,
    Integer(i64),
    String(String),
    Token(String),
    /// A decimal, byte sequence or inner list: no cache directive takes one.
    Other,
}

/// Directives whose value is an Integer of seconds (RFC 9213 §2.1).
const SECONDS: &[&str] = &["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"];

/// Cache directives in `Cache-Control` syntax; directives whose value has
/// the wrong type (a string for `max-age`, a negative number, a decimal) are
/// left out.
fn as_cache_control(directives: &[(String, Value)]) -> String {
    let mut out = String::new();
    for (name, value) in directives {
        if SECONDS.contains(&name.as_str()) && !matches!(value, Value::Integer(_)) {
            continue;
        }
        let text = match value {
            Value::True => name.clone(),
            Value::Integer(n) if *n >= 0 => format!("{name}={n}"),
            Value::String(text) => format!("{name}=\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")),
            Value::Token(token) => format!("{name}={token}"),
            Value::False | Value::Integer(_) | Value::Other => continue,
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&text);
    }
    out
}

/// Parses a Structured Field Dictionary (RFC 8941 §4.2.2); `None` when the
/// text is not one. A later member replaces an earlier one with the same key.
pub(crate) fn parse_dictionary(text: &str) -> Option<Vec<(String, Value)>> {
    let mut parser = Parser {
        input: text.trim_matches([' ', '\t']).as_bytes(),
        at: 0,
    };
    let mut members: Vec<(String, Value)> = Vec::new();
    while !parser.done() {
        let key = parser.key()?;
        let value = if parser.eat(b'=') {
            parser.member_value()?
        } else {
            parser.parameters()?;
            Value::True
        };
        match members.iter_mut().find(|(known, _)| *known == key) {
            Some(member) => member.1 = value,
            None => members.push((key, value)),
        }
        parser.skip_ows();
        if parser.done() {
            break;
        }
        if !parser.eat(b',') {
            return None;
        }
        parser.skip_ows();
        if parser.done() {
            // A trailing comma.
            return None;
        }
    }
    Some(members)
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.at >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
    fn key(&mut self) -> Option<String> {
        let start = self.at;
        if !matches!(self.peek(), Some(b'a'..=b'z' | b'*')) {
            return None;
        }
        while matches!(self.peek(), Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')) {
            self.at += 1;
        }
        std::str::from_utf8(&self.input[start..self.at]).ok().map(str::to_owned)
    }

    /// An item or an inner list, with its parameters.
    fn member_value(&mut self) -> Option<Value> {
        if self.peek() == Some(b'(') {
            self.inner_list()?;
            self.parameters()?;
            return Some(Value::Other);
        }
        let value = self.bare_item()?;
        self.parameters()?;
        Some(value)
    }

    fn inner_list(&mut self) -> Option<()> {
        self.eat(b'(');
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return Some(());
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }

    /// `*( ";" *SP key [ "=" bare-item ] )`; the values are not kept.
    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<Value> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(Value::String),
            b'A'..=b'Z' | b'a'..=b'z' | b'*' => Some(Value::Token(self.token())),
            b':' => self.byte_sequence().map(|()| Value::Other),
            b'?' => self.boolean(),
            _ => None,
        }
    }

    /// An integer (at most 15 digits) or a decimal (12 and 3).
    fn number(&mut self) -> Option<Value> {
        let negative = self.eat(b'-');
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let integer_digits = self.at - start;
        if integer_digits == 0 {
            return None;
        }
        if self.eat(b'.') {
            let fraction_start = self.at;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
            let fraction_digits = self.at - fraction_start;
            return (integer_digits <= 12 && (1..=3).contains(&fraction_digits)).then_some(Value::Other);
        }
        if integer_digits > 15 {
            return None;
        }
        let digits = std::str::from_utf8(&self.input[start..self.at]).ok()?;
        let magnitude: i64 = digits.parse().ok()?;
        Some(Value::Integer(if negative { -magnitude } else { magnitude }))
    }

    /// A quoted string of printable ASCII, with `\"` and `\\` escapes.
    fn string(&mut self) -> Option<String> {
        self.eat(b'"');
        let mut text = String::new();
        loop {
            match self.peek()? {
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        byte @ (b'"' | b'\\') => text.push(char::from(byte)),
                        _ => return None,
                    }
                }
                b'"' => {
                    self.at += 1;
                    return Some(text);
                }
                byte @ 0x20..=0x7e => text.push(char::from(byte)),
                _ => return None,
            }
            self.at += 1;
        }
    }

    /// `( ALPHA / "*" ) *( tchar / ":" / "/" )`; the first byte is checked by the caller.
    fn token(&mut self) -> String {
        let start = self.at;
        self.at += 1;
        while self
            .peek()
            .is_some_and(|byte| is_tchar(byte) || byte == b':' || byte == b'/')
        {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.input[start..self.at]).into_owned()
    }

    fn byte_sequence(&mut self) -> Option<()> {
        self.eat(b':');
        loop {
            match self.peek()? {
                b':' => {
                    self.at += 1;
                    return Some(());
                }
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => self.at += 1,
                _ => return None,
            }
        }
    }

    fn boolean(&mut self) -> Option<Value> {
        self.eat(b'?');
        let value = match self.peek()? {
            b'1' => Value::True,
            b'0' => Value::False,
            _ => return None,
        };
        self.at += 1;
        Some(value)
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parsed(text: &str) -> Option<Vec<(String, Value)>> {
        parse_dictionary(text)
    }

    #[test]
    fn cache_directives_parse_as_a_dictionary() {
        assert_eq!(
            parsed("max-age=60, private, no-cache=\"set-cookie\", foo;a=1"),
            Some(vec![
                ("max-age".into(), Value::Integer(60)),
                ("private".into(), Value::True),
                ("no-cache".into(), Value::String("set-cookie".into())),
                ("foo".into(), Value::True),
            ])
        );
        assert_eq!(parsed(""), Some(vec![]));
        assert_eq!(
            parsed("max-age=99999999999"),
            Some(vec![("max-age".into(), Value::Integer(99_999_999_999))])
        );
    }

    #[test]
    fn what_rfc_8941_refuses_makes_the_whole_field_invalid() {
        for bad in [
            "max-age =100",
            "max-age= 100",
            "MaX-aGe=3600",
            "max-age=10000, &&&&&",
            "max-age=1,",
            "max-age=1234567890123456",
            "a=\"unterminated",
            "a=?2",
            "a=:not base64!:",
            "a=1.2345",
        ] {
            assert_eq!(parsed(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn wrong_types_drop_the_directive_and_the_first_valid_target_wins() {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", HeaderValue::from_static("no-store"));
        headers.insert("expires", HeaderValue::from_static("Thu, 01 Jan 2099 00:00:00 GMT"));
        headers.insert("edgecache-cache-control", HeaderValue::from_static("max-age =5"));
        headers.insert(
            "cdn-cache-control",
            HeaderValue::from_static("max-age=\"10\", public, s-maxage=?0"),
        );
        let effective = effective_headers(&headers, &default_targets());
        assert_eq!(effective["cache-control"], "public");
        assert!(!effective.contains_key("expires"));

        headers.insert("edgecache-cache-control", HeaderValue::from_static("max-age=5"));
        assert_eq!(
            effective_headers(&headers, &default_targets())["cache-control"],
            "max-age=5"
        );

        headers.remove("edgecache-cache-control");
        headers.insert("cdn-cache-control", HeaderValue::from_static("&&&"));
        assert!(matches!(
            effective_headers(&headers, &default_targets()),
            Cow::Borrowed(_)
        ));
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z*][a-z0-9_.*-]{0,8}"
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::True),
            Just(Value::False),
            (-999_999_999_999_999i64..=999_999_999_999_999).prop_map(Value::Integer),
            "[ !#-\\[\\]-~]{0,12}".prop_map(Value::String),
            "[A-Za-z*][A-Za-z0-9:/!#$%&'*+.^_`|~-]{0,8}".prop_map(Value::Token),
        ]
    }

    fn serialize(members: &[(String, Value)]) -> String {
        let parts: Vec<String> = members
            .iter()
            .map(|(key, value)| match value {
                Value::True => key.clone(),
                Value::False => format!("{key}=?0"),
                Value::Integer(n) => format!("{key}={n}"),
                Value::String(text) => format!("{key}=\"{text}\""),
                Value::Token(token) => format!("{key}={token}"),
                Value::Other => format!("{key}=(1 2)"),
            })
            .collect();
        parts.join(", ")
    }

    proptest! {
        #[test]
        fn no_text_makes_the_parser_panic(text in ".{0,64}", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_dictionary(&text);
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut headers = HeaderMap::new();
                headers.insert("cdn-cache-control", value);
                let _ = effective_headers(&headers, &default_targets());
            }
        }

        #[test]
        fn serialized_dictionaries_parse_back(members in proptest::collection::vec((key(), value()), 0..6)) {
            let mut expected: Vec<(String, Value)> = Vec::new();
            for (key, value) in &members {
                match expected.iter_mut().find(|(known, _)| known == key) {
                    Some(member) => member.1 = value.clone(),
                    None => expected.push((key.clone(), value.clone())),
                }
            }
            prop_assert_eq!(parse_dictionary(&serialize(&members)), Some(expected));
        }
    }
}
