//! Numbers for people: the one place that decides how a float is shown, in `outpostctl`, the
//! dashboard, reports and model cards — rounded, in its unit, never `0.007500000000000001`,
//! `1.0000e0` or a p-value of `0.0000`.

/// A plain number: at most four significant digits below 1, two decimals above, trailing
/// zeros dropped; tiny values in scientific notation (`6e-44`), never rounded to zero.
pub fn decimal(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "∞".into()
        } else {
            "-∞".into()
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if a < 1e-4 {
        return scientific(x);
    }
    let text = if a < 1.0 {
        // Four significant digits: 0.0075, 0.1235, 0.0001234.
        let decimals = (4 - 1 - a.log10().floor() as i32).clamp(0, 12) as usize;
        format!("{x:.decimals$}")
    } else if a < 1e6 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    };
    trim(&text)
}

/// A statistic that may be astronomically small (a p-value): `6e-44`, `0.0123`, `1`.
pub fn p_value(p: f64) -> String {
    if p.is_finite() && p != 0.0 && p.abs() < 1e-3 { scientific(p) } else { decimal(p) }
}

/// A share (0..=1) as a percentage: `95%`, `99.87%`, `0.01%` — never `100%` for a share below
/// one or `0%` for one above zero.
pub fn percent(share: f64) -> String {
    if !share.is_finite() {
        return decimal(share);
    }
    let p = share * 100.0;
    let exact = |d: i32| {
        let f = 10f64.powi(d);
        ((p * f).round() - p * f).abs() < 1e-6
    };
    let mut decimals = (0..=2).find(|&d| exact(d)).unwrap_or(2) as usize;
    while decimals < 6 {
        let shown: f64 = format!("{p:.decimals$}").parse().unwrap_or(p);
        if (shown == 100.0 && p < 100.0) || (shown == 0.0 && p > 0.0) {
            decimals += 1;
        } else {
            break;
        }
    }
    format!("{}%", trim(&format!("{p:.decimals$}")))
}

/// Milliseconds with their unit: `50 ms`, `0.95 ms`, `1.44 ms`, `12.3 s` above ten seconds.
pub fn ms(value: f64) -> String {
    if value.is_finite() && value.abs() >= 10_000.0 {
        return format!("{} s", decimal(value / 1000.0));
    }
    format!("{} ms", decimal(value))
}

/// `1 device`, `3 devices`: a count with its noun (regular plurals only).
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// `6e-44`, `-1.5e-7`: one or two significant digits.
fn scientific(x: f64) -> String {
    let text = format!("{x:.1e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => format!("{}e{exponent}", trim(mantissa)),
        None => text,
    }
}

/// `1.2500` → `1.25`, `3.00` → `3`.
fn trim(text: &str) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_rounded_for_people() {
        assert_eq!(decimal(0.007500000000000001), "0.0075");
        assert_eq!(decimal(1.0), "1");
        assert_eq!(decimal(1.43681), "1.44");
        assert_eq!(decimal(0.123456), "0.1235");
        assert_eq!(decimal(-0.25), "-0.25");
        assert_eq!(decimal(12_345_678.9), "12345679");
        assert_eq!(decimal(0.0), "0");
        assert_eq!(decimal(f64::NAN), "NaN");
    }

    #[test]
    fn tiny_values_are_never_shown_as_zero() {
        assert_eq!(decimal(6e-44), "6e-44");
        assert_eq!(p_value(6.2e-44), "6.2e-44");
        assert_eq!(p_value(0.0004), "4e-4");
        assert_eq!(p_value(0.0123), "0.0123");
        assert_eq!(p_value(1.0), "1");
        assert_eq!(p_value(0.0), "0");
    }

    #[test]
    fn shares_are_percentages_and_latencies_carry_their_unit() {
        assert_eq!(percent(0.95), "95%");
        assert_eq!(percent(0.999), "99.9%");
        assert_eq!(percent(0.0001), "0.01%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.9987), "99.87%");
        assert_eq!(percent(0.99999), "99.999%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(ms(50.0), "50 ms");
        assert_eq!(ms(0.95), "0.95 ms");
        assert_eq!(ms(1.43681), "1.44 ms");
        assert_eq!(ms(12_300.0), "12.3 s");
        assert_eq!(count(1, "device"), "1 device");
        assert_eq!(count(0, "device"), "0 devices");
    }
}
