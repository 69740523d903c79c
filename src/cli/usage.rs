//! `wasmlet usage`: the bill of a usage log (the `wasmlet-serve` crate's
//! `bill` module does the work).

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use wasmlet_serve::bill::{self, BillOptions, GroupBy, MemoryBasis};
use wasmlet_serve::usage_log::{DEFAULT_USAGE_LOG, rotated_files};

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Usage logs to read [default: ./wasmlet-usage.jsonl and its rotated files
    /// wasmlet-usage.jsonl.1, .2, ...].
    #[arg(long, value_name = "FILE", num_args = 1..)]
    log: Vec<PathBuf>,
    /// Only invocations that started at or after T (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "T", value_parser = time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only invocations that started before T (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "T", value_parser = time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// One row per function, per trigger, or per UTC day.
    #[arg(long, value_enum, default_value = "function")]
    by: By,
    /// Dollars per GB-second [default: 0.0000166667, the list price of AWS Lambda on x86].
    #[arg(long, value_name = "X", value_parser = price)]
    price_gb_second: Option<f64>,
    /// Dollars per million requests [default: 0.20, the list price of AWS Lambda].
    #[arg(long, value_name = "Y", value_parser = price)]
    price_per_million_requests: Option<f64>,
    /// GB-seconds from the function's configured memory limit (at least 128 MiB, as clouds
    /// bill) or from the exact peak linear memory of each invocation.
    #[arg(long, value_enum, default_value = "configured")]
    memory_basis: Basis,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum By {
    Function,
    Trigger,
    Day,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Basis {
    Configured,
    Peak,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Table,
    Json,
    Csv,
}

fn time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    bill::parse_time(s).map_err(|e| e.to_string())
}

fn price(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p >= 0.0 && p.is_finite() => Ok(p),
        _ => Err(format!(
            "`{s}` is not a price: give dollars, e.g. 0.0000166667"
        )),
    }
}

pub fn usage(args: UsageArgs) -> anyhow::Result<ExitCode> {
    let logs = if args.log.is_empty() {
        let default = PathBuf::from(DEFAULT_USAGE_LOG);
        let mut logs: Vec<PathBuf> = rotated_files(&default).into_iter().map(|f| f.1).collect();
        if default.exists() || logs.is_empty() {
            logs.push(default);
        }
        logs
    } else {
        args.log
    };
    let by = match args.by {
        By::Function => GroupBy::Function,
        By::Trigger => GroupBy::Trigger,
        By::Day => GroupBy::Day,
    };
    let opts = BillOptions {
        logs,
        since: args.since,
        until: args.until,
        by,
        price_gb_second: args
            .price_gb_second
            .unwrap_or(bill::DEFAULT_PRICE_GB_SECOND),
        price_per_million_requests: args
            .price_per_million_requests
            .unwrap_or(bill::DEFAULT_PRICE_PER_MILLION_REQUESTS),
        memory_basis: match args.memory_basis {
            Basis::Configured => MemoryBasis::Configured,
            Basis::Peak => MemoryBasis::Peak,
        },
    };
    let bill = bill::compute(&opts)?;
    let text = match args.format {
        Format::Table => bill.table(by),
        Format::Json => bill.json(),
        Format::Csv => bill.csv(),
    };
    super::output::println(text.trim_end_matches('\n'))?;
    Ok(ExitCode::SUCCESS)
}
