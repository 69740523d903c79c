//! The sandbox worker: a process of its own, already inside its cgroups and
//! hardened when it starts, that loads one function and runs the
//! invocations its supervisor sends, several at a time.

use super::harden::{WORKER_SOCKET_FD, install_seccomp};
use super::protocol::{Envelope, Request, Response, WireOutcome, WireStatus, recv, send};
use crate::runtime::{LoadOptions, Runtime};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, mpsc};

/// Threads running invocations; more requests than this wait their turn.
pub const WORKER_THREADS: usize = 4;

/// Entry point of a worker process (`wasmlet sandbox-worker`). Returns
/// when the supervisor closes the socket.
pub fn worker_main() -> Result<(), String> {
    // SAFETY: the supervisor put our end of a socket pair on this fd before
    // exec (harden::in_child) and nothing else in this process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(WORKER_SOCKET_FD) };
    install_seccomp().map_err(|e| format!("cannot install seccomp filter: {e}"))?;
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = Arc::new(Mutex::new(stream));
    let reply = move |w: &Mutex<UnixStream>, id, body| {
        let mut w = w.lock().expect("writer lock");
        // A supervisor that went away is noticed by the reader.
        let _ = send(&mut *w, &Envelope { id, body });
    };

    let (jobs_tx, jobs_rx) = mpsc::channel::<(u64, crate::Invocation)>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let function: Arc<Mutex<Option<crate::Function>>> = Arc::default();
    for _ in 0..WORKER_THREADS {
        let (jobs_rx, function, writer) = (jobs_rx.clone(), function.clone(), writer.clone());
        std::thread::spawn(move || {
            loop {
                let job = jobs_rx.lock().expect("jobs lock").recv();
                let Ok((id, inv)) = job else { return };
                let f = function.lock().expect("function lock").clone();
                let body = match f {
                    None => Response::Error("no function loaded".into()),
                    Some(f) => match f.invoke(inv) {
                        Ok(o) => Response::Outcome(WireOutcome {
                            status: WireStatus::from_status(&o.status),
                            usage: o.usage,
                            stdout: o.stdout.map(|b| b.to_vec()),
                            stderr: o.stderr.map(|b| b.to_vec()),
                        }),
                        Err(e) => Response::Error(e.to_string()),
                    },
                };
                reply(&writer, id, body);
            }
        });
    }

    let mut runtime: Option<Runtime> = None;
    while let Some(Envelope { id, body }) =
        recv::<Envelope<Request>>(&mut reader).map_err(|e| format!("supervisor socket: {e}"))?
    {
        match body {
            Request::Load {
                config,
                module,
                trap_unknown_imports,
                limits,
            } => {
                if runtime.is_none() {
                    match Runtime::new(*config) {
                        Ok(rt) => runtime = Some(rt),
                        Err(e) => {
                            reply(&writer, id, Response::Error(e.to_string()));
                            continue;
                        }
                    }
                }
                let result = runtime
                    .as_ref()
                    .map(|rt| {
                        rt.load_bytes(
                            &module,
                            &LoadOptions {
                                trap_unknown_imports,
                                limits,
                                snapshot: None,
                            },
                        )
                    })
                    .expect("runtime created above");
                let body = match result {
                    Ok(f) => {
                        *function.lock().expect("function lock") = Some(f);
                        Response::Loaded
                    }
                    Err(e) => Response::Error(e.to_string()),
                };
                reply(&writer, id, body);
            }
            Request::Invoke(wire) => {
                let _ = jobs_tx.send((id, wire.into_invocation()));
            }
        }
    }
    Ok(())
}
