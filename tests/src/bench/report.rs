//! The figures and their rendering: percentiles of samples, ratios, and the report as markdown
//! and JSON. Pure: the measurements hand their numbers in, nothing here touches the system.

use serde_json::{json, Map, Value};

/// p50, p99 and max of a set of samples (nearest-rank percentiles), in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples: a figure that could not be measured is reported as missing.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            n: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
        })
    }

    fn json(&self) -> Value {
        json!({"n": self.n, "p50": self.p50, "p99": self.p99, "max": self.max})
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of samples (nearest rank), `None` when there are none.
pub fn median(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.p50)
}

/// `a / b`, `None` when `b` is zero or either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// One figure of the report.
#[derive(Clone, Debug, PartialEq)]
pub enum Figure {
    /// A distribution, with its unit ("ms", "ns").
    Dist(Option<Summary>, &'static str),
    /// A single number with its unit.
    Value(Option<f64>, &'static str),
    /// Every sample, with its unit: too many for a table cell, so the markdown gives their range
    /// and the JSON keeps them all.
    Samples(Vec<f64>, &'static str),
    /// A count of events.
    Count(u64),
    /// Free text (a mode, a condition).
    Text(String),
}

/// A named figure, with the goal it is held to (if any) and whether it met it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub figure: Figure,
    pub goal: Option<Goal>,
}

/// A goal and its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub text: String,
    pub met: bool,
}

impl Row {
    pub fn new(name: impl Into<String>, figure: Figure) -> Row {
        Row {
            name: name.into(),
            figure,
            goal: None,
        }
    }

    /// Holds the row to `text`; `met` is `None` when the figure is missing (counted as not met).
    pub fn goal(mut self, text: &str, met: Option<bool>) -> Row {
        self.goal = Some(Goal {
            text: text.to_owned(),
            met: met.unwrap_or(false),
        });
        self
    }
}

/// One measurement's rows, and how it was measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub title: &'static str,
    pub method: String,
    pub rows: Vec<Row>,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Conditions of the run: kernel, load, duration, command.
    pub context: Vec<(String, String)>,
    pub sections: Vec<Section>,
}

fn number(x: f64) -> String {
    if x == 0.0 || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

impl Figure {
    fn markdown(&self) -> String {
        match self {
            Figure::Dist(Some(s), unit) => format!(
                "p50 {} {unit}, p99 {} {unit}, max {} {unit} (n={})",
                number(s.p50),
                number(s.p99),
                number(s.max),
                s.n
            ),
            Figure::Value(Some(v), "") => number(*v),
            Figure::Value(Some(v), unit) => format!("{} {unit}", number(*v)),
            Figure::Samples(v, unit) if !v.is_empty() => {
                let (min, max) = v
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                        (lo.min(*x), hi.max(*x))
                    });
                format!(
                    "min {} {unit}, max {} {unit} (n={}, each in report.json)",
                    number(min),
                    number(max),
                    v.len()
                )
            }
            Figure::Dist(None, _) | Figure::Value(None, _) | Figure::Samples(..) => {
                "not measured".to_owned()
            }
            Figure::Count(n) => n.to_string(),
            Figure::Text(t) => t.clone(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Figure::Dist(Some(s), unit) => {
                let mut v = s.json();
                v["unit"] = json!(unit);
                v
            }
            Figure::Value(Some(v), unit) => json!({"value": v, "unit": unit}),
            Figure::Samples(v, unit) => json!({"samples": v, "unit": unit}),
            Figure::Dist(None, _) | Figure::Value(None, _) => Value::Null,
            Figure::Count(n) => json!(n),
            Figure::Text(t) => json!(t),
        }
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::from("# multihome benchmark report\n\n");
        for (key, value) in &self.context {
            out.push_str(&format!("- {key}: {value}\n"));
        }
        for section in &self.sections {
            out.push_str(&format!("\n## {}\n\n{}\n\n", section.title, section.method));
            out.push_str("| figure | value | goal |\n|---|---|---|\n");
            for row in &section.rows {
                let goal = match &row.goal {
                    Some(g) => format!("{} {}", if g.met { "met:" } else { "NOT met:" }, g.text),
                    None => String::new(),
                };
                out.push_str(&format!(
                    "| {} | {} | {} |\n",
                    row.name,
                    row.figure.markdown(),
                    goal
                ));
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let context: Map<String, Value> = self
            .context
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|s| {
                let rows: Vec<Value> = s
                    .rows
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.name,
                            "figure": r.figure.json(),
                            "goal": r.goal.as_ref().map(|g| json!({"text": g.text, "met": g.met})),
                        })
                    })
                    .collect();
                json!({"title": s.title, "method": s.method, "rows": rows})
            })
            .collect();
        json!({"context": context, "sections": sections})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (1000, 500.0, 990.0, 1000.0));
        assert_eq!(Summary::of(&[7.0]).unwrap().p99, 7.0);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
    }

    #[test]
    fn ratios_need_both_sides_and_a_divisor() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    fn sample() -> Report {
        Report {
            context: vec![("load".into(), "0.5".into())],
            sections: vec![Section {
                title: "Convergence",
                method: "how".into(),
                rows: vec![
                    Row::new(
                        "multihome",
                        Figure::Dist(Summary::of(&[0.25, 0.5, 2.0]), "ms"),
                    )
                    .goal("p99 < 1 ms", Some(false)),
                    Row::new("wrong end states", Figure::Count(3)),
                    Row::new("ratio", Figure::Value(Some(12.345), "")),
                    Row::new("missing", Figure::Value(None, "ns")).goal("x", None),
                    Row::new(
                        "segments",
                        Figure::Samples(vec![12.5, 9.25, 15.0], "Gbit/s"),
                    ),
                    Row::new("no segments", Figure::Samples(vec![], "Gbit/s")),
                ],
            }],
        }
    }

    #[test]
    fn markdown_has_a_table_per_section() {
        let md = sample().markdown();
        assert!(md.contains("- load: 0.5\n"), "{md}");
        assert!(md.contains("## Convergence\n\nhow\n"), "{md}");
        assert!(
            md.contains(
                "| multihome | p50 0.50 ms, p99 2.00 ms, max 2.00 ms (n=3) | NOT met: p99 < 1 ms |"
            ),
            "{md}"
        );
        assert!(md.contains("| wrong end states | 3 |  |"), "{md}");
        assert!(md.contains("| ratio | 12.3 |  |"), "{md}");
        assert!(
            md.contains("| missing | not measured | NOT met: x |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| segments | min 9.25 Gbit/s, max 15.0 Gbit/s (n=3, each in report.json) |  |"
            ),
            "{md}"
        );
        assert!(md.contains("| no segments | not measured |  |"), "{md}");
    }

    #[test]
    fn json_keeps_the_numbers() {
        let v = sample().json();
        assert_eq!(v["context"]["load"], "0.5");
        let rows = &v["sections"][0]["rows"];
        assert_eq!(rows[0]["figure"]["p50"], 0.5);
        assert_eq!(rows[0]["figure"]["unit"], "ms");
        assert_eq!(rows[0]["goal"]["met"], false);
        assert_eq!(rows[1]["figure"], 3);
        assert_eq!(rows[3]["figure"], Value::Null);
        assert_eq!(rows[1]["goal"], Value::Null);
        assert_eq!(rows[4]["figure"]["samples"], json!([12.5, 9.25, 15.0]));
        assert_eq!(rows[4]["figure"]["unit"], "Gbit/s");
    }
}
