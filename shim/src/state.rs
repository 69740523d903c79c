//! The task state machine: the tasks of one shim process, by id, each
//! `Created → Running → Stopped`, then deleted. It decides what each
//! request may do in each state and which events containerd gets, in
//! order (`create`, `start`, then `oom`/`exit`, then `delete`); the work
//! itself is the [`Executor`]'s.

use crate::error::{Error, Result};
use crate::executor::{CreateSpec, Executor, Exit, Instance, Metrics, SignalAction, signal_action};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;
use wasmlet_oci::bundle::Resources;

/// An event for containerd.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The task was created.
    Create {
        /// Container id.
        id: String,
        /// Bundle.
        bundle: PathBuf,
        /// Pid.
        pid: u32,
    },
    /// The task started.
    Start {
        /// Container id.
        id: String,
        /// Pid.
        pid: u32,
    },
    /// The task ran out of memory (sent before its exit).
    Oom {
        /// Container id.
        id: String,
    },
    /// The task ended.
    Exit {
        /// Container id.
        id: String,
        /// Pid.
        pid: u32,
        /// Exit status.
        status: u32,
        /// When.
        at: SystemTime,
    },
    /// The task was deleted.
    Delete {
        /// Container id.
        id: String,
        /// Pid.
        pid: u32,
        /// Exit status.
        status: u32,
        /// When it ended.
        at: SystemTime,
    },
}

/// Where events go (containerd's event service; a list in tests).
pub trait EventSink: Send + Sync + 'static {
    /// Sends one event; failures are the sink's to log.
    fn publish(&self, event: Event);
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Prepared, not started.
    Created,
    /// Started, not ended.
    Running,
    /// Ended with this status at this time.
    Stopped {
        /// Exit status.
        status: u32,
        /// When.
        at: SystemTime,
    },
}

/// A task's state, as `State` reports it.
#[derive(Debug, Clone)]
pub struct TaskState {
    /// Container id.
    pub id: String,
    /// Bundle.
    pub bundle: PathBuf,
    /// Pid.
    pub pid: u32,
    /// Phase.
    pub phase: Phase,
    /// Stdio paths as given at create.
    pub stdin: String,
    /// See `stdin`.
    pub stdout: String,
    /// See `stdin`.
    pub stderr: String,
}

struct Task {
    id: String,
    spec: CreateSpec,
    instance: Box<dyn Instance>,
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Held while the task is being started and its `Start` event sent, and
    /// taken by the exit path before it sends `Exit`: so containerd never
    /// sees a task exit before it started.
    start_events: Mutex<()>,
}

