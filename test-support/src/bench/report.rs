//! Printing: load tables and the final summary of figures against their targets.

use super::load::LoadReport;
use super::ms;

/// A target a figure is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
    /// Printed for information only.
    None,
}

impl Target {
    pub fn met(&self, value: f64) -> Option<bool> {
        match *self {
            Target::AtMost(t) => Some(value <= t),
            Target::AtLeast(t) => Some(value >= t),
            Target::Below(t) => Some(value < t),
            Target::None => None,
        }
    }

    fn describe(&self, unit: &str) -> String {
        match *self {
            Target::AtMost(t) => format!("≤ {} {unit}", num(t)),
            Target::AtLeast(t) => format!("≥ {} {unit}", num(t)),
            Target::Below(t) => format!("< {} {unit}", num(t)),
            Target::None => "-".into(),
        }
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// One line of the summary.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub target: Target,
}

/// The figures of a whole bench invocation, printed at the end.
#[derive(Default, Debug)]
pub struct Summary {
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Summary {
    pub fn add(&mut self, name: impl Into<String>, value: f64, unit: &str, target: Target) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            target,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn misses(&self) -> usize {
        self.figures
            .iter()
            .filter(|f| f.target.met(f.value) == Some(false))
            .count()
    }

    pub fn render(&self) -> String {
        let name_w = self
            .figures
            .iter()
            .map(|f| f.name.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = String::new();
        out.push_str(&format!(
            "{:<name_w$}  {:>14}  {:>16}  result\n",
            "figure", "value", "target"
        ));
        for f in &self.figures {
            let verdict = match f.target.met(f.value) {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "info",
            };
            out.push_str(&format!(
                "{:<name_w$}  {:>14}  {:>16}  {verdict}\n",
                f.name,
                format!("{} {}", num(f.value), f.unit).trim_end(),
                f.target.describe(&f.unit).trim_end(),
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

/// A table of load runs: one row per run.
pub fn load_table(title: &str, rows: &[LoadReport]) -> String {
    let mut out = format!("{title}\n");
    out.push_str(&format!(
        "  {:>5}  {:>9}  {:>10}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  errors\n",
        "conc", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "server CPU", "client CPU"
    ));
    let pct = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{:.0}%", c * 100.0));
    for r in rows {
        out.push_str(&format!(
            "  {:>5}  {:>9}  {:>10.0}  {:>9.2}  {:>9.2}  {:>9.2}  {:>10}  {:>10}  {}{}\n",
            r.concurrency,
            r.requests,
            r.rps(),
            ms(r.p50()),
            ms(r.p99()),
            ms(r.max()),
            pct(r.server_cpu),
            pct(r.client_cpu),
            r.error_breakdown(),
            if r.budget_exhausted {
                "  (request budget reached: run ended early)"
            } else {
                ""
            },
        ));
    }
    for r in rows {
        if let Some(e) = &r.first_error {
            out.push_str(&format!("  c={} first non-2xx: {e}\n", r.concurrency));
        }
    }
    out.push_str("  (CPU in % of one core during the measured window)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(Target::AtMost(300.0).met(300.0), Some(true));
        assert_eq!(Target::Below(20.0).met(20.0), Some(false));
        assert_eq!(Target::AtLeast(5000.0).met(4999.0), Some(false));
        assert_eq!(Target::None.met(1.0), None);
        let mut s = Summary::default();
        s.add("boot median", 12.5, "ms", Target::AtMost(300.0));
        s.add("rps", 4000.0, "req/s", Target::AtLeast(5000.0));
        s.add("info", 1.0, "MB", Target::None);
        assert_eq!(s.misses(), 1);
        let text = s.render();
        assert!(text.contains("12.50 ms") && text.contains("≤ 300 ms") && text.contains("PASS"));
        assert!(text.contains("≥ 5000 req/s") && text.contains("MISS"));
    }
}
