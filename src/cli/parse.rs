//! Parsers for flag values: sizes, durations, `NAME=VALUE`, and `--invoke`
//! arguments.

use anyhow::{Context, bail};
use std::time::Duration;
use wasmlet_runtime::Val;
use wasmtime::ValType;

/// `64MiB`, `1G`, `65536`.
pub fn size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("invalid size `{s}`: {e} (try e.g. 64MiB)"))
}

/// `250ms`, `2s`, `1m 30s`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration `{s}`: {e} (try e.g. 250ms)"))
}

/// `--sandbox-cpus`: a number of CPUs in (0, host CPUs].
pub fn sandbox_cpus(s: &str) -> Result<f64, String> {
    let c: f64 = s
        .parse()
        .map_err(|_| format!("invalid CPU count `{s}` (try e.g. 0.5)"))?;
    check_sandbox(wasmlet_sandbox::SandboxConfig {
        cpus: Some(c),
        ..Default::default()
    })?;
    Ok(c)
}

/// `--sandbox-pids`: at least what a worker runs.
pub fn sandbox_pids(s: &str) -> Result<u64, String> {
    let p: u64 = s.parse().map_err(|_| format!("invalid pids limit `{s}`"))?;
    check_sandbox(wasmlet_sandbox::SandboxConfig {
        pids: Some(p),
        ..Default::default()
    })?;
    Ok(p)
}

/// `--sandbox-memory`: a size, at least a worker's footprint.
pub fn sandbox_memory(s: &str) -> Result<u64, String> {
    let m = size(s)?;
    check_sandbox(wasmlet_sandbox::SandboxConfig {
        memory: Some(m),
        ..Default::default()
    })?;
    Ok(m)
}

fn check_sandbox(c: wasmlet_sandbox::SandboxConfig) -> Result<(), String> {
    c.validate().map_err(|e| match e {
        wasmlet_sandbox::Error::Config(m) => m,
        other => other.to_string(),
    })
}

/// `NAME=VALUE`, or `NAME` to pass the host's value through.
pub fn env_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("invalid --env `{s}`: empty name")),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => std::env::var(s)
            .map(|v| (s.to_string(), v))
            .map_err(|_| format!("--env {s}: not set in the host environment (use NAME=VALUE)")),
    }
}

/// Parses `--invoke` arguments against the export's parameter types.
pub fn invoke_args(name: &str, types: &[ValType], args: &[String]) -> anyhow::Result<Vec<Val>> {
    if types.len() != args.len() {
        bail!(
            "export `{name}` takes {} argument(s), {} given",
            types.len(),
            args.len()
        );
    }
    types
        .iter()
        .zip(args)
        .map(|(ty, arg)| {
            let val = match ty {
                ValType::I32 => Val::I32(parse_int::<i32, u32>(arg)?),
                ValType::I64 => Val::I64(parse_int::<i64, u64>(arg)?),
                ValType::F32 => Val::F32(arg.parse::<f32>()?.to_bits()),
                ValType::F64 => Val::F64(arg.parse::<f64>()?.to_bits()),
                other => bail!("cannot pass a {other} from the command line"),
            };
            Ok(val)
        })
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("bad argument for export `{name}`"))
}

/// Accepts signed and unsigned spellings (`-1` and `4294967295` for i32),
/// as wasmtime does: an unsigned value keeps its bits.
fn parse_int<S, U>(s: &str) -> anyhow::Result<S>
where
    S: std::str::FromStr,
    U: std::str::FromStr + Reinterpret<S>,
{
    if let Ok(v) = s.parse::<S>() {
        return Ok(v);
    }
    s.parse::<U>()
        .map(Reinterpret::reinterpret)
        .map_err(|_| anyhow::anyhow!("`{s}` is not an integer of this type"))
}

trait Reinterpret<S> {
    fn reinterpret(self) -> S;
}

impl Reinterpret<i32> for u32 {
    fn reinterpret(self) -> i32 {
        self as i32
    }
}

impl Reinterpret<i64> for u64 {
    fn reinterpret(self) -> i64 {
        self as i64
    }
}

/// How `--invoke` prints a result, one per line.
pub fn show_val(v: &Val) -> String {
    match v {
        Val::I32(i) => i.to_string(),
        Val::I64(i) => i.to_string(),
        Val::F32(b) => f32::from_bits(*b).to_string(),
        Val::F64(b) => f64::from_bits(*b).to_string(),
        Val::V128(v) => format!("{:#034x}", v.as_u128()),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size("64MiB").unwrap(), 64 << 20);
        assert_eq!(size("1G").unwrap(), 1 << 30);
        assert_eq!(size("4096").unwrap(), 4096);
        assert!(size("lots").is_err());
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("soon").is_err());
    }

    #[test]
    fn env_vars() {
        assert_eq!(env_var("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(env_var("=x").is_err());
    }

    #[test]
    fn invoke_arguments_follow_types() {
        let v = invoke_args(
            "f",
            &[ValType::I32, ValType::F64],
            &["-1".into(), "2.5".into()],
        )
        .unwrap();
        assert!(matches!(v[0], Val::I32(-1)));
        assert!(matches!(
            invoke_args("f", &[ValType::I32], &["4294967295".into()]).unwrap()[0],
            Val::I32(-1)
        ));
        assert!(invoke_args("f", &[ValType::I32], &[]).is_err());
        assert!(invoke_args("f", &[ValType::I32], &["x".into()]).is_err());
    }
}
