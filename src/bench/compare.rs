//! Two saved runs side by side (`ipclab report AFTER.json --against
//! BEFORE.json`): the p50 of each transport, size and placement measured
//! in both, before → after.

use super::{Placement, Report};

/// One transport × size × placement measured (successfully) in both runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub transport: String,
    pub size_bytes: usize,
    pub placement: Placement,
    pub before_p50_ns: u64,
    pub after_p50_ns: u64,
}

impl Change {
    /// After ÷ before: below 1 is faster.
    pub fn ratio(&self) -> f64 {
        self.after_p50_ns as f64 / self.before_p50_ns.max(1) as f64
    }

    /// "12% faster", "3% slower", or "same (within 5%)".
    pub fn verdict(&self) -> String {
        let ratio = self.ratio();
        if ratio < 0.95 {
            format!("{:.0}% faster", (1.0 - ratio) * 100.0)
        } else if ratio > 1.05 {
            format!("{:.0}% slower", (ratio - 1.0) * 100.0)
        } else {
            "same (within 5%)".to_string()
        }
    }
}

impl Report {
    /// The cells of this run that `before` measured too, in this run's order;
    /// a cell that failed (or made no round trip) in either run is left out.
    pub fn changes_since(&self, before: &Report) -> Vec<Change> {
        let ok = |c: &&super::Cell| c.error.is_none() && c.round_trips > 0;
        self.results
            .iter()
            .filter(ok)
            .filter_map(|c| {
                let old = before.results.iter().filter(ok).find(|o| {
                    o.transport == c.transport
                        && o.size_bytes == c.size_bytes
                        && o.placement == c.placement
                })?;
                Some(Change {
                    transport: c.transport.clone(),
                    size_bytes: c.size_bytes,
                    placement: c.placement,
                    before_p50_ns: old.p50_ns,
                    after_p50_ns: c.p50_ns,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cell, Environment};
    use super::*;

    fn run(cells: &[(&str, usize, u64, bool)]) -> Report {
        Report {
            environment: Environment {
                ipclab_version: "0".into(),
                cpu_model: "cpu".into(),
                cores: 2,
                kernel: "k".into(),
                date_utc: "d".into(),
                command: "c".into(),
                placements: vec![Placement::SameCore],
                sizes_bytes: vec![64],
                iterations: 1,
                time_limit_s: 1.0,
                warmup: 0,
                remote_server: None,
            },
            floors: Vec::new(),
            results: cells
                .iter()
                .map(|&(t, size, p50, failed)| {
                    let mut c = Cell::empty(t, Placement::SameCore, size);
                    c.round_trips = 10;
                    c.p50_ns = p50;
                    if failed {
                        c.error = Some("broke".into());
                    }
                    c
                })
                .collect(),
        }
    }

    #[test]
    fn pairs_cells_measured_in_both_runs() {
        let before = run(&[("unix", 64, 1000, false), ("tcp", 64, 1000, true)]);
        let after = run(&[
            ("tcp", 64, 500, false),
            ("unix", 64, 800, false),
            ("unix", 4096, 900, false),
        ]);
        let changes = after.changes_since(&before);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].transport, "unix");
        assert_eq!(
            (changes[0].before_p50_ns, changes[0].after_p50_ns),
            (1000, 800)
        );
        assert_eq!(changes[0].verdict(), "20% faster");
    }

    #[test]
    fn verdicts() {
        let c = |b, a| Change {
            transport: "x".into(),
            size_bytes: 64,
            placement: Placement::None,
            before_p50_ns: b,
            after_p50_ns: a,
        };
        assert_eq!(c(1000, 1300).verdict(), "30% slower");
        assert_eq!(c(1000, 1040).verdict(), "same (within 5%)");
        assert_eq!(c(0, 0).ratio(), 0.0);
    }
}
