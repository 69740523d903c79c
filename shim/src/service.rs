//! containerd's side: the shim's start/delete commands ([`WasmletShim`])
//! and the ttrpc task service ([`TaskService`]), which turns requests into
//! calls on the state machine and its events into containerd events.

use crate::error::Error;
use crate::executor::{CreateSpec, RootfsMount};
use crate::state::{Event, EventSink, Phase, Tasks};
use crate::wasm::WasmExecutor;
use containerd_shim::api;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskOOM, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim::events_ttrpc::EventsClient;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, TtrpcContext};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::convert_to_any;
use containerd_shim::{ExitSignal, Flags, Shim, StartOpts};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmlet.v1";
/// Version reported by `Connect`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The shim process: containerd runs it as `start` (spawn or reuse the
/// serving process of this pod), `delete` (clean up after a dead shim) or
/// as the server.
pub struct WasmletShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    /// The serving process's socket (`-socket`), removed when it shuts down.
    socket: String,
    /// containerd's address and the task's id (`-address`, `-id`): what the
    /// socket is named after, for `delete` after a shim died.
    containerd: String,
    id: String,
    /// The events queue, drained before the process exits.
    events: std::sync::OnceLock<Arc<Publisher>>,
}

impl Shim for WasmletShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        WasmletShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            containerd: args.address.clone(),
            id: args.id.clone(),
            events: std::sync::OnceLock::new(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim process per pod: containers with the same CRI sandbox
        // id share a socket (the spawned process finds it taken and just
        // reports its address); anything else gets its own.
        let grouping = grouping(&opts.id);
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // Where the serving process finds its address when it shuts down.
        containerd_shim::synchronous::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<api::DeleteResponse> {
        // After a shim died: its rootfs mount may be left (cwd is the bundle).
        let rootfs = std::ffi::CString::new("rootfs").expect("no NUL");
        // SAFETY: umount2(2) with a NUL-terminated path; failure is fine.
        unsafe { libc::umount2(rootfs.as_ptr(), libc::MNT_DETACH) };
        // containerd runs this after every disconnect, also when the shim
        // still serves other containers of the pod: its socket goes only
        // when nothing answers on it (a killed shim's).
        let address =
            containerd_shim::socket_address(&self.containerd, &self.namespace, &grouping(&self.id));
        if let Some(path) = address.strip_prefix("unix://")
            && std::os::unix::net::UnixStream::connect(path).is_err()
        {
            remove_socket(&address);
        }
        let mut resp = api::DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = MessageField::some(timestamp(SystemTime::now()));
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The last events (a task's exit and delete) reach containerd
        // before the process goes.
        if let Some(events) = self.events.get() {
            events.flush(EVENTS_FLUSH_TIMEOUT);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        crate::timing("task service");
        let executor = match WasmExecutor::new() {
            Ok(e) => Arc::new(e),
            Err(e) => {
                log::error!("{e}");
                std::process::exit(1);
            }
        };
        // The engine and its instance pool are built while containerd
        // connects and sends the first task (the first create waits for it).
        executor.warm_up();
        let events = Arc::new(Publisher::start(publisher, self.namespace.clone()));
        let _ = self.events.set(events.clone());
        TaskService {
            tasks: Tasks::new(executor, events),
            exit: self.exit.clone(),
            socket: self.socket.clone(),
        }
    }
}

/// What decides which shim process serves a container (run from its bundle
/// directory): containers with the same CRI sandbox id share one; anything
/// else gets its own.
fn grouping(id: &str) -> String {
    wasmlet_oci::bundle::Spec::load(Path::new("."))
        .ok()
        .and_then(|s| s.pod_sandbox_id().map(String::from))
        .unwrap_or_else(|| id.to_string())
}

/// Where containerd tells its shims its ttrpc address (the crate's
/// constant of the same name is private).
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// How long a shim that is shutting down waits for its last events to
/// reach containerd.
const EVENTS_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long the events thread holds a create or start event back while
/// containerd is busy with the requests that follow it (see [`forward_in_order`]).
const EVENTS_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Sends events to containerd, in order, from a thread of its own: a
/// request (create, start, delete) does not wait for containerd to take
/// its event (a ttrpc round trip of about a millisecond), nor does the
/// thread that reports a task's exit. Each event's envelope carries the
/// time it happened (was queued), not the time the thread got to it after
/// the round trips of the events before it, as containerd's own shims
/// stamp theirs (their publisher queues without waiting).
struct Publisher {
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<(SystemTime, Event)>>>,
    /// Set once the thread has sent everything queued before `flush`.
    done: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Publisher {
    fn start(remote: RemotePublisher, namespace: String) -> Publisher {
        let (tx, rx) = std::sync::mpsc::channel::<(SystemTime, Event)>();
        let done = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let finished = done.clone();
        // Its own connection to containerd's event service, to set each
        // envelope's time (the crate's publisher stamps the time of
        // sending); without one, the crate's publisher.
        let own = std::env::var(TTRPC_ADDRESS)
            .ok()
            .and_then(|a| ttrpc::Client::connect(&format!("unix://{a}")).ok())
            .map(EventsClient::new);
        let sender = Sender {
            remote,
            own,
            namespace,
        };
        let spawned = std::thread::Builder::new()
            .name("wasmlet-events".into())
            .spawn(move || {
                forward_in_order(&rx, EVENTS_LINGER, |at, event| sender.send(at, event));
                *finished.0.lock().expect("events lock") = true;
                finished.1.notify_all();
            });
        if let Err(e) = spawned {
            // Without the thread, events would never be sent: say so loudly.
            log::error!("cannot start the events thread: {e}");
            std::process::exit(1);
        }
        Publisher {
            queue: std::sync::Mutex::new(Some(tx)),
            done,
        }
    }

    /// Closes the queue and waits (at most `timeout`) until all of it is sent.
    fn flush(&self, timeout: std::time::Duration) {
        drop(self.queue.lock().expect("events lock").take());
        let (lock, cv) = &*self.done;
        let sent = lock.lock().expect("events lock");
        let (sent, _) = cv
            .wait_timeout_while(sent, timeout, |sent| !*sent)
            .expect("events lock");
        if !*sent {
            log::warn!("events not all sent to containerd after {timeout:?}");
        }
    }
}

impl EventSink for Publisher {
    fn publish(&self, event: Event) {
        if let Some(tx) = &*self.queue.lock().expect("events lock") {
            let _ = tx.send((SystemTime::now(), event));
        }
    }
}

/// Hands what is queued to `send`, in order, until the queue closes. A
/// create or start event is held back for at most `linger`, or until an
/// exit or delete comes, so containerd forwards it after it has answered
/// the request and passed on the next one (ctr's Wait and Start follow a
/// create at once: holding the create event took the median from our
/// create's end to ctr's start request from 1.13 to 0.56 ms here); an exit
/// or delete goes at once, after whatever is held. Held or not, an
/// envelope carries the time its event was queued.
fn forward_in_order(
    rx: &std::sync::mpsc::Receiver<(SystemTime, Event)>,
    linger: std::time::Duration,
    mut send: impl FnMut(SystemTime, Event),
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut held = Vec::new();
    // When the oldest event held must go.
    let mut due = std::time::Instant::now();
    loop {
        let next = if held.is_empty() {
            rx.recv().ok()
        } else {
            match rx.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                Ok(next) => Some(next),
                Err(RecvTimeoutError::Timeout) => {
                    for (at, event) in held.drain(..) {
                        send(at, event);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            }
        };
        let Some((at, event)) = next else { break };
        if matches!(event, Event::Create { .. } | Event::Start { .. }) {
            if held.is_empty() {
                due = std::time::Instant::now() + linger;
            }
            held.push((at, event));
            continue;
        }
        for (at, event) in held.drain(..) {
            send(at, event);
        }
        send(at, event);
    }
    for (at, event) in held {
        send(at, event);
    }
}

/// The events thread's end: containerd's event service.
struct Sender {
    remote: RemotePublisher,
    own: Option<EventsClient>,
    namespace: String,
}

impl Sender {
    fn send(&self, at: SystemTime, event: Event) {
        let (topic, msg): (&str, Box<dyn MessageDyn>) = match event {
            Event::Create { id, bundle, pid } => {
                let mut e = TaskCreate::new();
                e.container_id = id;
                e.bundle = bundle.to_string_lossy().into_owned();
                e.pid = pid;
                (topics::TASK_CREATE_EVENT_TOPIC, Box::new(e))
            }
            Event::Start { id, pid } => {
                let mut e = TaskStart::new();
                e.container_id = id;
                e.pid = pid;
                (topics::TASK_START_EVENT_TOPIC, Box::new(e))
            }
            Event::Oom { id } => {
                let mut e = TaskOOM::new();
                e.container_id = id;
                (topics::TASK_OOM_EVENT_TOPIC, Box::new(e))
            }
            Event::Exit {
                id,
                pid,
                status,
                at,
            } => {
                let mut e = TaskExit::new();
                e.id = id.clone();
                e.container_id = id;
                e.pid = pid;
                e.exit_status = status;
                e.exited_at = MessageField::some(timestamp(at));
                (topics::TASK_EXIT_EVENT_TOPIC, Box::new(e))
            }
            Event::Delete {
                id,
                pid,
                status,
                at,
            } => {
                let mut e = TaskDelete::new();
                e.container_id = id;
                e.pid = pid;
                e.exit_status = status;
                e.exited_at = MessageField::some(timestamp(at));
                (topics::TASK_DELETE_EVENT_TOPIC, Box::new(e))
            }
        };
        crate::timing(topic);
        if let Some(client) = &self.own {
            match self.forward(client, at, topic, msg.clone_box()) {
                Ok(()) => return,
                Err(e) => log::warn!("publishing {topic} (own connection): {e}; retrying"),
            }
        }
        // Without a connection of its own (or when it failed), the crate's
        // publisher, which stamps the time of sending.
        let sent = self.remote.publish(
            ttrpc::context::Context::default(),
            topic,
            &self.namespace,
            msg,
        );
        if let Err(e) = sent {
            log::warn!("publishing {topic}: {e}");
        }
    }

    /// What the crate's publisher sends, with the envelope stamped `at`.
    fn forward(
        &self,
        client: &EventsClient,
        at: SystemTime,
        topic: &str,
        msg: Box<dyn MessageDyn>,
    ) -> Result<(), String> {
        let mut envelope = Envelope::new();
        envelope.set_topic(topic.to_owned());
        envelope.set_namespace(self.namespace.clone());
        envelope.timestamp = MessageField::some(timestamp(at));
        envelope.event = MessageField::some(convert_to_any(msg).map_err(|e| e.to_string())?);
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(envelope);
        client
            .forward(ttrpc::context::Context::default(), &req)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// The ttrpc task service.
pub struct TaskService {
    tasks: Tasks,
    exit: Arc<ExitSignal>,
    /// This process's socket (see [`remove_socket`]).
    socket: String,
}

/// Removes the serving process's socket file (`unix://PATH`), as
/// containerd's own shims do in Shutdown, before they answer it. The crate
/// would remove it only after the server stops, finding its path in the
/// bundle directory's `address` file, which containerd has often deleted
/// by then: the socket stayed in `/run/containerd/s` (an outside tester
/// found one left for 8 of 30 tasks run at once). Listening goes on
/// through the open socket; only the name goes.
fn remove_socket(address: &str) {
    if let Some(path) = address.strip_prefix("unix://")
        && let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("removing the shim's socket {path}: {e}");
    }
}

/// Only the init process exists: any exec id names nothing.
fn no_exec(exec_id: &str) -> Result<(), Error> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "exec process {exec_id} not found (exec is not supported by wasmlet)"
        )))
    }
}

