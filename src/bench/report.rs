//! Benchmark results: one serde structure, the single source of truth for
//! the terminal tables, the summary, and every export (JSON, CSV, Markdown).
//! Machine formats use fixed units: nanoseconds, bytes, seconds.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::Usage;
use crate::units::{fmt_duration, fmt_size};

/// Where client and server run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    SameCore,
    CrossCore,
    None,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::SameCore => "same-core",
            Placement::CrossCore => "cross-core",
            Placement::None => "unpinned",
        })
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub environment: Environment,
    pub floors: Vec<Floor>,
    pub results: Vec<Cell>,
}

/// What the figures were measured on, and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub ipclab_version: String,
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub date_utc: String,
    pub command: String,
    pub placements: Vec<Placement>,
    pub sizes_bytes: Vec<usize>,
    pub iterations: u64,
    pub time_limit_s: f64,
    pub warmup: u64,
    /// `bench --connect`: the server measured was already running there
    /// (another machine, perhaps); its CPU time is not known.
    #[serde(default)]
    pub remote_server: Option<String>,
}

/// A reference figure measured in the same run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    pub name: String,
    pub placement: Placement,
    pub ns: f64,
}

/// One transport × payload size × placement.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub transport: String,
    /// A raw-syscall reference row (`raw-pipe` …), not an ipclab transport.
    pub baseline: bool,
    pub placement: Placement,
    pub size_bytes: usize,
    pub round_trips: u64,
    pub elapsed_s: f64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    pub stddev_ns: f64,
    /// The connection's first round trip at this size, before warm-up.
    pub first_rtt_ns: u64,
    pub rtt_per_s: f64,
    /// Payload bytes per second, both directions: 2 × size × round trips/s.
    pub mib_per_s: f64,
    pub client_user_s: f64,
    pub client_system_s: f64,
    pub server_user_s: f64,
    pub server_system_s: f64,
    /// Client + server CPU time per round trip.
    pub cpu_per_rtt_ns: f64,
    pub client_voluntary_switches: u64,
    pub client_involuntary_switches: u64,
    pub server_voluntary_switches: u64,
    pub server_involuntary_switches: u64,
    pub error: Option<String>,
}

impl Cell {
    pub fn empty(transport: &str, placement: Placement, size: usize) -> Cell {
        Cell {
            transport: transport.into(),
            baseline: false,
            placement,
            size_bytes: size,
            round_trips: 0,
            elapsed_s: 0.0,
            min_ns: 0,
            p50_ns: 0,
            p90_ns: 0,
            p99_ns: 0,
            p999_ns: 0,
            max_ns: 0,
            mean_ns: 0.0,
            stddev_ns: 0.0,
            first_rtt_ns: 0,
            rtt_per_s: 0.0,
            mib_per_s: 0.0,
            client_user_s: 0.0,
            client_system_s: 0.0,
            server_user_s: 0.0,
            server_system_s: 0.0,
            cpu_per_rtt_ns: 0.0,
            client_voluntary_switches: 0,
            client_involuntary_switches: 0,
            server_voluntary_switches: 0,
            server_involuntary_switches: 0,
            error: None,
        }
    }

    pub(super) fn fill(
        &mut self,
        h: &Histogram<u64>,
        n: u64,
        elapsed: Duration,
        client: Usage,
        server: Usage,
    ) {
        self.round_trips = n;
        self.elapsed_s = elapsed.as_secs_f64();
        self.min_ns = h.min();
        self.p50_ns = h.value_at_quantile(0.50);
        self.p90_ns = h.value_at_quantile(0.90);
        self.p99_ns = h.value_at_quantile(0.99);
        self.p999_ns = h.value_at_quantile(0.999);
        self.max_ns = h.max();
        self.mean_ns = h.mean();
        self.stddev_ns = h.stdev();
        self.rtt_per_s = n as f64 / self.elapsed_s.max(1e-9);
        self.mib_per_s = 2.0 * self.size_bytes as f64 * self.rtt_per_s / (1 << 20) as f64;
        self.client_user_s = client.user.as_secs_f64();
        self.client_system_s = client.system.as_secs_f64();
        self.server_user_s = server.user.as_secs_f64();
        self.server_system_s = server.system.as_secs_f64();
        let cpu = client.user + client.system + server.user + server.system;
        self.cpu_per_rtt_ns = cpu.as_nanos() as f64 / n.max(1) as f64;
        self.client_voluntary_switches = client.voluntary;
        self.client_involuntary_switches = client.involuntary;
        self.server_voluntary_switches = server.voluntary;
        self.server_involuntary_switches = server.involuntary;
    }

    fn ok(&self) -> bool {
        self.error.is_none() && self.round_trips > 0
    }
}

/// A cell's figures as the tables show them: p50, p99, p99.9, RTT/s,
/// MiB/s, CPU/RTT (the terminal and the Markdown table share them).
fn figures(c: &Cell) -> [String; 6] {
    [
        ns(c.p50_ns as f64),
        ns(c.p99_ns as f64),
        ns(c.p999_ns as f64),
        format!("{:.0}", c.rtt_per_s),
        format!("{:.1}", c.mib_per_s),
        ns(c.cpu_per_rtt_ns),
    ]
}

