//! The `Range` request header, for one byte range (RFC 9110 §14.1.2).
//! Several ranges get the whole body, as RFC 9110 allows.

use std::ops::Range;

/// What a `Range` header asks of a body of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// The whole body (no header, several ranges, or a header we ignore).
    Whole,
    /// These bytes (never empty, within the body).
    Part(Range<u64>),
    /// No byte of the range is in the body: 416.
    Unsatisfiable,
}

/// Reads `header` against a body of `size` bytes. Malformed headers are
/// ignored, as RFC 9110 says.
pub(crate) fn parse(header: &str, size: u64) -> Ranged {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part(size.saturating_sub(suffix)..size)
            }
        }
        (false, Some(start), end) => {
            if !last.trim().is_empty() && end.is_none() {
                return Ranged::Whole;
            }
            if end.is_some_and(|end| end < start) {
                return Ranged::Whole;
            }
            if start >= size {
                return Ranged::Unsatisfiable;
            }
            let end = end.map_or(size, |end| end.saturating_add(1).min(size));
            Ranged::Part(start..end)
        }
        _ => Ranged::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn byte_ranges_read_as_rfc_9110_says() {
        assert_eq!(parse("bytes=0-9", 100), Ranged::Part(0..10));
        assert_eq!(parse("bytes=90-", 100), Ranged::Part(90..100));
        assert_eq!(parse("bytes=-10", 100), Ranged::Part(90..100));
        assert_eq!(parse("bytes=-1000", 100), Ranged::Part(0..100));
        assert_eq!(parse("bytes=50-1000", 100), Ranged::Part(50..100));
        assert_eq!(parse("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(parse("bytes=9-0", 100), Ranged::Whole);
        assert_eq!(parse("bytes=0-1,5-6", 100), Ranged::Whole);
        assert_eq!(parse("items=0-1", 100), Ranged::Whole);
        assert_eq!(parse("bytes=a-b", 100), Ranged::Whole);
        assert_eq!(parse("bytes=99999999999999999999999-", 100), Ranged::Whole);
    }

    proptest! {
        #[test]
        fn any_header_gives_a_range_inside_the_body(header in ".{0,40}", size in 0u64..1_000_000) {
            if let Ranged::Part(range) = parse(&header, size) {
                prop_assert!(range.start < range.end && range.end <= size);
            }
        }

        #[test]
        fn well_formed_ranges_are_honoured(start in 0u64..2_000, length in 1u64..2_000, size in 1u64..3_000) {
            let end = start + length - 1;
            let expected = if start >= size { Ranged::Unsatisfiable } else { Ranged::Part(start..(end + 1).min(size)) };
            prop_assert_eq!(parse(&format!("bytes={start}-{end}"), size), expected);
        }
    }
}
