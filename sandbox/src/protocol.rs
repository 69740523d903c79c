//! Messages between a supervisor and its sandbox worker: length-prefixed
//! JSON over a Unix stream socket. Requests carry an id so several
//! invocations can be in flight at once; the worker answers each with the
//! same id, in whatever order they finish.

use crate::jail::JailSpec;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use wasmlet_runtime::{
    Entry, Input, Invocation, LimitExceeded, Limits, Output, Preopen, RuntimeConfig, Status, Usage,
};
use wasmtime::Val;

/// Largest message accepted: 1 GiB (a module or captured output).
const MAX_MESSAGE: u32 = 1 << 30;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// The first message: build this jail, then answer `Ready`.
    Init(JailSpec),
    /// Load the sandbox's function (once, before any invocation): from
    /// `module` (wasm or WAT, compiled by the worker), or, with `artifact`,
    /// from the compiled artifact whose read-only fd follows the message
    /// (SCM_RIGHTS), which the supervisor compiled or took from its cache.
    Load {
        config: Box<RuntimeConfig>,
        module: Vec<u8>,
        artifact: bool,
        trap_unknown_imports: bool,
        limits: Option<Limits>,
    },
    Invoke(WireInvocation),
    /// Make one escape attempt (see `escape.rs`) and report the result.
    #[cfg(feature = "escape-tests")]
    Escape(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    /// The jail is built and the seccomp filter installed.
    Ready,
    Loaded,
    Outcome(WireOutcome),
    /// The request failed on the host side (a load error, a bad invocation).
    Error(String),
    /// What an escape attempt got back.
    #[cfg(feature = "escape-tests")]
    Escape(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    pub id: u64,
    /// In replies: the worker's process CPU clock when it sent the reply,
    /// in ns (what a call that later dies was not responsible for). 0 in
    /// requests.
    pub cpu_ns: u64,
    pub body: T,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum WireOutput {
    Null,
    Capture,
    Inherit,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum WireVal {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireInvocation {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// (path in the worker, guest name, read-only)
    pub dirs: Vec<(std::path::PathBuf, String, bool)>,
    stdin: Option<Vec<u8>>,
    stdin_inherit: bool,
    stdout: WireOutput,
    stderr: WireOutput,
    entry: Option<(String, Vec<WireVal>)>,
    limits: Option<Limits>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireStatus {
    Exited(i32),
    Returned(Vec<WireVal>),
    Trapped(String),
    LimitExceeded(LimitExceeded),
    SandboxFailed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireOutcome {
    pub status: WireStatus,
    pub usage: Usage,
    pub stdout: Option<Vec<u8>>,
    pub stderr: Option<Vec<u8>>,
}

fn output(o: &Output) -> Result<WireOutput, String> {
    match o {
        Output::Null => Ok(WireOutput::Null),
        Output::Capture => Ok(WireOutput::Capture),
        Output::Inherit => Ok(WireOutput::Inherit),
        Output::File(_) => Err("a sandboxed invocation cannot write to a file handle".into()),
    }
}

fn to_wire(v: &Val) -> Result<WireVal, String> {
    Ok(match v {
        Val::I32(x) => WireVal::I32(*x),
        Val::I64(x) => WireVal::I64(*x),
        Val::F32(x) => WireVal::F32(*x),
        Val::F64(x) => WireVal::F64(*x),
        Val::V128(x) => WireVal::V128(x.as_u128()),
        other => return Err(format!("cannot pass {other:?} into a sandbox")),
    })
}

fn from_wire(v: WireVal) -> Val {
    match v {
        WireVal::I32(x) => Val::I32(x),
        WireVal::I64(x) => Val::I64(x),
        WireVal::F32(x) => Val::F32(x),
        WireVal::F64(x) => Val::F64(x),
        WireVal::V128(x) => Val::V128(x.into()),
    }
}

impl WireInvocation {
    pub(crate) fn from_invocation(inv: &Invocation) -> Result<Self, String> {
        let (stdin, stdin_inherit) = match &inv.stdin {
            Input::Null => (None, false),
            Input::Bytes(b) => (Some(b.to_vec()), false),
            Input::Inherit => (None, true),
            Input::File(_) => return Err("a sandboxed invocation cannot read a file handle".into()),
        };
        if !inv.context.is_empty() {
            return Err(
                "a sandboxed invocation cannot carry an embedder context (it does not cross into the worker process)"
                    .into(),
            );
        }
        if inv.gate.is_some() {
            return Err(
                "a sandboxed invocation cannot wait at a start gate (it runs in the worker process as soon as it is sent)"
                    .into(),
            );
        }
        let entry = match &inv.entry {
            Entry::Start => None,
            Entry::Export { name, params } => Some((
                name.clone(),
                params.iter().map(to_wire).collect::<Result<_, _>>()?,
            )),
        };
        Ok(WireInvocation {
            args: inv.args.clone(),
            env: inv.env.clone(),
            dirs: inv
                .dirs
                .iter()
                .map(|d| (d.host.clone(), d.guest.clone(), d.read_only))
                .collect(),
            stdin,
            stdin_inherit,
            stdout: output(&inv.stdout)?,
            stderr: output(&inv.stderr)?,
            entry,
            limits: inv.limits.clone(),
        })
    }

    pub(crate) fn into_invocation(self) -> Invocation {
        let out = |o| match o {
            WireOutput::Null => Output::Null,
            WireOutput::Capture => Output::Capture,
            WireOutput::Inherit => Output::Inherit,
        };
        Invocation {
            args: self.args,
            env: self.env,
            dirs: self
                .dirs
                .into_iter()
                .map(|(host, guest, read_only)| Preopen {
                    host,
                    guest,
                    read_only,
                })
                .collect(),
            stdin: match (self.stdin, self.stdin_inherit) {
                (_, true) => Input::Inherit,
                (Some(b), _) => Input::Bytes(b.into()),
                (None, _) => Input::Null,
            },
            stdout: out(self.stdout),
            stderr: out(self.stderr),
            entry: match self.entry {
                None => Entry::Start,
                Some((name, params)) => Entry::Export {
                    name,
                    params: params.into_iter().map(from_wire).collect(),
                },
            },
            limits: self.limits,
            context: Default::default(),
            gate: None,
            probe: None,
        }
    }
}

impl WireStatus {
    pub(crate) fn from_status(s: &Status) -> Self {
        match s {
            Status::Exited(c) => WireStatus::Exited(*c),
            Status::Returned(v) => match v.iter().map(to_wire).collect::<Result<Vec<_>, _>>() {
                Ok(v) => WireStatus::Returned(v),
                Err(e) => WireStatus::Trapped(e),
            },
            Status::Trapped(m) => WireStatus::Trapped(m.clone()),
            Status::LimitExceeded(l) => WireStatus::LimitExceeded(*l),
            Status::SandboxFailed(m) => WireStatus::SandboxFailed(m.clone()),
        }
    }

    pub(crate) fn into_status(self) -> Status {
        match self {
            WireStatus::Exited(c) => Status::Exited(c),
            WireStatus::Returned(v) => Status::Returned(v.into_iter().map(from_wire).collect()),
            WireStatus::Trapped(m) => Status::Trapped(m),
            WireStatus::LimitExceeded(l) => Status::LimitExceeded(l),
            WireStatus::SandboxFailed(m) => Status::SandboxFailed(m),
        }
    }
}

/// How long a waiting side polls before it sleeps. Waking a sleeping thread
/// costs tens of microseconds on a virtualized host (an idle vCPU halts and
/// must be kicked); a reply usually arrives within a few, so each side
/// polls this long first, then blocks.
const SPIN_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(100);

/// Polls `stream` until it has data (or is closed) or `SPIN_BEFORE_SLEEP`
/// passes; the blocking read that follows then finds the data at once.
/// True when it saw data (or the end), so the caller need not wait.
pub(crate) fn spin_until_readable(stream: &std::os::unix::net::UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let start = std::time::Instant::now();
    let mut byte = 0u8;
    loop {
        // SAFETY: recv(2) peeking one byte into a valid local buffer, without
        // blocking; it neither consumes data nor keeps the pointer.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            return true;
        }
        if start.elapsed() >= SPIN_BEFORE_SLEEP {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// One message as a frame (length, then JSON).
pub(crate) fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, msg).map_err(io::Error::other)?;
    let len = u32::try_from(frame.len() - 4)
        .ok()
        .filter(|l| *l <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::other("message too large"))?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Writes one message.
pub(crate) fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    w.write_all(&encode(msg)?)
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::other(format!("message of {len} bytes refused")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(io::Error::other)
}

/// Sends one fd (with one byte of data) over a Unix socket.
pub(crate) fn send_fd(
    stream: &std::os::unix::net::UnixStream,
    fd: std::os::fd::RawFd,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 8]; // aligned room for one cmsg with one int
    // SAFETY: msghdr is a plain C struct; all-zero is a valid start, and
    // every pointer set below points to a local that outlives sendmsg.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        if libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one fd sent by [`send_fd`].
pub(crate) fn recv_fd(stream: &std::os::unix::net::UnixStream) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 8];
    // SAFETY: as in send_fd; the kernel writes at most msg_controllen bytes
    // of control data into `space`, and the fd it installs is ours to own.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&space) as _;
        if libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) != 1 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::other("expected a file descriptor"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedder_context_does_not_cross_into_a_worker() {
        let inv = Invocation {
            context: wasmlet_runtime::Context::new().with(7u32),
            ..Default::default()
        };
        let err = WireInvocation::from_invocation(&inv).unwrap_err();
        assert!(err.contains("embedder context"), "{err}");
        assert!(WireInvocation::from_invocation(&Invocation::default()).is_ok());
    }

    #[test]
    fn a_start_gate_does_not_cross_into_a_worker() {
        let inv = Invocation {
            gate: Some(wasmlet_runtime::StartGate::new()),
            ..Default::default()
        };
        let err = WireInvocation::from_invocation(&inv).unwrap_err();
        assert!(err.contains("start gate"), "{err}");
    }
}