fn terminal_row(name: &str, c: &Cell, last: &str) -> String {
    let f = figures(c);
    format!(
        "{name:<14} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {last:>8}",
        f[0], f[1], f[2], f[3], f[4], f[5]
    )
}

fn markdown_row(name: &str, c: &Cell, last: &str) -> String {
    format!("| {name} | {} | {last} |", figures(c).join(" | "))
}

/// "1.21×": the ipclab transport's p50 over its raw baseline's.
fn vs_raw(raw: &Cell, ours: Option<&Cell>) -> String {
    ours.map_or("-".to_string(), |o| {
        format!("{:.2}×", o.p50_ns as f64 / raw.p50_ns.max(1) as f64)
    })
}

fn ns(v: f64) -> String {
    fmt_duration(Duration::from_nanos(v.max(0.0) as u64))
}

impl Report {
    /// The transports' cells of one size and placement, fastest (p50)
    /// first, failed last; baselines apart.
    fn group(&self, size: usize, placement: Placement) -> Vec<&Cell> {
        let mut cells: Vec<&Cell> = self
            .results
            .iter()
            .filter(|c| !c.baseline && c.size_bytes == size && c.placement == placement)
            .collect();
        cells.sort_by_key(|c| (!c.ok(), c.p50_ns));
        cells
    }

    /// Raw baseline rows of one size and placement, each with the ipclab
    /// transport it is the baseline of.
    fn baselines(&self, size: usize, placement: Placement) -> Vec<(&Cell, Option<&Cell>)> {
        self.results
            .iter()
            .filter(|c| c.baseline && c.ok() && c.size_bytes == size && c.placement == placement)
            .map(|b| {
                let ours = self.results.iter().find(|c| {
                    !c.baseline
                        && c.ok()
                        && c.size_bytes == size
                        && c.placement == placement
                        && c.transport == b.transport.trim_start_matches("raw-")
                });
                (b, ours)
            })
            .collect()
    }

    /// (transport, ipclab p50 ÷ raw p50) for one size and placement.
    pub fn overhead(&self, size: usize, placement: Placement) -> Vec<(String, f64)> {
        self.baselines(size, placement)
            .into_iter()
            .filter_map(|(b, ours)| {
                ours.map(|o| {
                    (
                        o.transport.clone(),
                        o.p50_ns as f64 / b.p50_ns.max(1) as f64,
                    )
                })
            })
            .collect()
    }

    /// One table per size and placement, for people.
    pub fn write_tables(&self, out: &mut dyn Write) -> io::Result<()> {
        for f in &self.floors {
            writeln!(out, "floor: {} ({}): {}", f.name, f.placement, ns(f.ns))?;
        }
        for &placement in &self.environment.placements {
            for &size in &self.environment.sizes_bytes {
                let cells = self.group(size, placement);
                if cells.is_empty() {
                    continue;
                }
                let fastest = cells.first().filter(|c| c.ok()).map(|c| c.p50_ns.max(1));
                writeln!(out)?;
                writeln!(
                    out,
                    "{} payload, {placement} (round-trip times)",
                    fmt_size(size)
                )?;
                writeln!(
                    out,
                    "{:<14} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>8}",
                    "", "p50", "p99", "p99.9", "RTT/s", "MiB/s", "CPU/RTT", "vs best"
                )?;
                for c in cells {
                    if !c.ok() {
                        writeln!(
                            out,
                            "{:<14} FAILED: {}",
                            c.transport,
                            c.error.as_deref().unwrap_or("no round trips")
                        )?;
                        continue;
                    }
                    let ratio = fastest.map_or(1.0, |f| c.p50_ns as f64 / f as f64);
                    writeln!(
                        out,
                        "{}",
                        terminal_row(&c.transport, c, &format!("{ratio:.1}×"))
                    )?;
                }
                let base = self.baselines(size, placement);
                if !base.is_empty() {
                    writeln!(
                        out,
                        "reference: raw system calls, no ipclab (last column: ipclab ÷ raw)"
                    )?;
                }
                for (b, ours) in base {
                    writeln!(out, "{}", terminal_row(&b.transport, b, &vs_raw(b, ours)))?;
                }
            }
        }
        Ok(())
    }