/// The tasks of this shim process.
pub struct Tasks {
    executor: Arc<dyn Executor>,
    events: Arc<dyn EventSink>,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl Tasks {
    /// No tasks yet.
    pub fn new(executor: Arc<dyn Executor>, events: Arc<dyn EventSink>) -> Tasks {
        Tasks {
            executor,
            events,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Task>> {
        self.tasks
            .lock()
            .expect("tasks lock")
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))
    }

    /// Whether no task is left (the shim may exit).
    pub fn is_empty(&self) -> bool {
        self.tasks.lock().expect("tasks lock").is_empty()
    }

    /// Prepares a task; its pid.
    pub fn create(&self, spec: CreateSpec) -> Result<u32> {
        if spec.id.is_empty() {
            return Err(Error::InvalidArgument("a task needs an id".into()));
        }
        if self
            .tasks
            .lock()
            .expect("tasks lock")
            .contains_key(&spec.id)
        {
            return Err(Error::AlreadyExists(format!(
                "task {} already exists",
                spec.id
            )));
        }
        // Outside the lock: loading a module takes a while, and the other
        // containers of a pod are created at the same time.
        let instance = self.executor.create(&spec)?;
        let pid = instance.pid();
        let task = Arc::new(Task {
            id: spec.id.clone(),
            spec,
            instance,
            phase: Mutex::new(Phase::Created),
            changed: Condvar::new(),
            start_events: Mutex::new(()),
        });
        {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            if tasks.contains_key(&task.id) {
                drop(tasks);
                task.instance.cleanup();
                return Err(Error::AlreadyExists(format!(
                    "task {} already exists",
                    task.id
                )));
            }
            tasks.insert(task.id.clone(), task.clone());
        }
        self.events.publish(Event::Create {
            id: task.id.clone(),
            bundle: task.spec.bundle.clone(),
            pid,
        });
        Ok(pid)
    }

    /// Starts a created task; its pid.
    pub fn start(&self, id: &str) -> Result<u32> {
        let task = self.get(id)?;
        let _gate = task.start_events.lock().expect("start lock");
        {
            let mut phase = task.phase.lock().expect("phase lock");
            if *phase != Phase::Created {
                return Err(Error::FailedPrecondition(format!(
                    "task {id} cannot start: it is {}",
                    describe(&phase)
                )));
            }
            *phase = Phase::Running;
        }
        let weak = Arc::downgrade(&task);
        let events = self.events.clone();
        let on_exit = Box::new(move |exit: Exit| {
            if let Some(task) = weak.upgrade() {
                task.stopped(exit, &*events);
            }
        });
        match task.instance.start(on_exit) {
            Ok(pid) => {
                self.events.publish(Event::Start { id: id.into(), pid });
                Ok(pid)
            }
            Err(e) => {
                *task.phase.lock().expect("phase lock") = Phase::Created;
                Err(e)
            }
        }
    }

    /// A task's state.
    pub fn state(&self, id: &str) -> Result<TaskState> {
        let task = self.get(id)?;
        let phase = *task.phase.lock().expect("phase lock");
        Ok(TaskState {
            id: task.id.clone(),
            bundle: task.spec.bundle.clone(),
            pid: task.instance.pid(),
            phase,
            stdin: task.spec.stdin.clone(),
            stdout: task.spec.stdout.clone(),
            stderr: task.spec.stderr.clone(),
        })
    }

    /// Sends `signal` to a task (`all`: to all its processes, which for a
    /// wasm task is the same).
    pub fn kill(&self, id: &str, signal: u32, _all: bool) -> Result<()> {
        let task = self.get(id)?;
        let action = signal_action(signal)?;
        let phase = *task.phase.lock().expect("phase lock");
        match phase {
            Phase::Stopped { .. } => Err(Error::NotFound(format!(
                "task {id}: process already finished"
            ))),
            Phase::Created if action == SignalAction::Terminate => {
                // Never started: it ends here, as a process killed before
                // it ran would, and whatever it holds is let go (an in-shim
                // task's instance, made at its create).
                task.instance.kill(signal)?;
                task.stopped(
                    Exit {
                        status: 128 + signal,
                        oom: false,
                        at: None,
                    },
                    &*self.events,
                );
                Ok(())
            }
            Phase::Created => Ok(()),
            Phase::Running => task.instance.kill(signal),
        }
    }

    /// Waits until a task ends; its status and when.
    pub fn wait(&self, id: &str) -> Result<(u32, SystemTime)> {
        let task = self.get(id)?;
        let mut phase = task.phase.lock().expect("phase lock");
        loop {
            if let Phase::Stopped { status, at } = *phase {
                return Ok((status, at));
            }
            phase = task.changed.wait(phase).expect("phase lock");
        }
    }

    /// Deletes a task that is not running: (pid, exit status, exit time).
    pub fn delete(&self, id: &str) -> Result<(u32, u32, SystemTime)> {
        let task = self.get(id)?;
        let (status, at) = match *task.phase.lock().expect("phase lock") {
            Phase::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "task {id} is running: kill it first"
                )));
            }
            Phase::Created => (0, SystemTime::now()),
            Phase::Stopped { status, at } => (status, at),
        };
        if self.tasks.lock().expect("tasks lock").remove(id).is_none() {
            return Err(Error::NotFound(format!("task {id} not found")));
        }
        task.instance.cleanup();
        let pid = task.instance.pid();
        self.events.publish(Event::Delete {
            id: id.into(),
            pid,
            status,
            at,
        });
        Ok((pid, status, at))
    }

    /// The task's process ids.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let task = self.get(id)?;
        Ok(vec![task.instance.pid()])
    }

    /// Resource usage.
    pub fn stats(&self, id: &str) -> Result<Metrics> {
        self.get(id)?.instance.stats()
    }

    /// New resource limits.
    pub fn update(&self, id: &str, resources: &Resources) -> Result<()> {
        self.get(id)?.instance.update(resources)
    }

    /// Closes a task's stdin.
    pub fn close_io(&self, id: &str) -> Result<()> {
        self.get(id)?.instance.close_stdin();
        Ok(())
    }
}

