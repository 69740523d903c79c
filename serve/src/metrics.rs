//! Counters and gauges for the admin listener's `/metrics`, in the
//! Prometheus text format. Plain atomics, updated on the request path
//! without locks; kept by function name across reloads, so a reload does
//! not reset them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Why a request to a function did not get what the function would answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The guest trapped (500).
    Trap,
    /// The wall-clock limit (504).
    Timeout,
    /// Another limit: memory, CPU time, fuel, response size (500).
    Limit,
    /// A WAGI guest exited non-zero without headers, or wrote no valid
    /// CGI response (502).
    BadOutput,
    /// The invocation could not be set up, or its sandbox failed (500).
    Setup,
    /// The request body was too large (413).
    BodyTooLarge,
    /// The client sent the body too slowly (408).
    BodyTimeout,
    /// The function's queue was full (503).
    QueueFull,
    /// The request waited longer than `queue_timeout` (503).
    QueueTimeout,
}

impl Cause {
    /// Every cause, in label order.
    pub const ALL: [Cause; 9] = [
        Cause::Trap,
        Cause::Timeout,
        Cause::Limit,
        Cause::BadOutput,
        Cause::Setup,
        Cause::BodyTooLarge,
        Cause::BodyTimeout,
        Cause::QueueFull,
        Cause::QueueTimeout,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Trap => "trap",
            Cause::Timeout => "timeout",
            Cause::Limit => "limit",
            Cause::BadOutput => "bad_output",
            Cause::Setup => "setup",
            Cause::BodyTooLarge => "body_too_large",
            Cause::BodyTimeout => "body_timeout",
            Cause::QueueFull => "queue_full",
            Cause::QueueTimeout => "queue_timeout",
        }
    }

    fn index(self) -> usize {
        Cause::ALL.iter().position(|c| *c == self).expect("listed")
    }
}

/// One function's figures.
#[derive(Debug, Default)]
pub struct FunctionMetrics {
    /// Requests routed to it.
    pub requests: AtomicU64,
    /// Responses by status class: 1xx..5xx at index 1..=5.
    responses: [AtomicU64; 6],
    /// Instances started (invocations run).
    pub invocations: AtomicU64,
    /// Failed requests, by [`Cause`].
    errors: [AtomicU64; Cause::ALL.len()],
    /// Instances running now.
    pub in_flight: AtomicI64,
    /// Requests waiting in its queue now.
    pub queued: AtomicI64,
    /// Instances started from a snapshot.
    pub snapshot_starts: AtomicU64,
    /// Instances started from the plain module.
    pub plain_starts: AtomicU64,
    /// Sandbox workers running now (`[function.sandbox]`).
    pub sandbox_workers: AtomicI64,
    /// Sandbox workers started: warm, scaled out, or replacing a dead one.
    pub sandbox_worker_starts: AtomicU64,
    /// Sandbox workers that died (OOM, seccomp, signal, missed deadline).
    pub sandbox_worker_deaths: AtomicU64,
    latency: Histogram,
}

