//! The sandbox worker: a process of its own, already inside its cgroups and
//! hardened when it starts, that loads one function and runs the
//! invocations its supervisor sends, several at a time. (One function per
//! worker: a second `Load` is answered with the first one's result.)

use super::harden::{WORKER_SOCKET_FD, install_seccomp};
use super::protocol::{
    Envelope, Request, Response, WireOutcome, WireStatus, recv, send, spin_until_readable,
};
use crate::runtime::{LoadOptions, Runtime};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads running invocations; more requests than this wait their turn.
pub const WORKER_THREADS: usize = 4;

/// Entry point of a worker process (`wasmlet sandbox-worker`). Returns
/// when the supervisor closes the socket.
pub fn worker_main() -> Result<(), String> {
    // SAFETY: the supervisor put our end of a socket pair on this fd before
    // exec (harden::in_child) and nothing else in this process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(WORKER_SOCKET_FD) };
    install_seccomp().map_err(|e| format!("cannot install seccomp filter: {e}"))?;
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = Arc::new(Mutex::new(stream));
    let reply = move |w: &Mutex<UnixStream>, id, body| {
        let mut w = w.lock().expect("writer lock");
        // A supervisor that went away is noticed by the reader.
        let _ = send(&mut *w, &Envelope { id, body });
    };

    // Leader/followers: each thread in turn reads one request and handles it
    // itself, so an invocation is never handed from thread to thread.
    let reader = Arc::new(Mutex::new(reader));
    let function: Arc<OnceLock<Result<crate::Function, String>>> = Arc::default();
    let threads: Vec<_> = (0..WORKER_THREADS)
        .map(|_| {
            let (reader, function, writer) = (reader.clone(), function.clone(), writer.clone());
            std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let msg = {
                        let mut reader = reader.lock().expect("reader lock");
                        spin_until_readable(&reader);
                        recv::<Envelope<Request>>(&mut *reader)
                            .map_err(|e| format!("supervisor socket: {e}"))?
                    };
                    let Some(Envelope { id, body }) = msg else {
                        return Ok(());
                    };
                    let body = match body {
                        Request::Load {
                            config,
                            module,
                            trap_unknown_imports,
                            allow_precompiled,
                            limits,
                        } => {
                            let loaded = function.get_or_init(|| {
                                let rt = Runtime::new(*config).map_err(|e| e.to_string())?;
                                let opts = LoadOptions {
                                    trap_unknown_imports,
                                    limits,
                                    snapshot: None,
                                    allow_precompiled,
                                };
                                rt.load_bytes(&module, &opts).map_err(|e| e.to_string())
                            });
                            match loaded {
                                Ok(_) => Response::Loaded,
                                Err(e) => Response::Error(e.clone()),
                            }
                        }
                        Request::Invoke(wire) => match function.get() {
                            Some(Ok(f)) => match f.invoke(wire.into_invocation()) {
                                Ok(o) => Response::Outcome(WireOutcome {
                                    status: WireStatus::from_status(&o.status),
                                    usage: o.usage,
                                    stdout: o.stdout.map(|b| b.to_vec()),
                                    stderr: o.stderr.map(|b| b.to_vec()),
                                }),
                                Err(e) => Response::Error(e.to_string()),
                            },
                            _ => Response::Error("no function loaded".into()),
                        },
                    };
                    reply(&writer, id, body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "worker thread panicked".to_string())??;
    }
    Ok(())
}
