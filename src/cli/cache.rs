//! `wasmlet cache`: look after the compilation cache.

use super::{CacheArgs, parse};
use clap::Subcommand;
use std::process::ExitCode;
use std::time::SystemTime;
use wasmlet_runtime::cache::Cache;

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List the entries, oldest first: size, age, path.
    List {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Check every entry in full (its payload's checksum); exit 1 if any is bad.
    Verify {
        /// Remove the bad entries.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Remove every entry.
    Clean {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Remove the least recently used entries until the cache fits SIZE.
    Prune {
        /// e.g. 2GiB
        #[arg(long, value_name = "SIZE", value_parser = parse::size)]
        max_size: u64,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

fn open(args: &CacheArgs) -> anyhow::Result<Cache> {
    let root = match &args.cache_dir {
        Some(dir) => dir.clone(),
        None => Cache::default_root()
            .ok_or_else(|| anyhow::anyhow!("no cache directory: set --cache-dir or $HOME"))?,
    };
    Ok(Cache::open(root)?)
}

pub fn cache(cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CacheCommand::List { cache } => {
            let cache = open(&cache)?;
            let entries = cache.entries()?;
            let now = SystemTime::now();
            let total: u64 = entries.iter().map(|e| e.size).sum();
            for e in &entries {
                let age = now.duration_since(e.modified).unwrap_or_default();
                println!(
                    "{:>12}  {:>10}  {}",
                    e.size,
                    humantime::format_duration(std::time::Duration::from_secs(age.as_secs())),
                    e.path.display()
                );
            }
            println!(
                "{} entries, {total} bytes in {}",
                entries.len(),
                cache.dir().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Verify { remove, cache } => {
            let report = open(&cache)?.verify(remove)?;
            for (path, why) in &report.bad {
                let done = if remove { " (removed)" } else { "" };
                eprintln!("bad: {}: {why}{done}", path.display());
            }
            println!("{} entries good, {} bad", report.good, report.bad.len());
            Ok(if report.bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(super::EXIT_HOST_ERROR)
            })
        }
        CacheCommand::Clean { cache } => {
            let cache = open(&cache)?;
            cache.clean()?;
            println!("removed all entries from {}", cache.dir().display());
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Prune { max_size, cache } => {
            let removed = open(&cache)?.prune(max_size)?;
            let freed: u64 = removed.iter().map(|e| e.size).sum();
            println!("removed {} entries, {freed} bytes", removed.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}
