//! The schedule trigger: a cron expression (the `croner` crate; seconds and
//! year optional) in a time zone (`chrono-tz`), or a fixed interval.
//!
//! ```text
//!  start ─▶ read state (last time handled) ─▶ missed = run_once and a time
//!      fell due since then? fire it once ─▶ write state (now)
//!  loop: sleep until the next time (in slices, re-reading the clock, so a
//!      clock step is noticed) ─▶ fire by the overlap policy ─▶ write state
//! ```
//!
//! The state file (`STATE_DIR/schedule-FUNCTION-TRIGGER.json`) holds the
//! last scheduled time handled (fired, skipped or queued), written
//! atomically (temporary file, fsync, rename). Times that fell due while
//! the server was down are those after it: with `missed = "run_once"` the
//! latest of them runs once at start-up; with `skip` none do.
//!
//! The loop is written against a [`Clock`] and a runner so that tests drive
//! it on tokio's paused clock, where hours pass in milliseconds.

use super::{Ctx, Event, invoke};
use crate::manifest::{Missed, Overlap, ScheduleSpec, When};
use chrono::{DateTime, SecondsFormat, Utc};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Longest single sleep; the clock is read again after it.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Where the time comes from.
pub(crate) trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Parses a cron expression: seconds and year optional, and the `N/step`
/// form (`5/15`, from 5 every 15) accepted as croner 3 did.
pub(crate) fn parse_cron(c: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .sloppy_ranges(true)
        .build()
        .parse(c)
}

/// A schedule made computable.
pub(crate) struct Plan {
    when: PlanWhen,
    tz: chrono_tz::Tz,
}

enum PlanWhen {
    Cron(Box<croner::Cron>),
    Every(chrono::Duration),
}

impl Plan {
    /// From a checked spec (the cron expression was parsed at load).
    pub(crate) fn new(spec: &ScheduleSpec) -> Result<Plan, String> {
        let when = match &spec.when {
            When::Cron(c) => PlanWhen::Cron(Box::new(
                parse_cron(c).map_err(|e| format!("cron `{c}`: {e}"))?,
            )),
            When::Every(d) => {
                PlanWhen::Every(chrono::Duration::from_std(*d).map_err(|e| format!("every: {e}"))?)
            }
        };
        Ok(Plan {
            when,
            tz: spec.timezone,
        })
    }

    /// The first time strictly after `t`; `None` when there is none.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            PlanWhen::Cron(c) => c
                .find_next_occurrence(&t.with_timezone(&self.tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            PlanWhen::Every(d) => Some(t + *d),
        }
    }

    /// The latest time after `last` and at or before `now`, if any: for an
    /// interval, counted from `last`.
    pub(crate) fn latest_between(
        &self,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let t = match &self.when {
            PlanWhen::Cron(c) => c
                .find_previous_occurrence(&now.with_timezone(&self.tz), true)
                .ok()?
                .with_timezone(&Utc),
            PlanWhen::Every(d) => {
                let n = (now - last).num_nanoseconds()? / d.num_nanoseconds()?.max(1);
                last + *d * i32::try_from(n).ok()?
            }
        };
        (t > last && t <= now).then_some(t)
    }
}

/// The state file of one schedule trigger.
pub(crate) struct StateFile {
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    /// The last scheduled time handled, RFC 3339.
    last: String,
}

impl StateFile {
    pub(crate) fn new(dir: &Path, function: &str, trigger: &str) -> StateFile {
        StateFile {
            path: dir.join(format!("schedule-{function}-{trigger}.json")),
        }
    }

