//! Side-by-side tables: after criterion has measured a group, its mean estimates are read back
//! from criterion's output directory and printed with their ratios, so every ratio compares
//! figures of one run on one machine.

use std::path::PathBuf;

/// Criterion's output directory: `CRITERION_HOME`, else `<target dir>/criterion`.
pub fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("criterion");
    }
    // The bench runs as target/<profile>/deps/<bench>-<hash>.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The mean time per iteration, in nanoseconds, of benchmark `group/function/parameter` in the
/// run that just finished; `None` when it was not measured (smoke mode, or skipped).
pub fn mean_ns(group: &str, function: &str, parameter: &str) -> Option<f64> {
    if !crate::measuring() {
        return None; // criterion's files hold an earlier run's figures
    }
    let path = criterion_home()
        .join(group)
        .join(function)
        .join(parameter)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

/// A duration in nanoseconds, in the unit that suits it.
pub fn human_time(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A rate per second, abbreviated.
pub fn human_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k", per_second / 1e3)
    } else {
        format!("{per_second:.0}")
    }
}

/// A Markdown table printed to stdout (the figures that `docs/BENCHMARKS.md` quotes).
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with `header` columns.
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints it (nothing when it has no rows: nothing was measured).
    pub fn print(&self) {
        if self.rows.is_empty() {
            return;
        }
        println!("\n{}\n", self.title);
        println!("| {} |", self.header.join(" | "));
        println!("|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        println!();
    }
}
