//! `wasmlet usage`: the usage log read back as a bill.
//!
//! Each line that ran is one billed request; its GB-seconds are wall time
//! times a memory size: the function's configured memory limit with a
//! floor of 128 MiB, as the clouds bill ([`MemoryBasis::Configured`], the
//! default), or the exact peak linear memory the invocation reached
//! ([`MemoryBasis::Peak`], the line's own `gb_seconds`). A GB is 2^30 bytes
//! (a 128 MiB function is 0.125 GB); wall time is not rounded up. Lines of
//! requests refused before they ran (`status = "rejected"`) are counted but
//! not billed. The cost is `requests x price per million / 10^6 +
//! GB-seconds x price per GB-second`, by default at the public list prices
//! of AWS Lambda on x86 ([`DEFAULT_PRICE_GB_SECOND`],
//! [`DEFAULT_PRICE_PER_MILLION_REQUESTS`]), without its free tier.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::PathBuf;

/// AWS Lambda's list price per GB-second of x86 compute (first tier).
pub const DEFAULT_PRICE_GB_SECOND: f64 = 0.000_016_666_7;
/// AWS Lambda's list price per million requests.
pub const DEFAULT_PRICE_PER_MILLION_REQUESTS: f64 = 0.20;
/// Smallest memory billed per invocation with the configured basis.
pub const MIN_BILLED_MEMORY: u64 = 128 << 20;

/// Why a bill cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum BillError {
    /// A log cannot be read.
    #[error("cannot read usage log {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// `--since` is not before `--until`.
    #[error("--since {0} is not before --until {1}: the period is empty")]
    EmptyPeriod(DateTime<Utc>, DateTime<Utc>),
    /// A time given is not understood.
    #[error("`{0}` is not a time: give RFC 3339 (2026-11-28T09:00:00Z) or a date (2026-11-28)")]
    Time(String),
}

/// What the rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per function.
    Function,
    /// One row per trigger (`function/trigger`).
    Trigger,
    /// One row per UTC day.
    Day,
}

/// What GB-seconds are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryBasis {
    /// The configured memory limit, at least [`MIN_BILLED_MEMORY`].
    Configured,
    /// The invocation's peak linear memory.
    Peak,
}

/// What to bill.
#[derive(Debug, Clone)]
pub struct BillOptions {
    /// The logs read.
    pub logs: Vec<PathBuf>,
    /// Only lines starting at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Only lines starting before this.
    pub until: Option<DateTime<Utc>>,
    /// The rows.
    pub by: GroupBy,
    /// Dollars per GB-second.
    pub price_gb_second: f64,
    /// Dollars per million requests.
    pub price_per_million_requests: f64,
    /// GB-seconds from what.
    pub memory_basis: MemoryBasis,
}

/// One row of the bill.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// The function, `function/trigger`, or the day.
    pub key: String,
    /// Billed requests: invocations that ran.
    pub invocations: u64,
    /// Of those, the ones that did not exit 0.
    pub errors: u64,
    /// Requests refused before running (not billed).
    pub rejected: u64,
    /// GB-seconds billed.
    pub gb_seconds: f64,
    /// CPU seconds used.
    pub cpu_seconds: f64,
    /// Dollars for the requests.
    pub request_cost: f64,
    /// Dollars for the GB-seconds.
    pub compute_cost: f64,
    /// The two together.
    pub cost: f64,
}

/// A bill.
#[derive(Debug, Clone, Serialize)]
pub struct Bill {
    /// Rows, by key.
    pub rows: Vec<Row>,
    /// Every row added up.
    pub total: Row,
    /// Lines that are not usage records (a torn last line, say).
    pub skipped_lines: u64,
    /// Dollars per GB-second used.
    pub price_gb_second: f64,
    /// Dollars per million requests used.
    pub price_per_million_requests: f64,
    /// GB-seconds from what.
    pub memory_basis: MemoryBasis,
}

/// Parses `--since`/`--until`: RFC 3339, or a date (midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, BillError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| BillError::Time(s.to_string()))
}

impl Row {
    fn add(&mut self, o: &Row) {
        self.invocations += o.invocations;
        self.errors += o.errors;
        self.rejected += o.rejected;
        self.gb_seconds += o.gb_seconds;
        self.cpu_seconds += o.cpu_seconds;
    }

    fn price(&mut self, opts: &BillOptions) {
        self.request_cost = self.invocations as f64 * opts.price_per_million_requests / 1e6;
        self.compute_cost = self.gb_seconds * opts.price_gb_second;
        self.cost = self.request_cost + self.compute_cost;
    }
}