    /// The last time handled; `None` on first start (or an unreadable
    /// file, which is logged).
    pub(crate) fn read(&self) -> Option<DateTime<Utc>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("schedule state {}: {e}", self.path.display());
                return None;
            }
        };
        let parsed = serde_json::from_str::<State>(&text)
            .map_err(|e| e.to_string())
            .and_then(|s| DateTime::parse_from_rfc3339(&s.last).map_err(|e| e.to_string()));
        match parsed {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                tracing::warn!(
                    "schedule state {}: {e}; starting afresh",
                    self.path.display()
                );
                None
            }
        }
    }

    /// Records `t` as handled.
    pub(crate) fn write(&self, t: DateTime<Utc>) {
        let state = State {
            last: t.to_rfc3339_opts(SecondsFormat::Nanos, true),
        };
        let json = serde_json::to_vec(&state).unwrap_or_default();
        if let Err(e) = write_atomic(&self.path, &json) {
            tracing::error!("cannot write schedule state {}: {e}", self.path.display());
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, then renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Runs the function for a scheduled time.
pub(crate) type Runner =
    Arc<dyn Fn(DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Overlap bookkeeping: runs in progress, the one waiting (`queue_one`).
#[derive(Default)]
struct Running {
    count: u32,
    pending: Option<DateTime<Utc>>,
}

/// One schedule, ready to drive.
pub(crate) struct Driver {
    pub plan: Plan,
    pub overlap: Overlap,
    pub missed: Missed,
    pub clock: Arc<dyn Clock>,
    pub state: StateFile,
    pub runner: Runner,
    /// Names the schedule in the log.
    pub label: String,
}

impl Driver {
    /// Drives the schedule until `stop`: fires the runner at each time, by
    /// the overlap policy, and waits for the runs in progress before
    /// returning.
    pub(crate) async fn drive(self, mut stop: watch::Receiver<bool>) {
        let Driver {
            plan,
            overlap,
            missed,
            clock,
            state,
            runner,
            label,
        } = self;
        let running = Arc::new(Mutex::new(Running::default()));
        let mut runs = JoinSet::new();
        let now = clock.now();
        let mut prev = now;
        if let Some(last) = state.read()
            && let Some(due) = plan.latest_between(last, now)
        {
            match missed {
                Missed::RunOnce => {
                    tracing::info!("{label}: missed runs while down; running once for {due}");
                    fire(overlap, &running, &mut runs, &runner, due);
                }
                Missed::Skip => tracing::info!("{label}: skipping runs missed while down"),
            }
            if matches!(plan.when, PlanWhen::Every(_)) {
                prev = due;
            }
        }
        state.write(now);
        'outer: loop {
            let Some(mut next) = plan.next_after(prev) else {
                tracing::info!("{label}: no later time matches; the schedule is over");
                break;
            };
            loop {
                while runs.try_join_next().is_some() {}
                let now = clock.now();
                if now >= next {
                    break;
                }
                let wait = (next - now).to_std().unwrap_or_default().min(MAX_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break 'outer,
                }
            }
            if *stop.borrow() {
                break;
            }
            fire(overlap, &running, &mut runs, &runner, next);
            state.write(next);
            // Far behind (the machine slept, the clock stepped): go on from
            // now, not through every time passed.
            let now = clock.now();
            if let Some(latest) = plan.latest_between(next, now) {
                tracing::warn!("{label}: behind schedule; skipping to {latest}");
                next = latest;
            }
            prev = next;
        }
        while runs.join_next().await.is_some() {}
    }
}

fn fire(
    overlap: Overlap,
    running: &Arc<Mutex<Running>>,
    runs: &mut JoinSet<()>,
    runner: &Runner,
    at: DateTime<Utc>,
) {
    let mut r = running.lock().unwrap_or_else(|e| e.into_inner());
    if r.count > 0 {
        match overlap {
            Overlap::Skip => {
                tracing::info!("schedule: skipping the run for {at}: the previous one still runs");
                return;
            }
            Overlap::QueueOne => {
                if let Some(old) = r.pending.replace(at) {
                    tracing::info!("schedule: dropping the queued run for {old}: {at} replaces it");
                }
                return;
            }
            Overlap::Allow => {}
        }
    }
    r.count += 1;
    drop(r);
    let running = running.clone();
    let runner = runner.clone();
    runs.spawn(async move {
        let mut at = at;
        loop {
            runner(at).await;
            let mut r = running.lock().unwrap_or_else(|e| e.into_inner());
            match r.pending.take() {
                Some(p) => at = p,
                None => {
                    r.count -= 1;
                    break;
                }
            }
        }
    });
}

/// The trigger task: drives the schedule, each run an invocation with
/// `WASMLET_SCHEDULED_TIME`.
pub(crate) async fn run(ctx: Ctx, spec: ScheduleSpec, state_dir: PathBuf) {
    let label = format!("function `{}` trigger `{}`", ctx.function, ctx.trigger);
    let plan = match Plan::new(&spec) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{label}: {e}");
            return;
        }
    };
    let state = StateFile::new(&state_dir, &ctx.function, &ctx.trigger);
    let tz = spec.timezone;
    let c = ctx.clone();
    let runner: Runner = Arc::new(move |at: DateTime<Utc>| {
        let ctx = c.clone();
        Box::pin(async move {
            let when = at
                .with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            let mut fields = serde_json::Map::new();
            fields.insert("scheduled_time".into(), when.clone().into());
            let event = Event {
                env: vec![("WASMLET_SCHEDULED_TIME".into(), when)],
                stdin: bytes::Bytes::new(),
                fields,
            };
            // The outcome is in the usage line and the log.
            let _ = invoke(&ctx, event).await;
        }) as Pin<Box<dyn Future<Output = ()> + Send>>
    });
    let driver = Driver {
        plan,
        overlap: spec.overlap,
        missed: spec.missed,
        clock: Arc::new(SystemClock),
        state,
        runner,
        label,
    };
    driver.drive(ctx.stop.clone()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// tokio's paused clock as wall time: `base` plus the time tokio says
    /// has passed (which auto-advances whenever every task sleeps).
    struct Fake {
        base: DateTime<Utc>,
        start: tokio::time::Instant,
    }

    impl Clock for Fake {
        fn now(&self) -> DateTime<Utc> {
            self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap()
        }
    }

    fn spec(when: When, tz: &str, overlap: Overlap, missed: Missed) -> ScheduleSpec {
        ScheduleSpec {
            name: "s".into(),
            when,
            timezone: tz.parse().unwrap(),
            overlap,
            missed,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_in_a_time_zone_and_intervals() {
        // 09:00 in Paris on a winter day is 08:00 UTC.
        let p = Plan::new(&spec(
            When::Cron("0 9 * * *".into()),
            "Europe/Paris",
            Overlap::Skip,
            Missed::Skip,
        ))
        .unwrap();
        assert_eq!(
            p.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T08:00:00Z"))
        );
        // Seconds are optional: six fields.
        let p = Plan::new(&spec(
            When::Cron("*/15 * * * * *".into()),
            "UTC",
            Overlap::Skip,
            Missed::Skip,
        ))
        .unwrap();
        assert_eq!(
            p.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-10T12:00:15Z"))
        );
        let p = Plan::new(&spec(
            When::Every(Duration::from_secs(30)),
            "UTC",
            Overlap::Skip,
            Missed::Skip,
        ))
        .unwrap();
        assert_eq!(
            p.latest_between(at("2026-01-10T12:00:00Z"), at("2026-01-10T12:01:10Z")),
            Some(at("2026-01-10T12:01:00Z"))
        );
        assert_eq!(
            p.latest_between(at("2026-01-10T12:00:00Z"), at("2026-01-10T12:00:10Z")),
            None
        );
    }

    /// Drives a schedule for `hours` of fake time with runs lasting `run`;
    /// returns the scheduled times run.
    async fn simulate(
        s: ScheduleSpec,
        state: &Path,
        base: DateTime<Utc>,
        run: Duration,
        span: Duration,
    ) -> Vec<DateTime<Utc>> {
        let clock = Arc::new(Fake {
            base,
            start: tokio::time::Instant::now(),
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicU32::new(0));
        let max_active = Arc::new(AtomicU32::new(0));
        let (seen2, active2, max2) = (seen.clone(), active.clone(), max_active.clone());
        let runner: Runner = Arc::new(move |t| {
            let (seen, active, max) = (seen2.clone(), active2.clone(), max2.clone());
            Box::pin(async move {
                seen.lock().unwrap().push(t);
                let n = active.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(run).await;
                active.fetch_sub(1, Ordering::SeqCst);
            }) as Pin<Box<dyn Future<Output = ()> + Send>>
        });
        let (tx, rx) = watch::channel(false);
        let driver = Driver {
            plan: Plan::new(&s).unwrap(),
            overlap: s.overlap,
            missed: s.missed,
            clock,
            state: StateFile::new(state, "f", "s"),
            runner,
            label: "test".into(),
        };
        let task = tokio::spawn(driver.drive(rx));
        tokio::time::sleep(span).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        if s.overlap != Overlap::Allow {
            assert!(max_active.load(Ordering::SeqCst) <= 1);
        }
        seen.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_day_of_minutes_in_no_time_and_overlap_policies() {
        let dir = tempfile::tempdir().unwrap();
        let base = at("2026-03-01T00:00:30Z");
        let every_minute = |o| spec(When::Cron("0 * * * * *".into()), "UTC", o, Missed::Skip);
        // A day of minutes, runs shorter than the period: 1440 runs on time.
        let runs = simulate(
            every_minute(Overlap::Skip),
            dir.path(),
            base,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        )
        .await;
        assert_eq!(runs.len(), 1440);
        assert_eq!(runs[0], at("2026-03-01T00:01:00Z"));
        assert!(
            runs.windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::minutes(1))
        );
        // Runs of 130 s against a 60 s period over 10 minutes: skip starts
        // one at 1:00 (to 3:10), skips 2:00 and 3:00, starts 4:00, ...
        let runs = |o| {
            simulate(
                every_minute(o),
                dir.path(),
                base,
                Duration::from_secs(130),
                Duration::from_secs(600),
            )
        };
        let skip = runs(Overlap::Skip).await;
        let minutes = |v: &[DateTime<Utc>]| {
            v.iter()
                .map(|t| (*t - at("2026-03-01T00:00:00Z")).num_minutes())
                .collect::<Vec<_>>()
        };
        assert_eq!(minutes(&skip), [1, 4, 7, 10]);
        // queue_one: 1:00 runs to 3:10; 2:00 queued then replaced by 3:00,
        // which runs 3:10-5:20; 5:00 runs 5:20-7:30, 7:00 7:30-9:40, 9:00
        // 9:40-11:50, and 10:00, queued before the stop, after it.
        let queued = runs(Overlap::QueueOne).await;
        assert_eq!(minutes(&queued), [1, 3, 5, 7, 9, 10]);
        // allow: every minute, overlapping.
        let all = runs(Overlap::Allow).await;
        assert_eq!(minutes(&all), (1..=10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn dst_transitions_run_once_and_never_in_the_gap_twice() {
        let daily = || {
            spec(
                When::Cron("0 30 2 * * *".into()),
                "Europe/Paris",
                Overlap::Skip,
                Missed::Skip,
            )
        };
        let two_days = Duration::from_secs(2 * 86_400);
        let run = Duration::from_secs(1);
        // Spring forward (2026-03-29, 02:00 CET -> 03:00 CEST): 02:30 does
        // not exist that day; it runs at 03:00 CEST (01:00Z), once.
        let dir = tempfile::tempdir().unwrap();
        let runs = simulate(
            daily(),
            dir.path(),
            at("2026-03-28T23:00:30Z"),
            run,
            two_days,
        )
        .await;
        assert_eq!(
            runs,
            [at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")]
        );
        // Midnight before a gap (London, 2026-03-29, 01:00 GMT -> 02:00
        // BST) runs at midnight only, not again after the gap (croner 3
        // ran it twice).
        let midnight = spec(
            When::Cron("0 0 0 * * *".into()),
            "Europe/London",
            Overlap::Skip,
            Missed::Skip,
        );
        let runs = simulate(
            midnight,
            dir.path(),
            at("2026-03-28T23:30:30Z"),
            run,
            two_days,
        )
        .await;
        assert_eq!(
            runs,
            [
                at("2026-03-29T00:00:00Z"),
                at("2026-03-29T23:00:00Z"),
                at("2026-03-30T23:00:00Z")
            ]
        );
        // Fall back (2026-10-25, 03:00 CEST -> 02:00 CET): 02:30 happens
        // twice; it runs at the first only.
        let runs = simulate(
            daily(),
            dir.path(),
            at("2026-10-24T23:00:30Z"),
            run,
            two_days,
        )
        .await;
        assert_eq!(
            runs,
            [at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]
        );
        // Hourly over the fall-back day: every real hour once, none twice.
        let hourly = spec(
            When::Cron("0 0 * * * *".into()),
            "Europe/Paris",
            Overlap::Skip,
            Missed::Skip,
        );
        let runs = simulate(
            hourly,
            dir.path(),
            at("2026-10-24T22:00:30Z"),
            run,
            Duration::from_secs(86_400),
        )
        .await;
        assert_eq!(runs.len(), 24, "{runs:?}");
        assert!(
            runs.windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::hours(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn missed_runs_skip_or_run_once_from_the_state_file() {
        let base = at("2026-03-01T12:00:30Z");
        let hourly = |m| spec(When::Cron("0 0 * * * *".into()), "UTC", Overlap::Skip, m);
        for (missed, want) in [(Missed::Skip, 0), (Missed::RunOnce, 1)] {
            let dir = tempfile::tempdir().unwrap();
            // Down since 08:30: 09:00, 10:00, 11:00 and 12:00 were missed.
            StateFile::new(dir.path(), "f", "s").write(at("2026-03-01T08:30:00Z"));
            let runs = simulate(
                hourly(missed),
                dir.path(),
                base,
                Duration::from_secs(1),
                Duration::from_secs(60),
            )
            .await;
            assert_eq!(runs.len(), want, "{missed:?}");
            if want == 1 {
                assert_eq!(runs[0], at("2026-03-01T12:00:00Z"));
            }
            // The state now says the schedule was handled up to start-up.
            let last = StateFile::new(dir.path(), "f", "s").read().unwrap();
            assert!(last >= base, "{last}");
        }
        // No state file: a first start misses nothing.
        let dir = tempfile::tempdir().unwrap();
        let runs = simulate(
            hourly(Missed::RunOnce),
            dir.path(),
            base,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .await;
        assert!(runs.is_empty());
    }
}
