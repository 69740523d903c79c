//! `wasmlet run`: one invocation of a module, like `wasmtime run`.

use super::output::{eprintln, println};
use super::progress::with_spinner;
use super::{CacheArgs, EXIT_LIMIT, EXIT_TRAP, bounded, parse};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use wasmlet_runtime::{Entry, Input, Invocation, Limits, LoadOptions, Output, Preopen, Status};
use wasmlet_sandbox::{Sandbox, SandboxConfig, WorkerCommand};
use wasmtime::ExternType;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Set an environment variable for the guest: NAME=VALUE, or NAME to pass the host's value (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse::env_var)]
    env: Vec<(String, String)>,
    /// Grant the guest a host directory, seen as GUEST (default: HOST) (repeatable).
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse::dir)]
    dirs: Vec<Preopen>,
    /// Call this export instead of `_start` and print its results.
    #[arg(long, value_name = "NAME")]
    invoke: Option<String>,
    /// Maximum linear memory, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse::limit_size)]
    memory_limit: Option<u64>,
    /// Maximum CPU time of the invocation, e.g. 250ms.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    cpu_time: Option<Duration>,
    /// Maximum wall-clock time, e.g. 2s.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    timeout: Option<Duration>,
    /// Fuel budget (enables fuel metering).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// After the run, print the usage record as one JSON line on stderr.
    #[arg(long)]
    usage: bool,
    /// Link imports the host does not provide as functions that trap when called.
    #[arg(long)]
    trap_unknown_imports: bool,
    /// Accept a precompiled .cwasm (native code, run as is: only for files you trust).
    #[arg(long)]
    allow_precompiled: bool,
    /// Run the invocation in a fresh sandbox: a hardened worker process in cgroups of its own.
    #[arg(long)]
    sandbox: bool,
    /// Sandbox memory limit (the kernel's OOM killer enforces it), e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse::sandbox_memory, requires = "sandbox")]
    sandbox_memory: Option<u64>,
    /// Sandbox CPU bandwidth in CPUs, more than 0 and at most the host's CPUs, e.g. 0.5.
    #[arg(long, value_name = "FLOAT", value_parser = parse::sandbox_cpus, requires = "sandbox")]
    sandbox_cpus: Option<f64>,
    /// Sandbox limit on processes and threads (at least what a worker runs).
    #[arg(long, value_name = "N", value_parser = parse::sandbox_pids, requires = "sandbox")]
    sandbox_pids: Option<u64>,
    /// Run the sandbox even where cgroups cannot be used (no kernel limits; warns).
    #[arg(long, requires = "sandbox")]
    sandbox_without_cgroups: bool,
    #[command(flatten)]
    cache: CacheArgs,
    /// The module: .wasm, .wat, or (with --allow-precompiled) a .cwasm made by `wasmlet compile`.
    module: PathBuf,
    /// Arguments for the guest (or for the export named by --invoke).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before any thread starts (they inherit the mask): SIGINT, SIGTERM
    // and SIGHUP are taken by a thread that ends the sandbox cleanly, then exits.
    let signals = args
        .sandbox
        .then(super::signals::Signals::block)
        .transpose()?;
    // Second stage of flag parsing: checks across values.
    parse::unique_guest_paths(&args.dirs)?;
    let env = parse::env_list(args.env);
    let mut config = args.cache.runtime_config(args.fuel.is_some());
    // Compiling happens in a child under the compile budget (`bounded`).
    config.compile.in_process = false;
    if !args.sandbox {
        // One invocation: one pool slot, so the process reserves address
        // space for one instance, not a server's worth.
        config.pool.instances = 1;
    }
    let runtime = wasmlet_runtime::Runtime::new(config)?;
    let mut limits = Limits::default();
    if let Some(m) = args.memory_limit {
        limits.max_memory = m;
    }
    limits.cpu_time = args.cpu_time;
    limits.timeout = args.timeout;
    limits.fuel = args.fuel;

    let opts = LoadOptions {
        trap_unknown_imports: args.trap_unknown_imports,
        limits: Some(limits),
        snapshot: None,
        allow_precompiled: args.allow_precompiled,
        allowed_outbound_hosts: Vec::new(),
    };
    let size = std::fs::metadata(&args.module).map_or(0, |m| m.len());
    let message = format!("compiling {} ({size} bytes)", args.module.display());
    // Compiled here either way (in a child, under the compile budget): in
    // process it is the function; a sandbox's worker maps the same code.
    let loaded = with_spinner(message, || bounded::load(&runtime, &args.module, &opts))?;
    let module = loaded.function.module().cloned();
    let mut dirs: Vec<Preopen> = args.dirs.clone();
    let (function, sandbox) = if args.sandbox {
        // The jail holds exactly these directories, by absolute host path.
        for d in &mut dirs {
            d.host = std::fs::canonicalize(&d.host)
                .with_context(|| format!("--dir {}", d.host.display()))?;
        }
        let config = SandboxConfig {
            require_cgroups: !args.sandbox_without_cgroups,
            ..SandboxConfig::for_invocations(
                &dirs,
                args.sandbox_memory,
                args.sandbox_cpus,
                args.sandbox_pids,
            )
        };
        let sb = Arc::new(Sandbox::start(
            runtime.config(),
            &config,
            WorkerCommand::current_exe()?,
        )?);
        if let Some(signals) = signals {
            let sb = Arc::downgrade(&sb);
            signals.on_signal(move || {
                if let Some(sb) = sb.upgrade() {
                    sb.shutdown();
                }
            })?;
        }
        // Workers map what was compiled here (they never see the cache);
        // without a cache, a worker compiles the module itself.
        // (Read as the runtime reads: a regular file, size-capped, never
        // blocking on a FIFO swapped in since it was loaded.)
        sb.load_function_or(&loaded.function, &opts, || {
            super::read_module(&args.module, runtime.config().max_module_size)
        })?;
        drop(loaded);
        (None, Some(sb))
    } else {
        (Some(loaded), None)
    };

    let module_name = args.module.to_string_lossy().into_owned();
    let (entry, argv) = match &args.invoke {
        None => (
            Entry::Start,
            std::iter::once(module_name).chain(args.args).collect(),
        ),
        Some(_) if module.is_none() => {
            anyhow::bail!(
                "--invoke calls an export of a core module; a component runs through wasi:cli/run"
            );
        }
        Some(name) => {
            let Some(ExternType::Func(ty)) = module.as_ref().and_then(|m| m.get_export(name))
            else {
                anyhow::bail!("module has no exported function `{name}`");
            };
            // As wasmtime does: the arguments are the export's parameters
            // when it takes any, and the guest's argv either way (an
            // interpreter's `run` export reads its script from argv).
            let types: Vec<_> = ty.params().collect();
            let params = if types.is_empty() {
                Vec::new()
            } else {
                parse::invoke_args(name, &types, &args.args)?
            };
            (
                Entry::Export {
                    name: name.clone(),
                    params,
                },
                std::iter::once(module_name).chain(args.args).collect(),
            )
        }
    };
    let invocation = Invocation {
        args: argv,
        env,
        dirs,
        stdin: Input::Inherit,
        stdout: Output::Inherit,
        stderr: Output::Inherit,
        entry,
        limits: None,
        context: Default::default(),
        gate: None,
        probe: None,
    };
    let outcome = match &sandbox {
        Some(sb) => {
            let outcome = sb.invoke(invocation);
            super::signals::wait_if_exiting();
            outcome?
        }
        None => function
            .as_ref()
            .expect("loaded in-process")
            .function
            .invoke(invocation)?,
    };
    let code = match &outcome.status {
        Status::Exited(code) => *code as u8,
        Status::Returned(_) => 0,
        Status::Trapped(_) => EXIT_TRAP,
        Status::LimitExceeded(_) => EXIT_LIMIT,
        Status::SandboxFailed(_) => super::EXIT_HOST_ERROR,
    };
    if args.timeout.is_some() {
        super::output::exit_after(super::output::FINAL_OUTPUT_GRACE, code);
    }
    if args.usage {
        eprintln(&outcome.usage_json().to_string());
    }
    match &outcome.status {
        Status::Exited(_) => {}
        Status::Returned(vals) => {
            for v in vals {
                println(&parse::show_val(v))?;
            }
        }
        Status::Trapped(msg) => eprintln(&format!("error: guest trapped: {msg}")),
        Status::LimitExceeded(limit) => eprintln(&format!("error: {limit}")),
        Status::SandboxFailed(msg) => eprintln(&format!("error: sandbox failed: {msg}")),
    }
    Ok(ExitCode::from(code))
}
