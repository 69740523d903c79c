//! The sandbox worker: a process of its own, already inside its cgroups and
//! hardened when it starts, that loads one function and runs the
//! invocations its supervisor sends, several at a time. A second `Load` of
//! another module is refused; a panic while handling a request is answered
//! as an error; a reply that cannot be sent ends the worker.

use crate::harden::WORKER_SOCKET_FD;
use crate::protocol::{
    Envelope, Request, Response, WireOutcome, WireStatus, recv, recv_fd, send, spin_until_readable,
};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use wasmlet_runtime::{Function, Limits, LoadOptions, Runtime, RuntimeConfig};

/// Threads running invocations; more requests than this wait their turn.
pub const WORKER_THREADS: usize = 4;

/// Processes and threads a worker runs at most, counted against the `pids`
/// limit: the main thread, [`WORKER_THREADS`], the epoch ticker,
/// wasmtime-wasi's tokio runtime (one worker thread, as the supervisor
/// sets `TOKIO_WORKER_THREADS`, and one blocking thread) and the thread
/// that reads an inherited stdin, plus the jail's first process, which
/// waits outside the worker's pid namespace. (No compile threads: the
/// supervisor turns parallel compilation off for workers.)
pub const WORKER_TASKS: u64 = 1 + WORKER_THREADS as u64 + 1 + 2 + 1 + 1;

/// What was loaded: the function, and what it was loaded from (to tell a
/// repeated `Load` from one of another module).
struct Loaded {
    key: LoadKey,
    function: Result<Function, String>,
}

/// What a function was loaded from: the module's bytes, or the artifact
/// (identified by its inode), and the options.
#[derive(PartialEq)]
enum Source {
    Module(Vec<u8>),
    Artifact(u64, u64),
}
type LoadKey = (Source, bool, Option<Limits>);

/// Entry point of a worker process (`wasmlet sandbox-worker`). Returns
/// when the supervisor closes the socket.
pub fn worker_main() -> Result<(), String> {
    // SAFETY: the supervisor put our end of a socket pair on this fd before
    // exec (harden::in_child) and nothing else in this process owns it.
    let mut stream = unsafe { UnixStream::from_raw_fd(WORKER_SOCKET_FD) };
    // One thread until the jail and the filter are in place: the first
    // message says what jail to build.
    let init =
        recv::<Envelope<Request>>(&mut stream).map_err(|e| format!("supervisor socket: {e}"))?;
    let Some(Envelope {
        id,
        body: Request::Init(spec),
        ..
    }) = init
    else {
        return Err("the supervisor did not start with Init".into());
    };
    let ready = crate::jail::enter(&spec)
        .map_err(|e| format!("cannot jail the worker: {e}"))
        .and_then(|_jailed| {
            crate::seccomp::install().map_err(|e| format!("cannot install seccomp filter: {e}"))
        });
    let body = match &ready {
        Ok(()) => Response::Ready,
        Err(e) => Response::Error(e.clone()),
    };
    send(
        &mut stream,
        &Envelope {
            id,
            cpu_ns: process_cpu_ns(),
            body,
        },
    )
    .map_err(|e| format!("cannot reply to supervisor: {e}"))?;
    ready?;
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = Arc::new(Mutex::new(stream));

    // Leader/followers: each thread in turn reads one request and handles it
    // itself, so an invocation is never handed from thread to thread.
    let reader = Arc::new(Mutex::new(reader));
    let loaded: Arc<Mutex<Option<Arc<Loaded>>>> = Arc::default();
    let mut threads = Vec::new();
    for i in 0..WORKER_THREADS {
        let (reader, loaded, writer) = (reader.clone(), loaded.clone(), writer.clone());
        match std::thread::Builder::new()
            .name(format!("wasmlet-worker-{i}"))
            .spawn(move || serve(&reader, &loaded, &writer))
        {
            Ok(t) => threads.push(t),
            // Fewer threads only means fewer invocations at once.
            Err(e) if !threads.is_empty() => {
                tracing::warn!("sandbox worker runs {i} threads, not {WORKER_THREADS}: {e}");
                break;
            }
            Err(e) => return Err(format!("cannot start a worker thread: {e}")),
        }
    }
    for t in threads {
        t.join()
            .map_err(|_| "worker thread panicked".to_string())??;
    }
    Ok(())
}

