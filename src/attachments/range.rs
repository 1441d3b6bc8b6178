//! The `Range` request header, for one range of bytes (RFC 9110 §14).
//!
//! Invariants: a header this does not understand (another unit, several ranges, bad syntax) is ignored
//! and the whole attachment is served, as the RFC allows; a range starting at or after the end is
//! unsatisfiable (416); an end past the last byte is cut to it.

use std::ops::Range;

/// What a `Range` header asks of an attachment of `length` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

pub fn wanted(header: Option<&str>, length: u64) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Wanted::Whole };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Wanted::Whole };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part(length.saturating_sub(n)..length),
            None => Wanted::Whole,
        },
        (first, last) => {
            let Some(start) = number(first) else { return Wanted::Whole };
            let end = match last {
                "" => length,
                last => match number(last) {
                    Some(end) if end >= start => end.saturating_add(1).min(length),
                    _ => return Wanted::Whole,
                },
            };
            if start >= length { Wanted::Unsatisfiable } else { Wanted::Part(start..end) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_the_rfc_says() {
        assert_eq!(wanted(None, 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Part(0..10));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(Some("bytes=90-500"), 100), Wanted::Part(90..100), "an end past the last byte is cut");
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(Some("bytes=-1000"), 100), Wanted::Part(0..100));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=5-4"), 100), Wanted::Whole, "an invalid range is ignored");
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::Whole, "several ranges: the whole thing");
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=x-1"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=+1-2"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=18446744073709551615-"), 100), Wanted::Unsatisfiable);
    }
}
