//! Blocking on a future from code that may itself be running inside a tokio
//! runtime (shared by init here and by the runtime crate's synchronous
//! `Function::invoke`).

/// Runs `f` on the calling thread, unless the caller is inside a tokio
/// runtime, where blocking is forbidden: then `f` runs on a scoped helper
/// thread named `name` (which costs a thread start) and the caller waits
/// for it. A panic in `f` is resumed in the caller. `Err` only when the
/// helper thread cannot be started.
pub fn outside_async_context<R: Send>(
    name: &str,
    f: impl FnOnce() -> R + Send,
) -> std::io::Result<R> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(f());
    }
    std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(s, f)?;
        Ok(helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_here_outside_a_runtime_and_on_a_helper_inside_one() {
        let here = std::thread::current().id();
        let ran_on = outside_async_context("t", || std::thread::current().id()).unwrap();
        assert_eq!(ran_on, here);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ran_on = rt.block_on(async {
            outside_async_context("t", || std::thread::current().id()).unwrap()
        });
        assert_ne!(ran_on, here);
    }
}
