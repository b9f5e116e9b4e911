//! The table of figures, one row per policy: what the example prints and the test shows when
//! an assertion fails.

use crate::Figures;

/// The header, then one row per policy, each line ending in a newline.
pub fn table(figures: &[Figures]) -> String {
    let mut out = table_header();
    out.push('\n');
    for f in figures {
        out.push_str(&table_row(f));
        out.push('\n');
    }
    out
}

/// The table's header.
pub fn table_header() -> String {
    format!(
        "{:<15} {:>6} {:>6} {:>7} {:>8} {:>6} {:>8} {:>9} {:>7} {:>7} {:>9}",
        "policy",
        "calls",
        "amp",
        "429s",
        "success",
        "fallbk",
        "goodput",
        "wasted $",
        "p50 s",
        "p99 s",
        "recovery"
    )
}

/// One row of the table.
pub fn table_row(f: &Figures) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    format!(
        "{:<15} {:>6} {:>6.2} {:>7} {:>8} {:>6} {:>8} {:>9.2} {:>7.1} {:>7.1} {:>9}",
        f.policy.name(),
        f.calls,
        f.amplification,
        f.rate_limited,
        pct(f.success),
        pct(f.fallback),
        f.goodput.map(pct).unwrap_or_else(|| "-".into()),
        f.wasted_usd,
        f.p50,
        f.p99,
        match f.recovery {
            Some(s) => format!("{s:.0} s"),
            None => "never".into(),
        }
    )
}
