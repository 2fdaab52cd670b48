//! Byte counts as people read and write them: rates like `8M`, `512K` or
//! `1G`, sizes like `500M` or `8G`, and both shown like `1.5 MiB` (powers
//! of 1024 both ways).

/// Parses a rate in bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s, "rate", "K, M or G")?;
    if n == 0 {
        return Err(format!("rate {:?} must be positive", s.trim()));
    }
    Ok(n)
}

/// Parses a size in bytes (`500M`, `8G`, `1.5T`, `0`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_bytes(s, "size", "K, M, G or T")
}

fn parse_bytes(s: &str, what: &str, units: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' if what == "size" => 1 << 40,
                'B' => 1,
                _ => return Err(format!("unknown unit in {what} {s:?}; use {units}")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{what} {s:?} is not a number with an optional {units}"))?;
    if n.is_nan() || n < 0.0 || !n.is_finite() {
        return Err(format!("{what} {s:?} must be positive"));
    }
    // Float to integer casts saturate, which is the intent for huge values.
    #[allow(clippy::cast_possible_truncation)]
    let bytes = (n * mult as f64) as u64;
    Ok(bytes)
}

/// Bytes as a short human figure, powers of 1024 like the rate options.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::{human_bytes, parse_rate, parse_size};

    #[test]
    fn units() {
        assert_eq!(parse_rate("8M").unwrap(), 8 << 20);
        assert_eq!(parse_rate("512k").unwrap(), 512 << 10);
        assert_eq!(parse_rate("1.5K").unwrap(), 1536);
        assert_eq!(parse_rate("100").unwrap(), 100);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("8X").is_err());
        assert!(parse_rate("-1").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5t").unwrap(), 3 << 39);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("big").is_err());
        assert!(parse_size("8X").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
