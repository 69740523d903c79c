//! Flag values, in two stages: parsers clap calls for each value (sizes,
//! durations, `NAME=VALUE`, `HOST::GUEST`), which refuse what cannot be a
//! valid value, and checks across values (repeated names, clashing guest
//! paths) run on the parsed flags before any work starts. `--invoke`
//! arguments are parsed last, against the export's types.

use anyhow::{Context, bail};
use std::collections::HashMap;
use std::path::{Component, Path};
use std::time::Duration;
use wasmlet_runtime::{Preopen, Val};
use wasmtime::ValType;

/// Longest duration a flag takes (ten years): deadlines are computed as
/// now + duration, which must not overflow, and no real limit comes near.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// `64MiB`, `1G`, `65536`.
pub fn size(s: &str) -> Result<u64, String> {
    wasmlet_serve::manifest::parse_size(s)
        .map_err(|e| format!("invalid size `{s}`: {e} (try e.g. 64MiB)"))
}

/// A size that is a limit (`--memory-limit`): zero, which no run could
/// stay within, is refused.
pub fn limit_size(s: &str) -> Result<u64, String> {
    match size(s)? {
        0 => Err(format!(
            "invalid size `{s}`: a limit must be more than zero"
        )),
        n => Ok(n),
    }
}

/// `250ms`, `2s`, `1m 30s`: more than zero, at most [`MAX_DURATION`].
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration `{s}`: {e} (try e.g. 250ms)"))?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration `{s}`: a limit must be more than zero"
        ));
    }
    if d > MAX_DURATION {
        return Err(format!("invalid duration `{s}`: at most 3650days"));
    }
    Ok(d)
}

/// The `--compile-cap` that bounds the module file's size (read before it is
/// parsed: `RuntimeConfig::max_module_size`), beside `CompileLimits`' caps.
pub const MAX_MODULE_SIZE: &str = "max_module_size";

/// `CAP=N` for `--compile-cap`: a cap of `CompileLimits` (or
/// [`MAX_MODULE_SIZE`]) and its value.
pub fn compile_cap(s: &str) -> Result<(String, u64), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!(
            "invalid --compile-cap `{s}` (try e.g. max_functions=500000)"
        ));
    };
    let value = wasmlet_serve::manifest::parse_size(value)
        .map_err(|e| format!("invalid --compile-cap `{s}`: {e}"))?;
    if name == MAX_MODULE_SIZE {
        if value == 0 {
            return Err(format!("invalid --compile-cap `{s}`: must be at least 1"));
        }
    } else {
        wasmlet_runtime::CompileLimits::default().set_cap(name, value)?;
    }
    Ok((name.to_string(), value))
}

/// `--cache-dir` (or `WASMLET_CACHE_DIR`): a UTF-8 path, as the compile
/// child is handed its configuration as JSON.
pub fn cache_dir(s: std::ffi::OsString) -> Result<std::path::PathBuf, String> {
    match s.into_string() {
        Ok(s) => Ok(s.into()),
        Err(s) => Err(format!(
            "the cache directory {} is not UTF-8",
            Path::new(&s).display()
        )),
    }
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
        None if s.is_empty() => Err("invalid --env ``: empty name".into()),
        None => match std::env::var(s) {
            Ok(v) => Ok((s.to_string(), v)),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "--env {s}: not set in the host environment (use NAME=VALUE)"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "--env {s}: the host's value is not valid UTF-8 (use NAME=VALUE)"
            )),
        },
    }
}

/// The environment the guest gets: one variable per name, the last
/// `--env` for a name winning (as in a shell), in order of first mention.
pub fn env_list(vars: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(vars.len());
    let mut index = HashMap::new();
    for (k, v) in vars {
        match index.get(&k) {
            Some(&i) => out[i] = (k, v),
            None => {
                index.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    out
}

/// `HOST[::GUEST]`, with neither part empty.
pub fn dir(s: &str) -> Result<Preopen, String> {
    let p = Preopen::parse(s);
    if p.host.as_os_str().is_empty() {
        return Err(format!("invalid --dir `{s}`: empty host directory"));
    }
    if p.guest.is_empty() {
        return Err(format!(
            "invalid --dir `{s}`: empty guest path (use HOST::GUEST, or HOST alone)"
        ));
    }
    Ok(p)
}

/// Refuses two `--dir` that give the guest the same path (one would
/// silently hide the other). Paths are compared as the guest's libc
/// matches them against its preopens: `/data/`, `/data/.`, `data` and
/// `./data` are all `/data`, and `.` is `/`.
pub fn unique_guest_paths(dirs: &[Preopen]) -> anyhow::Result<()> {
    let mut seen: HashMap<Vec<Component<'_>>, &Preopen> = HashMap::new();
    for d in dirs {
        let key: Vec<_> = Path::new(&d.guest)
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
            .collect();
        if let Some(first) = seen.insert(key, d) {
            bail!(
                "--dir: two directories for the guest path `{}` ({} and {}); give each its own",
                d.guest,
                first.host.display(),
                d.host.display()
            );
        }
    }
    Ok(())
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
        assert_eq!(size("0").unwrap(), 0);
        assert!(limit_size("0").is_err());
        assert!(size("99999999999999999999").is_err());
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("soon").is_err());
        assert!(duration("0s").is_err());
        assert!(duration("18446744073709551615s").is_err());
        assert!(duration("3651days").is_err());
        assert!(
            sandbox_cpus("inf").is_err()
                && sandbox_cpus("NaN").is_err()
                && sandbox_cpus("-1").is_err()
        );
    }

    #[test]
    fn env_vars() {
        assert_eq!(env_var("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(env_var("=x").is_err());
        let vars = |l: &[(&str, &str)]| -> Vec<(String, String)> {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            env_list(vars(&[("A", "1"), ("B", "x"), ("A", "2")])),
            vars(&[("A", "2"), ("B", "x")])
        );
    }

    #[test]
    fn dirs() {
        assert_eq!(dir("/tmp::/t").unwrap().guest, "/t");
        assert!(dir("/tmp::").is_err());
        assert!(dir("::/t").is_err());
        let two = [dir("/a::/data").unwrap(), dir("/b::/data/").unwrap()];
        assert!(unique_guest_paths(&two).is_err());
        unique_guest_paths(&[dir("/a").unwrap(), dir("/b").unwrap()]).unwrap();
        // The guest's libc takes these for one path (an outside tester's
        // `--dir d1::x --dir d2::./x` read d2's files).
        for (a, b) in [("x", "./x"), ("/x", "x"), ("/", "."), ("/x/", "./x/.")] {
            let two = [
                dir(&format!("/a::{a}")).unwrap(),
                dir(&format!("/b::{b}")).unwrap(),
            ];
            assert!(unique_guest_paths(&two).is_err(), "{a} and {b}");
        }
        unique_guest_paths(&[dir("/a::x").unwrap(), dir("/b::x/y").unwrap()]).unwrap();
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
