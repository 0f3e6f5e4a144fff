//! Human units: durations (`500ms`, `30s`, `10m`, `1h`, `1m30s`) and bandwidths (`10MB/s`,
//! `512KiB/s`, `100Mbit/s`, or plain bytes per second).

use crate::error::{LinkError, Result};

/// Parses a duration into milliseconds: one or more `<integer><unit>` parts with unit `ms`, `s`,
/// `m` or `h`, e.g. `500ms`, `30s`, `10m`, `1h`, `1h30m`. A bare number, an empty string, an
/// unknown unit or an overflow is an error naming `field`.
pub fn parse_duration_ms(text: &str, field: &str) -> Result<u64> {
    let bad = |why: &str| {
        LinkError::invalid(
            field,
            format!("`{text}` is not a duration ({why}); write e.g. 500ms, 30s, 10m, 1h or 1m30s"),
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad("expected a number"));
        }
        let n: u64 = s[start..i].parse().map_err(|_| bad("number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        let part = n.checked_mul(factor).ok_or_else(|| bad("too large"))?;
        total = total.checked_add(part).ok_or_else(|| bad("too large"))?;
    }
    Ok(total)
}

/// Formats milliseconds compactly (`1h30m`, `10m`, `30s`); a value that is not a whole number of
/// seconds is written in `ms` (`1500ms`). [`parse_duration_ms`] reads every output back.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0ms".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    let h = s / 3600;
    s %= 3600;
    let m = s / 60;
    s %= 60;
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parses a bandwidth into bytes per second: `<number><unit>` with an optional `/s`, where the
/// unit is `B`, `KB`, `MB`, `GB` (powers of 1000), `KiB`, `MiB`, `GiB` (powers of 1024), or
/// `kbit`, `Mbit`, `Gbit` (bits, powers of 1000). A bare integer is bytes per second. The number
/// may have a fraction (`1.5MB/s`). Zero, negative or non-numeric values are errors naming
/// `field`.
pub fn parse_bandwidth(text: &str, field: &str) -> Result<u64> {
    let bad = |why: &str| {
        LinkError::invalid(
            field,
            format!(
                "`{text}` is not a bandwidth ({why}); write e.g. 10MB/s, 512KiB/s, 100Mbit/s or bytes per second"
            ),
        )
    };
    let s = text.trim();
    let s = s.strip_suffix("/s").unwrap_or(s).trim_end();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(bad("expected a number"));
    }
    let n: f64 = num.parse().map_err(|_| bad("bad number"))?;
    let factor: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        _ => return Err(bad("unknown unit")),
    };
    let bytes = (n * factor).round();
    if !bytes.is_finite() || bytes > 1e15 {
        return Err(bad("too large"));
    }
    if bytes < 1.0 {
        return Err(bad("must be at least 1 byte per second"));
    }
    Ok(bytes as u64)
}

/// Formats bytes per second with the largest decimal unit that keeps it readable (`10MB/s`,
/// `1.5MB/s`, `300B/s`).
pub fn format_bandwidth(bytes_per_sec: u64) -> String {
    let b = bytes_per_sec as f64;
    let (v, unit) = if b >= 1e9 {
        (b / 1e9, "GB/s")
    } else if b >= 1e6 {
        (b / 1e6, "MB/s")
    } else if b >= 1e3 {
        (b / 1e3, "KB/s")
    } else {
        (b, "B/s")
    };
    let rounded = (v * 1000.0).round() / 1000.0;
    format!("{rounded}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1m30s", 90_000),
            ("0s", 0),
            (" 5s ", 5_000),
        ] {
            assert_eq!(parse_duration_ms(text, "for").unwrap(), ms, "{text}");
        }
        for bad in [
            "",
            "10",
            "ms",
            "10x",
            "-5s",
            "1.5s",
            "10 m",
            "s10",
            "99999999999999999999h",
        ] {
            let e = parse_duration_ms(bad, "for").unwrap_err();
            assert_eq!(e.code(), "ATOLL-LINK-INVALID", "{bad}");
            assert!(e.to_string().contains("for"), "{e}");
        }
    }

    #[test]
    fn durations_format_round_trip() {
        for ms in [
            0, 1, 500, 1_000, 30_000, 90_000, 600_000, 3_600_000, 5_430_000, 1_234,
        ] {
            assert_eq!(
                parse_duration_ms(&format_duration_ms(ms), "x").unwrap(),
                ms,
                "{}",
                format_duration_ms(ms)
            );
        }
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(1_500), "1500ms");
    }

    #[test]
    fn bandwidths() {
        for (text, b) in [
            ("10MB/s", 10_000_000),
            ("1MB/s", 1_000_000),
            ("512KB/s", 512_000),
            ("1MiB/s", 1_048_576),
            ("100Mbit/s", 12_500_000),
            ("1.5MB/s", 1_500_000),
            ("2048", 2048),
            ("300B/s", 300),
            ("1 GB/s", 1_000_000_000),
        ] {
            assert_eq!(parse_bandwidth(text, "bandwidth").unwrap(), b, "{text}");
        }
        for bad in ["", "0", "0MB/s", "-1MB/s", "MB/s", "10XB/s", "1e3", "0.1"] {
            let e = parse_bandwidth(bad, "bandwidth").unwrap_err();
            assert!(e.to_string().contains("bandwidth"), "{bad}: {e}");
        }
        assert_eq!(format_bandwidth(10_000_000), "10MB/s");
        assert_eq!(format_bandwidth(1_500_000), "1.5MB/s");
        assert_eq!(format_bandwidth(300), "300B/s");
    }
}