    /// One line per size and placement, readable at a glance.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for &placement in &self.environment.placements {
            for &size in &self.environment.sizes_bytes {
                let cells: Vec<&Cell> = self
                    .group(size, placement)
                    .into_iter()
                    .filter(|c| c.ok())
                    .collect();
                let Some(best) = cells.first() else { continue };
                // Across cores, the physical limit is one cache line there
                // and back: say how far the fastest transport is from it.
                let floor = self
                    .floors
                    .iter()
                    .find(|f| f.placement == placement && f.name.starts_with("cache line"))
                    .filter(|f| f.ns > 0.0)
                    .map(|f| format!(", {:.1}× the cache-line floor", best.p50_ns as f64 / f.ns))
                    .unwrap_or_default();
                let mut line = format!(
                    "at {} ({placement}): {} fastest ({} p50{floor})",
                    fmt_size(size),
                    best.transport,
                    ns(best.p50_ns as f64)
                );
                for c in cells.iter().skip(1) {
                    let _ = write!(
                        line,
                        "; {} {:.1}× slower",
                        c.transport,
                        c.p50_ns as f64 / best.p50_ns.max(1) as f64
                    );
                }
                lines.push(line);
                let over = self.overhead(size, placement);
                if !over.is_empty() {
                    let parts: Vec<String> = over
                        .iter()
                        .map(|(t, r)| format!("{t} {r:.2}× raw"))
                        .collect();
                    lines.push(format!(
                        "  ipclab overhead at {} ({placement}): {}",
                        fmt_size(size),
                        parts.join(", ")
                    ));
                }
            }
        }
        lines
    }

    /// Advice about figures that should not be trusted as they are.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.environment.cores < 2 && self.environment.placements.contains(&Placement::CrossCore)
        {
            w.push(
                "this machine has fewer than 2 CPUs: cross-core figures are not possible".into(),
            );
        }
        for c in self.results.iter().filter(|c| c.ok() && !c.baseline) {
            let at = format!(
                "{} at {} ({})",
                c.transport,
                fmt_size(c.size_bytes),
                c.placement
            );
            if c.first_rtt_ns > 20 * c.p50_ns.max(1) {
                w.push(format!(
                    "{at}: the first round trip took {:.0}× the median (connection set-up, cold caches): the warm-up discarded it",
                    c.first_rtt_ns as f64 / c.p50_ns.max(1) as f64
                ));
            }
            if c.p99_ns > 10 * c.p50_ns.max(1) {
                let advice = if c.placement == Placement::SameCore {
                    "run with the machine otherwise idle, or a longer --time"
                } else {
                    "try --placement same-core, or a longer --time"
                };
                w.push(format!(
                    "{at}: wide spread, p99 is {:.0}× p50 (something else ran, or a virtual CPU was descheduled): {advice}",
                    c.p99_ns as f64 / c.p50_ns.max(1) as f64
                ));
            }
            if c.round_trips < 100 {
                w.push(format!(
                    "{at}: only {} round trip(s) in the time limit: percentiles are rough; raise --time for steadier figures",
                    c.round_trips
                ));
            }
        }
        for c in self.results.iter().filter(|c| c.error.is_some()) {
            w.push(format!(
                "{} at {} ({}) failed: {}",
                c.transport,
                fmt_size(c.size_bytes),
                c.placement,
                c.error.as_deref().unwrap_or("")
            ));
        }
        w
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    pub fn to_csv(&self) -> io::Result<String> {
        let mut wtr = csv::Writer::from_writer(Vec::new());
        for c in &self.results {
            wtr.serialize(c).map_err(io::Error::other)?;
        }
        String::from_utf8(
            wtr.into_inner()
                .map_err(|e| io::Error::other(e.to_string()))?,
        )
        .map_err(io::Error::other)
    }

    pub fn to_markdown(&self) -> String {
        let e = &self.environment;
        let mut s = String::new();
        let _ = writeln!(s, "# ipclab bench\n");
        let _ = writeln!(
            s,
            "ipclab {} on {} ({} CPUs), Linux {}, {}. Command: `{}`.\n",
            e.ipclab_version, e.cpu_model, e.cores, e.kernel, e.date_utc, e.command
        );
        let _ = writeln!(
            s,
            "Round-trip times of a ping-pong between two processes; MiB/s counts payload both ways; CPU/RTT is client + server CPU time per round trip.\n"
        );
        for f in &self.floors {
            let _ = writeln!(s, "- floor: {} ({}): {}", f.name, f.placement, ns(f.ns));
        }
        for &placement in &e.placements {
            for &size in &e.sizes_bytes {
                let cells = self.group(size, placement);
                if cells.is_empty() {
                    continue;
                }
                let fastest = cells.first().filter(|c| c.ok()).map(|c| c.p50_ns.max(1));
                let _ = writeln!(s, "\n## {} payload, {placement}\n", fmt_size(size));
                let _ = writeln!(
                    s,
                    "| transport | p50 | p99 | p99.9 | RTT/s | MiB/s | CPU/RTT | vs best |"
                );
                let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
                for c in cells {
                    if !c.ok() {
                        let _ = writeln!(
                            s,
                            "| {} | failed: {} | | | | | | |",
                            c.transport,
                            c.error.as_deref().unwrap_or("")
                        );
                        continue;
                    }
                    let ratio = fastest.map_or(1.0, |f| c.p50_ns as f64 / f as f64);
                    let _ = writeln!(
                        s,
                        "{}",
                        markdown_row(&c.transport, c, &format!("{ratio:.1}×"))
                    );
                }
                for (b, ours) in self.baselines(size, placement) {
                    let name = format!("*{}* (reference)", b.transport);
                    let _ = writeln!(
                        s,
                        "{}",
                        markdown_row(&name, b, &format!("ipclab ÷ raw: {}", vs_raw(b, ours)))
                    );
                }
            }
        }
        s
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for now.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// CPU model and kernel release, read from the machine.
pub fn machine() -> (String, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    (cpu, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20"));
    }
}