/// One worker thread: takes its turn reading a request, handles it, replies.
fn serve(
    reader: &Mutex<UnixStream>,
    loaded: &Mutex<Option<Arc<Loaded>>>,
    writer: &Mutex<UnixStream>,
) -> Result<(), String> {
    loop {
        let (msg, fd) = {
            let mut reader = reader.lock().unwrap_or_else(|p| p.into_inner());
            // (Data or not, the blocking read below waits for it.)
            let _ = spin_until_readable(&reader);
            let msg = recv::<Envelope<Request>>(&mut *reader)
                .map_err(|e| format!("supervisor socket: {e}"))?;
            // The artifact's fd follows its Load message: take it while
            // the socket is still ours.
            let fd = match &msg {
                Some(Envelope {
                    body: Request::Load { artifact: true, .. },
                    ..
                }) => Some(recv_fd(&reader).map_err(|e| format!("artifact fd: {e}"))?),
                _ => None,
            };
            (msg, fd)
        };
        let Some(Envelope { id, body, .. }) = msg else {
            return Ok(());
        };
        let body = std::panic::catch_unwind(AssertUnwindSafe(|| handle(body, fd, loaded)))
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Response::Error(format!("sandbox worker thread panicked: {msg}"))
            });
        let reply = Envelope {
            id,
            cpu_ns: process_cpu_ns(),
            body,
        };
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        // A supervisor that cannot be answered is gone or broken: end.
        send(&mut *w, &reply).map_err(|e| format!("cannot reply to supervisor: {e}"))?;
    }
}

fn handle(
    req: Request,
    fd: Option<std::os::fd::OwnedFd>,
    loaded: &Mutex<Option<Arc<Loaded>>>,
) -> Response {
    match req {
        Request::Init(_) => Response::Error("the worker is already jailed".into()),
        #[cfg(feature = "escape-tests")]
        Request::Escape(name) => Response::Escape(crate::escape::attempt(&name)),
        Request::Load {
            config,
            module,
            artifact: _,
            trap_unknown_imports,
            limits,
        } => {
            let mut slot = loaded.lock().unwrap_or_else(|p| p.into_inner());
            let file = fd.map(std::fs::File::from);
            let source = match &file {
                Some(f) => {
                    use std::os::unix::fs::MetadataExt;
                    match f.metadata() {
                        Ok(m) => Source::Artifact(m.dev(), m.ino()),
                        Err(e) => return Response::Error(format!("artifact: {e}")),
                    }
                }
                None => Source::Module(module),
            };
            let key = (source, trap_unknown_imports, limits);
            if let Some(l) = slot.as_ref() {
                return if l.key == key {
                    match &l.function {
                        Ok(_) => Response::Loaded,
                        Err(e) => Response::Error(e.clone()),
                    }
                } else {
                    Response::Error("this sandbox worker already runs another module".into())
                };
            }
            let function = load(*config, &key, file);
            let reply = match &function {
                Ok(_) => Response::Loaded,
                Err(e) => Response::Error(e.clone()),
            };
            *slot = Some(Arc::new(Loaded { key, function }));
            reply
        }
        Request::Invoke(wire) => {
            let l = loaded.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match l.as_ref().map(|l| &l.function) {
                Some(Ok(f)) => match f.invoke(wire.into_invocation()) {
                    Ok(o) => Response::Outcome(WireOutcome {
                        status: WireStatus::from_status(&o.status),
                        usage: o.usage,
                        stdout: o.stdout.map(|b| b.to_vec()),
                        stderr: o.stderr.map(|b| b.to_vec()),
                    }),
                    Err(e) => Response::Error(e.to_string()),
                },
                Some(Err(e)) => Response::Error(e.clone()),
                None => Response::Error("no function loaded".into()),
            }
        }
    }
}

fn load(
    config: RuntimeConfig,
    key: &LoadKey,
    artifact: Option<std::fs::File>,
) -> Result<Function, String> {
    let rt = Runtime::new(config).map_err(|e| e.to_string())?;
    let mut opts = LoadOptions {
        trap_unknown_imports: key.1,
        limits: key.2.clone(),
        snapshot: None,
        ..LoadOptions::default()
    };
    match (&key.0, artifact) {
        // Compiled by the supervisor (trusted: it is the more privileged
        // side), mapped from the same page-cache pages in every worker.
        (Source::Artifact(..), Some(file)) => {
            opts.allow_precompiled = true;
            rt.load_open_file(file, "sandbox artifact", &opts)
        }
        (Source::Module(bytes), _) => rt.load_bytes(bytes, &opts),
        (Source::Artifact(..), None) => return Err("artifact fd missing".into()),
    }
    .map_err(|e| e.to_string())
}

/// CPU time of this whole process so far, in ns.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writing into a valid local timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
