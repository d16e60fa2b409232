//! Parsing of the limit directives' values, so that `apachectl configtest`
//! rejects a bad value with the directive's name.

use crate::error::{Code, Error, Result};

/// Parses a byte size: digits with an optional `K`, `M` or `G` suffix
/// (powers of 1024, case-insensitive, an optional trailing `B`).
///
/// # Errors
/// [`Code::InvalidArgument`] for anything else, for 0, and for sizes that do
/// not fit in 64 bits.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || {
        Error::new(
            Code::InvalidArgument,
            format!("'{text}' is not a size (use a number with an optional K, M or G suffix)"),
        )
    };
    let t = text.trim();
    let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let value = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if value == 0 {
        return Err(Error::new(
            Code::InvalidArgument,
            format!("'{text}': the size must be above 0"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("12K").unwrap(), 12 << 10);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1MB").unwrap(), 1 << 20);
        for bad in [
            "",
            "12Q",
            "abc",
            "-1",
            "1.5M",
            "M",
            "0",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