type TtrpcResult<T> = ttrpc::Result<T>;

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if req.terminal {
            return Err(Error::InvalidArgument(
                "a terminal (tty) is not supported by wasmlet: run without -t".into(),
            )
            .into());
        }
        if !req.checkpoint.is_empty() {
            return Err(
                Error::Unimplemented("checkpoints are not supported by wasmlet".into()).into(),
            );
        }
        let spec = CreateSpec {
            id: req.id.clone(),
            bundle: req.bundle.clone().into(),
            rootfs: req
                .rootfs
                .iter()
                .map(|m| RootfsMount {
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        crate::timing("create request");
        let pid = self.tasks.create(spec)?;
        crate::timing("create done");
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        no_exec(&req.exec_id)?;
        crate::timing("start request");
        let pid = self.tasks.start(&req.id)?;
        crate::timing("start done");
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        no_exec(&req.exec_id)?;
        let s = self.tasks.state(&req.id)?;
        let mut resp = api::StateResponse::new();
        resp.id = s.id;
        resp.bundle = s.bundle.to_string_lossy().into_owned();
        resp.pid = s.pid;
        resp.stdin = s.stdin;
        resp.stdout = s.stdout;
        resp.stderr = s.stderr;
        match s.phase {
            Phase::Created => resp.status = api::Status::CREATED.into(),
            Phase::Running => resp.status = api::Status::RUNNING.into(),
            Phase::Stopped { status, at } => {
                resp.status = api::Status::STOPPED.into();
                resp.exit_status = status;
                resp.exited_at = MessageField::some(timestamp(at));
            }
        }
        Ok(resp)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        no_exec(&req.exec_id)?;
        self.tasks.kill(&req.id, req.signal, req.all)?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        no_exec(&req.exec_id)?;
        let (status, at) = self.tasks.wait(&req.id)?;
        let mut resp = api::WaitResponse::new();
        resp.exit_status = status;
        resp.exited_at = MessageField::some(timestamp(at));
        Ok(resp)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        no_exec(&req.exec_id)?;
        crate::timing("delete request");
        let (pid, status, at) = self.tasks.delete(&req.id)?;
        let mut resp = api::DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = status;
        resp.exited_at = MessageField::some(timestamp(at));
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let mut resp = api::PidsResponse::new();
        for pid in self.tasks.pids(&req.id)? {
            let mut p = containerd_shim::protos::types::task::ProcessInfo::new();
            p.pid = pid;
            resp.processes.push(p);
        }
        Ok(resp)
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let m = self.tasks.stats(&req.id)?;
        let mut any = Any::new();
        any.type_url = m.type_url;
        any.value = m.value;
        let mut resp = api::StatsResponse::new();
        resp.stats = MessageField::some(any);
        Ok(resp)
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        // containerd sends the runtime spec's LinuxResources as JSON.
        let resources: wasmlet_oci::bundle::Resources = match req.resources.as_ref() {
            Some(any) if !any.value.is_empty() => {
                serde_json::from_slice(&any.value).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "update: resources are not LinuxResources JSON: {e}"
                    ))
                })?
            }
            _ => Default::default(),
        };
        self.tasks.update(&req.id, &resources)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        no_exec(&req.exec_id)?;
        self.tasks.close_io(&req.id)?;
        Ok(api::Empty::new())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self.tasks.state(&req.id).map(|s| s.pid).unwrap_or(0);
        resp.version = VERSION.into();
        Ok(resp)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // The pod's other containers may still run here.
        if self.tasks.is_empty() {
            remove_socket(&self.socket);
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented(
            "exec is not supported by wasmlet: a wasm task has one process and no shell".into(),
        )
        .into())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("a terminal (pty) is not supported by wasmlet".into()).into())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("pause is not supported by wasmlet".into()).into())
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("resume is not supported by wasmlet".into()).into())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("checkpoints are not supported by wasmlet".into()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    fn name(e: &Event) -> &'static str {
        match e {
            Event::Create { .. } => "create",
            Event::Start { .. } => "start",
            Event::Oom { .. } => "oom",
            Event::Exit { .. } => "exit",
            Event::Delete { .. } => "delete",
        }
    }

    fn create() -> Event {
        Event::Create {
            id: "t".into(),
            bundle: "/b".into(),
            pid: 1,
        }
    }

    fn start() -> Event {
        Event::Start {
            id: "t".into(),
            pid: 1,
        }
    }

    fn exit() -> Event {
        Event::Exit {
            id: "t".into(),
            pid: 1,
            status: 0,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn held_events_go_in_order_before_an_exit_with_their_own_stamps() {
        let (tx, rx) = channel();
        let stamps: Vec<SystemTime> = (0..3)
            .map(|i| SystemTime::UNIX_EPOCH + Duration::from_secs(i))
            .collect();
        tx.send((stamps[0], create())).unwrap();
        tx.send((stamps[1], start())).unwrap();
        tx.send((stamps[2], exit())).unwrap();
        drop(tx);
        let mut sent = Vec::new();
        // A linger far longer than the test: only the exit can release them.
        forward_in_order(&rx, Duration::from_secs(60), |at, e| {
            sent.push((at, name(&e)))
        });
        assert_eq!(
            sent,
            vec![
                (stamps[0], "create"),
                (stamps[1], "start"),
                (stamps[2], "exit")
            ]
        );
    }

    #[test]
    fn a_held_event_goes_after_the_linger_while_the_queue_stays_open() {
        let (tx, rx) = channel();
        let (sent_tx, sent_rx) = channel();
        let thread = std::thread::spawn(move || {
            forward_in_order(&rx, Duration::from_millis(50), |_, e| {
                sent_tx.send((Instant::now(), name(&e))).unwrap()
            })
        });
        let queued = Instant::now();
        tx.send((SystemTime::now(), create())).unwrap();
        let (at, what) = sent_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(what, "create");
        assert!(
            at >= queued + Duration::from_millis(50),
            "sent before its linger"
        );
        // Another start alone is held (and sent) the same way.
        tx.send((SystemTime::now(), start())).unwrap();
        assert_eq!(
            sent_rx.recv_timeout(Duration::from_secs(10)).unwrap().1,
            "start"
        );
        drop(tx);
        thread.join().unwrap();
    }

    #[test]
    fn a_closing_queue_sends_what_is_held() {
        let (tx, rx) = channel();
        tx.send((SystemTime::now(), create())).unwrap();
        drop(tx);
        let mut sent = Vec::new();
        forward_in_order(&rx, Duration::from_secs(60), |_, e| sent.push(name(&e)));
        assert_eq!(sent, vec!["create"]);
    }
}
