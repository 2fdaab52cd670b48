//! Byte rates written like `8M`, `512K` or `1G` (powers of 1024).

/// Parses a rate in bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'B' => 1,
                _ => return Err(format!("unknown unit in rate {s:?}; use K, M or G")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("rate {s:?} is not a number with an optional K, M or G"))?;
    if n.is_nan() || n <= 0.0 || !n.is_finite() {
        return Err(format!("rate {s:?} must be positive"));
    }
    // Float to integer casts saturate, which is the intent for huge rates.
    #[allow(clippy::cast_possible_truncation)]
    let rate = (n * mult as f64) as u64;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn units() {
        assert_eq!(parse_rate("8M").unwrap(), 8 << 20);
        assert_eq!(parse_rate("512k").unwrap(), 512 << 10);
        assert_eq!(parse_rate("1.5K").unwrap(), 1536);
        assert_eq!(parse_rate("100").unwrap(), 100);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("8X").is_err());
    }
}