/// Reads the logs and adds them up. A line that is not a usage record
/// (not JSON, not UTF-8, a field missing or out of range: a hand-edited or
/// damaged log) is skipped and counted in [`Bill::skipped_lines`]; only a
/// log that cannot be read fails the bill.
pub fn compute(opts: &BillOptions) -> Result<Bill, BillError> {
    if let (Some(since), Some(until)) = (opts.since, opts.until)
        && since >= until
    {
        return Err(BillError::EmptyPeriod(since, until));
    }
    let mut tally = Tally::default();
    for path in &opts.logs {
        let read = |error| BillError::Read {
            path: path.clone(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        tally
            .add_lines(std::io::BufReader::new(file), opts)
            .map_err(read)?;
    }
    Ok(tally.finish(opts))
}

/// The bill of one log held in memory (the fuzz oracle's way in).
pub(crate) fn of_bytes(log: &[u8], opts: &BillOptions) -> Bill {
    let mut tally = Tally::default();
    // Reading from a slice cannot fail.
    let _ = tally.add_lines(log, opts);
    tally.finish(opts)
}

/// Rows added up so far, before pricing.
#[derive(Default)]
struct Tally {
    rows: BTreeMap<String, Row>,
    skipped: u64,
}

impl Tally {
    fn add_lines(&mut self, mut log: impl BufRead, opts: &BillOptions) -> std::io::Result<()> {
        let mut line = Vec::new();
        loop {
            line.clear();
            if log.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if line.trim_ascii().is_empty() {
                continue;
            }
            let Some((key, row)) = serde_json::from_slice::<Value>(&line)
                .ok()
                .and_then(|v| one(&v, opts))
            else {
                self.skipped += 1;
                continue;
            };
            if let Some(key) = key {
                let r = self.rows.entry(key.clone()).or_default();
                r.key = key;
                r.add(&row);
            }
        }
    }

    fn finish(self, opts: &BillOptions) -> Bill {
        let mut total = Row {
            key: "TOTAL".into(),
            ..Row::default()
        };
        let mut rows: Vec<Row> = self.rows.into_values().collect();
        for r in &mut rows {
            total.add(r);
            r.price(opts);
        }
        total.price(opts);
        Bill {
            rows,
            total,
            skipped_lines: self.skipped,
            price_gb_second: opts.price_gb_second,
            price_per_million_requests: opts.price_per_million_requests,
            memory_basis: opts.memory_basis,
        }
    }
}

/// One line's row and key; `Some((None, _))` when the time filter leaves
/// it out, `None` when it is not a usage line.
fn one(v: &Value, opts: &BillOptions) -> Option<(Option<String>, Row)> {
    let start = DateTime::parse_from_rfc3339(v["start_time"].as_str()?)
        .ok()?
        .with_timezone(&Utc);
    let status = v["status"].as_str()?;
    let function = v["function"].as_str().unwrap_or("-");
    let key = match opts.by {
        GroupBy::Function => function.to_string(),
        GroupBy::Trigger => format!("{function}/{}", v["trigger"].as_str().unwrap_or("-")),
        GroupBy::Day => start.format("%Y-%m-%d").to_string(),
    };
    let inside = opts.since.is_none_or(|s| start >= s) && opts.until.is_none_or(|u| start < u);
    let mut row = Row::default();
    if status == "rejected" {
        row.rejected = 1;
    } else {
        let wall = v["wall_time_ns"].as_u64()? as f64 / 1e9;
        row.invocations = 1;
        row.errors = u64::from(!crate::usage_log::is_success(v));
        row.cpu_seconds = v["cpu_time_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
        row.gb_seconds = match opts.memory_basis {
            MemoryBasis::Peak => v["gb_seconds"]
                .as_f64()
                .filter(|g| g.is_finite() && *g >= 0.0)?,
            MemoryBasis::Configured => {
                let configured = v["memory_limit_bytes"]
                    .as_u64()
                    .or_else(|| v["peak_memory_bytes"].as_u64())
                    .unwrap_or(0)
                    .max(MIN_BILLED_MEMORY);
                configured as f64 / (1u64 << 30) as f64 * wall
            }
        };
    }
    Some((inside.then_some(key), row))
}

impl Bill {
    /// The bill as an aligned table, ending with the prices used.
    pub fn table(&self, by: GroupBy) -> String {
        let head = [
            match by {
                GroupBy::Function => "FUNCTION",
                GroupBy::Trigger => "FUNCTION/TRIGGER",
                GroupBy::Day => "DAY (UTC)",
            },
            "INVOCATIONS",
            "ERRORS",
            "REJECTED",
            "GB-SECONDS",
            "CPU-SECONDS",
            "REQUESTS $",
            "COMPUTE $",
            "COST $",
        ];
        let cells = |r: &Row| {
            vec![
                r.key.clone(),
                r.invocations.to_string(),
                r.errors.to_string(),
                r.rejected.to_string(),
                format!("{:.6}", r.gb_seconds),
                format!("{:.6}", r.cpu_seconds),
                format!("{:.6}", r.request_cost),
                format!("{:.6}", r.compute_cost),
                format!("{:.6}", r.cost),
            ]
        };
        let mut table: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
        table.extend(self.rows.iter().map(cells));
        table.push(cells(&self.total));
        let widths: Vec<usize> = (0..head.len())
            .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &table {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i == 0 {
                    let _ = write!(line, "{c:<w$}", w = widths[i]);
                } else {
                    let _ = write!(line, "  {c:>w$}", w = widths[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "prices: ${} per GB-second, ${} per million requests; memory basis: {}",
            self.price_gb_second,
            self.price_per_million_requests,
            match self.memory_basis {
                MemoryBasis::Configured => "configured limit (at least 128 MiB)",
                MemoryBasis::Peak => "peak linear memory",
            }
        );
        if self.skipped_lines > 0 {
            let _ = writeln!(
                out,
                "{} line(s) skipped: not usage records",
                self.skipped_lines
            );
        }
        out
    }

    /// The bill as one JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The bill as CSV: a header, a line per row, then the total.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "key,invocations,errors,rejected,gb_seconds,cpu_seconds,request_cost,compute_cost,cost\n",
        );
        for r in self.rows.iter().chain([&self.total]) {
            // A key a spreadsheet would run as a formula is quoted as text.
            let key = if r.key.starts_with(['=', '+', '-', '@', '\t', '\r']) && r.key != "-" {
                format!("'{}", r.key)
            } else {
                r.key.clone()
            };
            let key = if key.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", key.replace('"', "\"\""))
            } else {
                key
            };
            let _ = writeln!(
                out,
                "{key},{},{},{},{},{},{},{},{}",
                r.invocations,
                r.errors,
                r.rejected,
                r.gb_seconds,
                r.cpu_seconds,
                r.request_cost,
                r.compute_cost,
                r.cost
            );
        }
        out
    }
}
