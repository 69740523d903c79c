//! Progress for slow steps (compiling a large module takes tens of
//! seconds): a spinner with the elapsed time on stderr, shown only when
//! stderr is a terminal and only once the step has taken longer than a
//! moment, so fast runs and piped output stay quiet.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a step may take before a spinner appears.
const SHOW_AFTER: Duration = Duration::from_millis(300);

/// Runs `work`, showing `message` with a spinner if it is slow.
pub fn with_spinner<T>(message: String, work: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let spinner: JoinHandle<()> = std::thread::spawn(move || {
        if done_rx.recv_timeout(SHOW_AFTER) != Err(mpsc::RecvTimeoutError::Timeout) {
            return;
        }
        let bar = ProgressBar::new_spinner().with_message(message);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        let _ = done_rx.recv();
        bar.finish_and_clear();
    });
    let result = work();
    drop(done_tx);
    let _ = spinner.join();
    result
}