impl Task {
    /// Records the end (once) and tells containerd, then the waiters: the
    /// Exit event is published before `wait` can return, so a Delete that
    /// follows a Wait never reaches containerd ahead of its Exit.
    fn stopped(&self, exit: Exit, events: &dyn EventSink) {
        let at = exit.at.unwrap_or_else(SystemTime::now);
        // After the Start event, if a start is still being reported.
        let _gate = self.start_events.lock().expect("start lock");
        let mut phase = self.phase.lock().expect("phase lock");
        if matches!(*phase, Phase::Stopped { .. }) {
            return;
        }
        *phase = Phase::Stopped {
            status: exit.status,
            at,
        };
        if exit.oom {
            events.publish(Event::Oom {
                id: self.id.clone(),
            });
        }
        events.publish(Event::Exit {
            id: self.id.clone(),
            pid: self.instance.pid(),
            status: exit.status,
            at,
        });
        drop(phase);
        self.changed.notify_all();
    }
}

fn describe(phase: &Phase) -> &'static str {
    match phase {
        Phase::Created => "created",
        Phase::Running => "running",
        Phase::Stopped { .. } => "stopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::OnExit;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Records events.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Event>>);
    impl EventSink for Recorder {
        fn publish(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }
    impl Recorder {
        fn kinds(&self) -> Vec<&'static str> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|e| match e {
                    Event::Create { .. } => "create",
                    Event::Start { .. } => "start",
                    Event::Oom { .. } => "oom",
                    Event::Exit { .. } => "exit",
                    Event::Delete { .. } => "delete",
                })
                .collect()
        }
    }

    /// A fake task: ends when told to, from another thread.
    #[derive(Default)]
    struct Fake {
        on_exit: Arc<Mutex<Option<OnExit>>>,
        cleaned: Arc<Mutex<u32>>,
        /// End on its own with this exit right after start.
        exit_at_once: Option<Exit>,
    }
    impl Instance for Fake {
        fn pid(&self) -> u32 {
            42
        }
        fn start(&self, on_exit: OnExit) -> Result<u32> {
            match self.exit_at_once {
                Some(exit) => {
                    std::thread::spawn(move || on_exit(exit));
                }
                None => *self.on_exit.lock().unwrap() = Some(on_exit),
            }
            Ok(42)
        }
        fn kill(&self, signal: u32) -> Result<()> {
            if signal_action(signal)? == SignalAction::Terminate
                && let Some(f) = self.on_exit.lock().unwrap().take()
            {
                std::thread::spawn(move || {
                    f(Exit {
                        status: 128 + signal,
                        oom: false,
                        at: None,
                    })
                });
            }
            Ok(())
        }
        fn stats(&self) -> Result<Metrics> {
            Ok(Metrics {
                type_url: "t".into(),
                value: vec![],
            })
        }
        fn update(&self, _: &Resources) -> Result<()> {
            Ok(())
        }
        fn close_stdin(&self) {}
        fn cleanup(&self) {
            *self.cleaned.lock().unwrap() += 1;
        }
    }

    struct FakeExecutor {
        exit_at_once: Option<Exit>,
        cleaned: Arc<Mutex<u32>>,
    }
    impl Executor for FakeExecutor {
        fn create(&self, spec: &CreateSpec) -> Result<Box<dyn Instance>> {
            if spec.id == "bad" {
                return Err(Error::InvalidArgument("bad bundle".into()));
            }
            Ok(Box::new(Fake {
                exit_at_once: self.exit_at_once,
                cleaned: self.cleaned.clone(),
                ..Default::default()
            }))
        }
    }

    fn tasks(exit_at_once: Option<Exit>) -> (Tasks, Arc<Recorder>, Arc<Mutex<u32>>) {
        let rec = Arc::new(Recorder::default());
        let cleaned = Arc::new(Mutex::new(0));
        let exec = Arc::new(FakeExecutor {
            exit_at_once,
            cleaned: cleaned.clone(),
        });
        (Tasks::new(exec, rec.clone()), rec, cleaned)
    }

    fn spec(id: &str) -> CreateSpec {
        CreateSpec {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_that_exits_on_its_own() {
        let (t, rec, cleaned) = tasks(Some(Exit {
            status: 3,
            oom: false,
            at: None,
        }));
        assert_eq!(t.create(spec("a")).unwrap(), 42);
        assert_eq!(t.state("a").unwrap().phase, Phase::Created);
        assert_eq!(t.start("a").unwrap(), 42);
        let (status, _) = t.wait("a").unwrap();
        assert_eq!(status, 3);
        // Killing a finished task is NotFound, as containerd expects.
        assert!(matches!(t.kill("a", 9, false), Err(Error::NotFound(_))));
        assert!(matches!(t.start("a"), Err(Error::FailedPrecondition(_))));
        let (pid, status, _) = t.delete("a").unwrap();
        assert_eq!((pid, status), (42, 3));
        assert_eq!(*cleaned.lock().unwrap(), 1);
        assert!(t.is_empty());
        assert!(matches!(t.state("a"), Err(Error::NotFound(_))));
        assert_eq!(rec.kinds(), ["create", "start", "exit", "delete"]);
    }

    #[test]
    fn an_exit_dated_by_its_executor_keeps_its_time() {
        let ended = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let (t, _, _) = tasks(Some(Exit {
            status: 0,
            oom: false,
            at: Some(ended),
        }));
        t.create(spec("a")).unwrap();
        t.start("a").unwrap();
        assert_eq!(t.wait("a").unwrap(), (0, ended));
    }

    #[test]
    fn kill_ends_a_running_task_and_delete_waits_for_it() {
        let (t, rec, _) = tasks(None);
        t.create(spec("a")).unwrap();
        assert!(matches!(t.create(spec("a")), Err(Error::AlreadyExists(_))));
        t.start("a").unwrap();
        assert!(matches!(t.delete("a"), Err(Error::FailedPrecondition(_))));
        // Ignored signals leave it running; stop signals are refused.
        t.kill("a", libc::SIGWINCH as u32, false).unwrap();
        assert!(matches!(
            t.kill("a", libc::SIGSTOP as u32, false),
            Err(Error::Unimplemented(_))
        ));
        assert_eq!(t.state("a").unwrap().phase, Phase::Running);
        t.kill("a", 15, true).unwrap();
        assert_eq!(t.wait("a").unwrap().0, 143);
        t.delete("a").unwrap();
        assert_eq!(rec.kinds(), ["create", "start", "exit", "delete"]);
    }

    #[test]
    fn killing_a_created_task_ends_it_without_starting() {
        let (t, rec, _) = tasks(None);
        t.create(spec("a")).unwrap();
        t.kill("a", 9, false).unwrap();
        assert_eq!(t.wait("a").unwrap().0, 137);
        assert!(matches!(t.start("a"), Err(Error::FailedPrecondition(_))));
        t.delete("a").unwrap();
        assert_eq!(rec.kinds(), ["create", "exit", "delete"]);
    }

    #[test]
    fn oom_is_reported_before_the_exit_and_waiters_all_wake() {
        let (t, rec, _) = tasks(None);
        t.create(spec("a")).unwrap();
        let t = Arc::new(t);
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let (t, tx) = (t.clone(), tx.clone());
            std::thread::spawn(move || tx.send(t.wait("a").unwrap().0).unwrap());
        }
        t.start("a").unwrap();
        // Ends it with an OOM exit through the instance's callback.
        let task = t.get("a").unwrap();
        task.stopped(
            Exit {
                status: 137,
                oom: true,
                at: None,
            },
            &*rec,
        );
        for _ in 0..3 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 137);
        }
        assert_eq!(rec.kinds(), ["create", "start", "oom", "exit"]);
    }

    #[test]
    fn unknown_tasks_and_failed_creates() {
        let (t, rec, _) = tasks(None);
        assert!(matches!(
            t.create(spec("bad")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(t.create(spec("")), Err(Error::InvalidArgument(_))));
        assert!(matches!(t.start("nope"), Err(Error::NotFound(_))));
        assert!(matches!(t.kill("nope", 9, false), Err(Error::NotFound(_))));
        assert!(matches!(t.delete("nope"), Err(Error::NotFound(_))));
        assert!(t.is_empty());
        assert!(rec.kinds().is_empty());
    }
}