impl FunctionMetrics {
    /// Counts an error.
    pub fn error(&self, cause: Cause) {
        self.errors[cause.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response and its latency (from routing to the response).
    pub fn response(&self, status: u16, latency: Duration) {
        let class = (status / 100).min(5) as usize;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// All figures of a server.
#[derive(Debug, Default)]
pub struct Metrics {
    functions: Mutex<BTreeMap<String, Arc<FunctionMetrics>>>,
    /// Requests that matched no route (404).
    pub unrouted: AtomicU64,
    /// Instances in flight across all functions.
    pub in_flight: AtomicI64,
    /// Successful reloads.
    pub reloads: AtomicU64,
    /// Reloads that failed (the old functions kept serving).
    pub reload_failures: AtomicU64,
}

impl Metrics {
    /// The figures of function `name`, made on first use.
    pub fn function(&self, name: &str) -> Arc<FunctionMetrics> {
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let functions = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, f: &dyn Fn(&mut String)| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            f(&mut out);
        };
        let each = |out: &mut String, metric: &str, get: &dyn Fn(&FunctionMetrics) -> String| {
            for (name, m) in &functions {
                let _ = writeln!(out, "{metric}{{function=\"{name}\"}} {}", get(m));
            }
        };
        family(
            "wasmlet_requests_total",
            "counter",
            "Requests routed to a function.",
            &|o| each(o, "wasmlet_requests_total", &|m| load(&m.requests)),
        );
        family(
            "wasmlet_responses_total",
            "counter",
            "Responses of a function's requests, by status class.",
            &|o| {
                for (name, m) in &functions {
                    for (class, n) in m.responses.iter().enumerate().skip(1) {
                        let _ = writeln!(
                            o,
                            "wasmlet_responses_total{{function=\"{name}\",code=\"{class}xx\"}} {}",
                            load(n)
                        );
                    }
                }
            },
        );
        family(
            "wasmlet_invocations_total",
            "counter",
            "Instances started to handle requests.",
            &|o| each(o, "wasmlet_invocations_total", &|m| load(&m.invocations)),
        );
        family(
            "wasmlet_errors_total",
            "counter",
            "Failed requests by cause (trap, timeout, limit, bad_output, setup, body_too_large, body_timeout, queue_full, queue_timeout).",
            &|o| {
                for (name, m) in &functions {
                    for c in Cause::ALL {
                        let _ = writeln!(
                            o,
                            "wasmlet_errors_total{{function=\"{name}\",cause=\"{}\"}} {}",
                            c.label(),
                            load(&m.errors[c.index()])
                        );
                    }
                }
            },
        );
        family(
            "wasmlet_rejected_total",
            "counter",
            "Requests refused with 503 because the function was at capacity.",
            &|o| {
                each(o, "wasmlet_rejected_total", &|m| {
                    (m.errors[Cause::QueueFull.index()].load(Ordering::Relaxed)
                        + m.errors[Cause::QueueTimeout.index()].load(Ordering::Relaxed))
                    .to_string()
                })
            },
        );
        family(
            "wasmlet_instance_starts_total",
            "counter",
            "Instances started, from a snapshot or from the plain module.",
            &|o| {
                for (name, m) in &functions {
                    let _ = writeln!(
                        o,
                        "wasmlet_instance_starts_total{{function=\"{name}\",start=\"snapshot\"}} {}\nwasmlet_instance_starts_total{{function=\"{name}\",start=\"plain\"}} {}",
                        load(&m.snapshot_starts),
                        load(&m.plain_starts)
                    );
                }
            },
        );
        family(
            "wasmlet_instances_in_flight",
            "gauge",
            "Instances of a function running now.",
            &|o| {
                each(o, "wasmlet_instances_in_flight", &|m| {
                    m.in_flight.load(Ordering::Relaxed).to_string()
                })
            },
        );
        family(
            "wasmlet_queue_depth",
            "gauge",
            "Requests waiting for a function's capacity now.",
            &|o| {
                each(o, "wasmlet_queue_depth", &|m| {
                    m.queued.load(Ordering::Relaxed).to_string()
                })
            },
        );
        family(
            "wasmlet_sandbox_workers",
            "gauge",
            "Sandbox worker processes of a function running now ([function.sandbox]).",
            &|o| {
                each(o, "wasmlet_sandbox_workers", &|m| {
                    m.sandbox_workers.load(Ordering::Relaxed).to_string()
                })
            },
        );
        family(
            "wasmlet_sandbox_worker_starts_total",
            "counter",
            "Sandbox workers started: warm, scaled out, or replacing a dead one.",
            &|o| {
                each(o, "wasmlet_sandbox_worker_starts_total", &|m| {
                    load(&m.sandbox_worker_starts)
                })
            },
        );
        family(
            "wasmlet_sandbox_worker_deaths_total",
            "counter",
            "Sandbox workers that died (OOM, seccomp, signal, missed deadline).",
            &|o| {
                each(o, "wasmlet_sandbox_worker_deaths_total", &|m| {
                    load(&m.sandbox_worker_deaths)
                })
            },
        );
        family(
            "wasmlet_request_duration_seconds",
            "histogram",
            "Time from routing a request to its response head, per function.",
            &|o| {
                for (name, m) in &functions {
                    let h = &m.latency;
                    let mut cumulative = 0;
                    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                        cumulative += h.buckets[i].load(Ordering::Relaxed);
                        let _ = writeln!(
                            o,
                            "wasmlet_request_duration_seconds_bucket{{function=\"{name}\",le=\"{b}\"}} {cumulative}"
                        );
                    }
                    let count = h.count.load(Ordering::Relaxed);
                    let _ = writeln!(
                        o,
                        "wasmlet_request_duration_seconds_bucket{{function=\"{name}\",le=\"+Inf\"}} {count}\nwasmlet_request_duration_seconds_sum{{function=\"{name}\"}} {}\nwasmlet_request_duration_seconds_count{{function=\"{name}\"}} {count}",
                        h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
                    );
                }
            },
        );
        let global = [
            (
                "wasmlet_unrouted_requests_total",
                "counter",
                "Requests that matched no route (404).",
                load(&self.unrouted),
            ),
            (
                "wasmlet_in_flight",
                "gauge",
                "Instances running across all functions.",
                self.in_flight.load(Ordering::Relaxed).to_string(),
            ),
            (
                "wasmlet_reloads_total",
                "counter",
                "Manifest reloads that took effect.",
                load(&self.reloads),
            ),
            (
                "wasmlet_reload_failures_total",
                "counter",
                "Manifest reloads that failed (the previous functions kept serving).",
                load(&self.reload_failures),
            ),
        ];
        for (name, kind, help, value) in global {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

fn load(a: &AtomicU64) -> String {
    a.load(Ordering::Relaxed).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        let f = m.function("hello");
        f.requests.fetch_add(2, Ordering::Relaxed);
        f.response(200, Duration::from_micros(300));
        f.response(503, Duration::from_secs(2));
        f.error(Cause::QueueFull);
        let text = m.render();
        assert!(
            text.contains("wasmlet_requests_total{function=\"hello\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("wasmlet_responses_total{function=\"hello\",code=\"5xx\"} 1\n"));
        assert!(text.contains("wasmlet_rejected_total{function=\"hello\"} 1\n"));
        assert!(text.contains(
            "wasmlet_request_duration_seconds_bucket{function=\"hello\",le=\"0.0005\"} 1\n"
        ));
        assert!(text.contains(
            "wasmlet_request_duration_seconds_bucket{function=\"hello\",le=\"+Inf\"} 2\n"
        ));
    }
}
