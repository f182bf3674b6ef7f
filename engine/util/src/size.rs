//! Byte sizes as Docker's and runc's command lines take them (`64m`, `1g`, `512k`, `1024`):
//! binary multiples (`k` is 1024), an optional `b`, case-insensitive; and sizes as Docker prints
//! them (powers of 1000, three significant figures).

/// A size that is not a number of bytes with an optional `b`, `k`, `m`, `g` or `t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSize(pub String);

impl std::fmt::Display for InvalidSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid size: {:?}: want bytes or a number with b, k, m, g or t", self.0)
    }
}

impl std::error::Error for InvalidSize {}

/// Parses `s` into bytes. Fractions are allowed (`1.5g`); negative sizes are refused.
pub fn parse_bytes(s: &str) -> Result<i64, InvalidSize> {
    let bad = || InvalidSize(s.to_string());
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 || n * mult as f64 > i64::MAX as f64 {
        return Err(bad());
    }
    Ok((n * mult as f64) as i64)
}

/// [`parse_bytes`], with `-1` meaning "no limit" (returned as -1), as `--memory-swap` and
/// runc's `update` take it.
pub fn parse_limit(s: &str) -> Result<i64, InvalidSize> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    parse_bytes(s)
}

/// Docker's human sizes: `1.98MB`, `512B`, `2.5MB` (powers of 1000, three significant
/// figures, as `docker images` prints them).
pub fn human(bytes: u64) -> String {
    human_with_precision(bytes, 3)
}

/// [`human`] with `digits` significant figures, trailing zeros dropped (Go's `%.*g`, as Docker's
/// `units.HumanSizeWithPrecision`; the pull progress uses 4: `1.982MB`).
pub fn human_with_precision(bytes: u64, digits: usize) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    let whole = if v < 1.0 { 1 } else { (v.log10().floor() as usize) + 1 };
    let s = format!("{v:.*}", digits.saturating_sub(whole));
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    format!("{s}{}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("2t"), Ok(2 << 40));
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("12x").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("nan").is_err());
        assert_eq!(parse_limit("-1"), Ok(-1));
        assert_eq!(parse_limit("1k"), Ok(1024));
        assert!(parse_limit("-2").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(1_982_286), "1.98MB");
        assert_eq!(human(512), "512B");
        assert_eq!(human(1_000), "1kB");
        assert_eq!(human(123_456_789), "123MB");
        assert_eq!(human(2_500_000), "2.5MB");
        assert_eq!(human(0), "0B");
        assert_eq!(human_with_precision(1_982_286, 4), "1.982MB");
        assert_eq!(human_with_precision(2_500_000, 4), "2.5MB");
    }
}
