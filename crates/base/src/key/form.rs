//! `application/x-www-form-urlencoded` names and values, decoded to bytes
//! and encoded back in one canonical form.

use std::borrow::Cow;

/// Bytes the form encoding keeps as they are: ASCII letters, digits, `*-._`.
pub const KEPT_AS_IS: [bool; 256] = {
    let mut kept = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        kept[byte] = b.is_ascii_alphanumeric() || b == b'*' || b == b'-' || b == b'.' || b == b'_';
        byte += 1;
    }
    kept
};

/// `application/x-www-form-urlencoded` decoding to bytes: `+` is a space,
/// `%XX` a byte. Invalid UTF-8 stays as it is, so distinct inputs stay
/// distinct.
pub fn decode_form(raw: &[u8]) -> Vec<u8> {
    let plus_as_space: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(raw.iter().map(|&byte| if byte == b'+' { b' ' } else { byte }).collect())
    } else {
        Cow::Borrowed(raw)
    };
    percent_encoding::percent_decode(&plus_as_space).collect()
}

/// One decoded `application/x-www-form-urlencoded` name or value.
pub struct FormPart<'a> {
    pub bytes: Cow<'a, [u8]>,
    /// The raw text when it holds only bytes the form encoding keeps as they
    /// are, so it is its own canonical encoding (the common case).
    plain: Option<&'a str>,
}

impl<'a> FormPart<'a> {
    pub fn decode(raw: &'a str) -> Self {
        if raw.bytes().all(|byte| KEPT_AS_IS[usize::from(byte)]) {
            return FormPart {
                bytes: Cow::Borrowed(raw.as_bytes()),
                plain: Some(raw),
            };
        }
        let bytes = if raw.bytes().any(|byte| byte == b'%' || byte == b'+') {
            Cow::Owned(decode_form(raw.as_bytes()))
        } else {
            Cow::Borrowed(raw.as_bytes())
        };
        FormPart { bytes, plain: None }
    }

    pub fn encode_into(&self, out: &mut String) {
        if let Some(text) = self.plain {
            out.push_str(text);
        } else {
            out.extend(url::form_urlencoded::byte_serialize(&self.bytes));
        }
    }
}
