//! Durations as people write them (`30s`, `5m`, `4h`, `1h30m`, `500ms`): `[cluster] rto` and
//! `atoll advise --rto`, and the way figures are shown back.

/// Units accepted after a number, longest first so `ms` is not read as `m` then `s`.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `30s`, `5m`, `4h`, `2d`, `500ms` or a sum of them (`1h30m`) into milliseconds. A number
/// without a unit is refused: `30` could mean seconds or minutes.
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let s = text.trim();
    const EXPECTED: &str =
        "write a number and a unit: ms, s, m, h or d (e.g. \"30s\", \"5m\", \"4h\", \"1h30m\")";
    if s.is_empty() {
        return Err(format!("the duration is empty: {EXPECTED}"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{text}` is not a duration: {EXPECTED}"));
        }
        let (number, after) = rest.split_at(digits);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{text}`: {number} is too large"))?;
        let Some((unit, len)) = UNITS.iter().find(|(u, _)| after.starts_with(u)) else {
            return Err(if after.is_empty() {
                format!("`{text}` has no unit: {EXPECTED}")
            } else {
                format!("`{text}` has an unknown unit: {EXPECTED}")
            });
        };
        total = n
            .checked_mul(*len)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        rest = &after[unit.len()..];
    }
    Ok(total)
}

/// The shortest exact form in the syntax [`parse_ms`] reads: `4h`, `90s`, `1500ms`.
pub fn to_config(ms: u64) -> String {
    for (unit, len) in UNITS.iter().rev() {
        if ms >= *len && ms.is_multiple_of(*len) {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// For people: `800 ms`, `7.8 s`, `5 min`, `4 h`.
pub fn human(ms: u64) -> String {
    let trim = |v: f64| {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    };
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{} s", trim(ms as f64 / 1_000.0))
    } else if ms < 7_200_000 {
        format!("{} min", trim(ms as f64 / 60_000.0))
    } else {
        format!("{} h", trim(ms as f64 / 3_600_000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_write() {
        assert_eq!(parse_ms("30s"), Ok(30_000));
        assert_eq!(parse_ms("5m"), Ok(300_000));
        assert_eq!(parse_ms("4h"), Ok(14_400_000));
        assert_eq!(parse_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_ms("500ms"), Ok(500));
        assert_eq!(parse_ms(" 2d "), Ok(172_800_000));
        for bad in [
            "",
            "30",
            "s",
            "5 m",
            "5min",
            "-5s",
            "1.5h",
            "99999999999999999999s",
        ] {
            assert!(parse_ms(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_ms("30").unwrap_err().contains("no unit"));
    }

    #[test]
    fn round_trips_and_reads_well() {
        for ms in [500, 1_000, 30_000, 90_000, 300_000, 14_400_000, 1_500] {
            assert_eq!(parse_ms(&to_config(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(to_config(300_000), "5m");
        assert_eq!(human(800), "800 ms");
        assert_eq!(human(7_760), "7.8 s");
        assert_eq!(human(60_000), "60 s");
        assert_eq!(human(600_000), "10 min");
        assert_eq!(human(14_400_000), "4 h");
    }
}
