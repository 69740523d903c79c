//! The WASI context of one invocation: exactly the args, environment,
//! directories and stdio it was given.
//!
//! Everything here can wait without holding a thread, so that a timeout or a
//! dropped invocation ends a guest blocked in WASI: `poll_oneoff` sleeps on
//! tokio's timer (wasmtime-wasi's blocking mode would `thread::sleep`),
//! stdio on host descriptors goes through [`crate::stdio`], and filesystem
//! calls run on tokio's blocking pool (the thread is not blocked; the call
//! itself runs to its end, see `Limits`).

use crate::config::Limits;
use crate::error::Error;
use crate::invocation::{Input, Invocation, Output};
use crate::stdio;
use std::os::fd::AsFd;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// A WASI context, with the pipes its captured stdout and stderr go to.
/// `C` is a preview-1 context for modules, a preview-2 one for components.
pub(crate) struct Wasi<C = WasiP1Ctx> {
    pub(crate) ctx: C,
    pub(crate) stdout: Option<MemoryOutputPipe>,
    pub(crate) stderr: Option<MemoryOutputPipe>,
}

impl<C> Wasi<C> {
    /// The same pipes around a store state built from the context.
    pub(crate) fn map<W>(self, f: impl FnOnce(C) -> W) -> Wasi<W> {
        Wasi {
            ctx: f(self.ctx),
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// Builds the preview-1 WASI context of `inv`. Must run inside a tokio
/// runtime (the host-descriptor streams register with its reactor).
pub(crate) fn build(inv: &Invocation, limits: &Limits) -> Result<Wasi, Error> {
    let mut w = builder(inv, limits)?;
    Ok(Wasi {
        ctx: w.ctx.build_p1(),
        stdout: w.stdout,
        stderr: w.stderr,
    })
}

/// The same context for a component (WASI preview 2).
pub(crate) fn build_p2(inv: &Invocation, limits: &Limits) -> Result<Wasi<WasiCtx>, Error> {
    let mut w = builder(inv, limits)?;
    Ok(Wasi {
        ctx: w.ctx.build(),
        stdout: w.stdout,
        stderr: w.stderr,
    })
}

fn builder(inv: &Invocation, limits: &Limits) -> Result<Wasi<WasiCtxBuilder>, Error> {
    let mut b = WasiCtxBuilder::new();
    b.allow_blocking_current_thread(false)
        .args(&inv.args)
        .envs(&inv.env);
    for dir in &inv.dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
            Error::Setup(format!(
                "cannot open directory {}: {e:#}",
                dir.host.display()
            ))
        })?;
    }
    fn setup(what: &'static str) -> impl Fn(std::io::Error) -> Error {
        move |e| Error::Setup(format!("{what}: {e}"))
    }
    match &inv.stdin {
        Input::Null => {}
        Input::Bytes(bytes) => {
            b.stdin(MemoryInputPipe::new(bytes.clone()));
        }
        Input::Inherit => {
            b.stdin(stdio::stdin(std::io::stdin().as_fd()).map_err(setup("stdin"))?);
        }
        Input::File(f) => {
            b.stdin(stdio::stdin(f.as_fd()).map_err(setup("stdin"))?);
        }
    }
    let capture = |out: &Output| {
        matches!(out, Output::Capture).then(|| MemoryOutputPipe::new(limits.max_captured_output))
    };
    let stdout = capture(&inv.stdout);
    let stderr = capture(&inv.stderr);
    match (&inv.stdout, &stdout) {
        (_, Some(pipe)) => {
            b.stdout(pipe.clone());
        }
        (Output::Inherit, _) => {
            b.stdout(stdio::output(std::io::stdout().as_fd()).map_err(setup("stdout"))?);
        }
        (Output::File(f), _) => {
            b.stdout(stdio::output(f.as_fd()).map_err(setup("stdout"))?);
        }
        _ => {}
    }
    match (&inv.stderr, &stderr) {
        (_, Some(pipe)) => {
            b.stderr(pipe.clone());
        }
        (Output::Inherit, _) => {
            b.stderr(stdio::output(std::io::stderr().as_fd()).map_err(setup("stderr"))?);
        }
        (Output::File(f), _) => {
            b.stderr(stdio::output(f.as_fd()).map_err(setup("stderr"))?);
        }
        _ => {}
    }
    Ok(Wasi {
        ctx: b,
        stdout,
        stderr,
    })
}
