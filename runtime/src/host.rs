//! Host functions for core modules: what an embedder registers on a
//! [`crate::RuntimeBuilder`] ([`HostFunc`], and async ones), and what such a
//! function is given when a guest calls it ([`HostCx`]: the invocation's
//! [`Context`] and bounds-checked access to the guest's memory).
//!
//! Host functions are defined once, in the runtime's linker, next to WASI
//! preview 1; every function loaded afterwards is linked against them once,
//! into its `InstancePre`, so an invocation never resolves an import. An
//! import that neither WASI nor a host function provides is still refused
//! at load (or, with `LoadOptions::trap_unknown_imports`, traps when
//! called).
//!
//! Time: a host function runs inside the invocation, on its thread (a
//! synchronous one) or as part of its future (an async one): its wall time
//! counts toward `Limits::timeout` and its CPU time, read with the thread
//! CPU clock around every poll, toward `Limits::cpu_time` and the usage
//! record. An async host function still waiting at the timeout is dropped
//! (cancelled) and the invocation ends with `LimitExceeded::Timeout`; a
//! synchronous one (or an async one computing without waiting) cannot be
//! interrupted, so one that returns past the timeout or the CPU-time limit
//! ends the invocation with that limit when it returns. CPU a host
//! function spends on other threads (work it hands to a pool) is not
//! charged.
//!
//! Errors: a host function that returns `Err` traps the guest; the
//! invocation's status is `Status::Trapped` with the error's message. One
//! that panics ends the invocation the same way, as `Status::Trapped` with
//! "a host function panicked: " and the panic's message (the panic hook
//! still reports it); the calling thread and the runtime go on.
//!
//! Re-entry: an async host function may call the guest's exports back
//! through [`HostCx::caller`] with `call_async` (a synchronous host
//! function cannot: the store is async, and wasmtime refuses it with an
//! error, which traps). Each nested call runs on a fiber stack of its own,
//! taken from the runtime's pool like an invocation's: a guest recursing
//! through the host deeper than the pool has free stacks ends with
//! `LimitExceeded::PoolFull`, and meanwhile holds those stacks, so keep
//! such nesting bounded (count it in the context).
//!
//! Invoking another function from a host function (`Function::invoke_async`
//! on the same runtime) needs an instance slot of its own: if every slot is
//! held by outer invocations that all wait on such inner calls, none can
//! proceed until their wall-clock timeouts end them. Size the pool for the
//! nesting (or run the inner function on a runtime of its own), and always
//! give such outer functions a timeout.

use crate::context::Context;
use crate::limiter::TimeBudget;
use crate::store::StoreState;
use pin_project_lite::pin_project;
use std::future::Future;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;
use wasmtime::{Caller, Extern, Linker, WasmRet, WasmTy};

/// What a host function is given: the calling invocation's [`Context`] and
/// its guest's memory (the memory the module exports as `memory`).
///
/// Every access to guest memory is bounds-checked: a pointer and length
/// the guest passes that reach past the end of its memory are a
/// [`MemoryError`], which, returned with `?`, traps the guest with that
/// message.
pub struct HostCx<'a> {
    caller: Caller<'a, StoreState>,
}

impl<'a> HostCx<'a> {
    /// The invocation's context.
    pub fn context(&self) -> &Context {
        &self.caller.data().context
    }

    /// The invocation's context, mutably.
    pub fn context_mut(&mut self) -> &mut Context {
        &mut self.caller.data_mut().context
    }

    /// The guest's exported memory `memory`.
    pub fn memory(&mut self) -> Result<GuestMemory<'_>, MemoryError> {
        self.memory_and_context().map(|(m, _)| m)
    }

    /// The guest's memory and the context at once (both borrowed from the
    /// store: this is how a host function copies between them without an
    /// intermediate buffer).
    pub fn memory_and_context(&mut self) -> Result<(GuestMemory<'_>, &mut Context), MemoryError> {
        let Some(Extern::Memory(memory)) = self.caller.get_export("memory") else {
            return Err(MemoryError::NoMemory);
        };
        let (data, state) = memory.data_and_store_mut(&mut self.caller);
        Ok((GuestMemory { data }, &mut state.context))
    }

    /// A copy of `len` bytes of guest memory at `ptr`. The guest picks
    /// `len`, up to its memory's size (its memory limit): to look at a
    /// large range without allocating a copy, borrow it with
    /// [`GuestMemory::slice`].
    pub fn read(&mut self, ptr: u32, len: u32) -> Result<Vec<u8>, MemoryError> {
        Ok(self.memory()?.slice(ptr, len)?.to_vec())
    }

    /// A copy of the UTF-8 string of `len` bytes at `ptr`.
    pub fn read_str(&mut self, ptr: u32, len: u32) -> Result<String, MemoryError> {
        Ok(self.memory()?.str(ptr, len)?.to_string())
    }

    /// Writes `bytes` into guest memory at `ptr`.
    pub fn write(&mut self, ptr: u32, bytes: &[u8]) -> Result<(), MemoryError> {
        self.memory()?.write(ptr, bytes)
    }

    /// The wasmtime `Caller`, for what this type does not offer (other
    /// exports, fuel). Its data is the invocation's [`StoreState`].
    pub fn caller(&mut self) -> &mut Caller<'a, StoreState> {
        &mut self.caller
    }
}

/// A guest's linear memory, borrowed for the length of a host call; every
/// access is bounds-checked. Offsets and lengths are the guest's `u32`s.
pub struct GuestMemory<'m> {
    data: &'m mut [u8],
}

impl GuestMemory<'_> {
    /// The memory's size in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the memory has no pages.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn range(&self, ptr: u32, len: u32) -> Result<Range<usize>, MemoryError> {
        let start = ptr as usize;
        match start.checked_add(len as usize) {
            Some(end) if end <= self.data.len() => Ok(start..end),
            _ => Err(MemoryError::OutOfBounds {
                ptr,
                len,
                size: self.data.len(),
            }),
        }
    }

    /// The `len` bytes at `ptr`.
    pub fn slice(&self, ptr: u32, len: u32) -> Result<&[u8], MemoryError> {
        Ok(&self.data[self.range(ptr, len)?])
    }

    /// The `len` bytes at `ptr`, mutably.
    pub fn slice_mut(&mut self, ptr: u32, len: u32) -> Result<&mut [u8], MemoryError> {
        let range = self.range(ptr, len)?;
        Ok(&mut self.data[range])
    }

    /// The UTF-8 string of `len` bytes at `ptr`.
    pub fn str(&self, ptr: u32, len: u32) -> Result<&str, MemoryError> {
        std::str::from_utf8(self.slice(ptr, len)?).map_err(|_| MemoryError::NotUtf8 { ptr, len })
    }

    /// Writes `bytes` at `ptr`.
    pub fn write(&mut self, ptr: u32, bytes: &[u8]) -> Result<(), MemoryError> {
        let len = u32::try_from(bytes.len()).map_err(|_| MemoryError::OutOfBounds {
            ptr,
            len: u32::MAX,
            size: self.data.len(),
        })?;
        self.slice_mut(ptr, len)?.copy_from_slice(bytes);
        Ok(())
    }
}

/// A guest memory access a host function could not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The module exports no memory named `memory`.
    #[error("the guest exports no memory named `memory`")]
    NoMemory,
    /// The range reaches past the end of the memory.
    #[error("guest memory access out of bounds: {len} bytes at {ptr:#x}, memory is {size} bytes")]
    OutOfBounds {
        /// The guest's pointer.
        ptr: u32,
        /// The length asked for.
        len: u32,
        /// The memory's size.
        size: usize,
    },
    /// The bytes are not UTF-8.
    #[error("guest string of {len} bytes at {ptr:#x} is not UTF-8")]
    NotUtf8 {
        /// The guest's pointer.
        ptr: u32,
        /// Its length.
        len: u32,
    },
}

/// A synchronous host function: a closure taking a [`HostCx`] and up to
/// eight wasm values (`i32`, `u32`, `i64`, `u64`, `f32`, `f64`), and
/// returning nothing, a value, a tuple of values, or a
/// `wasmtime::Result` of one of these (an `Err` traps the guest). What
/// [`crate::RuntimeBuilder::host_func`] takes; implemented for every such
/// closure, in the spirit of wasmtime's `IntoFunc`.
///
/// ```
/// use wasmlet_runtime::{HostCx, RuntimeBuilder, RuntimeConfig};
/// let builder = RuntimeBuilder::new(RuntimeConfig::default())
///     .host_func("platform", "add", |_cx: HostCx<'_>, a: i32, b: i32| a + b)
///     .host_func("platform", "log", |mut cx: HostCx<'_>, ptr: u32, len: u32| {
///         println!("guest says: {}", cx.read_str(ptr, len)?);
///         Ok(())
///     });
/// # let _ = builder;
/// ```
pub trait HostFunc<Params, Results>: Send + Sync + 'static {
    /// Defines the function as `module::name` in `linker`.
    fn define(
        self,
        linker: &mut Linker<StoreState>,
        module: &str,
        name: &str,
    ) -> wasmtime::Result<()>;
}

macro_rules! host_func_arity {
    ($($arg:ident: $ty:ident),*) => {
        impl<F, R, $($ty,)*> HostFunc<($($ty,)*), R> for F
        where
            F: Fn(HostCx<'_>, $($ty),*) -> R + Send + Sync + 'static,
            R: WasmRet,
            $($ty: WasmTy,)*
        {
            fn define(
                self,
                linker: &mut Linker<StoreState>,
                module: &str,
                name: &str,
            ) -> wasmtime::Result<()> {
                let f = self;
                linker.func_wrap(
                    module,
                    name,
                    move |caller: Caller<'_, StoreState>, $($arg: $ty),*| -> wasmtime::Result<R> {
                        let budget = caller.data().budget.as_ref().map(TimeBudget::at_host_return);
                        let out = f(HostCx { caller }, $($arg),*);
                        if let Some(budget) = budget {
                            budget.check()?;
                        }
                        Ok(out)
                    },
                )?;
                Ok(())
            }
        }
    };
}

host_func_arity!();
host_func_arity!(a1: A1);
host_func_arity!(a1: A1, a2: A2);
host_func_arity!(a1: A1, a2: A2, a3: A3);
host_func_arity!(a1: A1, a2: A2, a3: A3, a4: A4);
host_func_arity!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5);
host_func_arity!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6);
host_func_arity!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7);
host_func_arity!(a1: A1, a2: A2, a3: A3, a4: A4, a5: A5, a6: A6, a7: A7, a8: A8);

/// Wraps an async host function (see
/// [`crate::RuntimeBuilder::host_func_async`]) for wasmtime's linker.
pub(crate) fn define_async<P, R, F>(
    linker: &mut Linker<StoreState>,
    module: &str,
    name: &str,
    f: F,
) -> wasmtime::Result<()>
where
    F: for<'a> Fn(HostCx<'a>, P) -> Box<dyn Future<Output = R> + Send + 'a> + Send + Sync + 'static,
    P: wasmtime::WasmTyList,
    R: WasmRet + 'static,
{
    linker.func_wrap_async(
        module,
        name,
        move |caller: Caller<'_, StoreState>, params: P| {
            let budget = caller
                .data()
                .budget
                .as_ref()
                .map(TimeBudget::at_host_return);
            let call = Box::into_pin(f(HostCx { caller }, params));
            Box::new(async move {
                let out = call.await;
                if let Some(budget) = budget {
                    budget.check()?;
                }
                Ok(out)
            })
        },
    )?;
    Ok(())
}

pin_project! {
    /// An invocation's call, with a panic in a host function (the
    /// embedder's, of a core module or a component) turned into an error:
    /// the invocation ends as a trap with the panic's message, and the
    /// thread and runtime that ran it go on. wasmtime carries the panic
    /// out of the guest's frames and resumes it in the poll of the call;
    /// the store is then only read for the usage record and dropped.
    pub(crate) struct CatchPanic<F> {
        #[pin]
        call: F,
    }
}

impl<F> CatchPanic<F> {
    pub(crate) fn new(call: F) -> Self {
        CatchPanic { call }
    }
}

impl<F, T> Future for CatchPanic<F>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    type Output = wasmtime::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let call = self.project().call;
        // Unwind safety: after a panic the call is never polled again, and
        // nothing it borrowed (the store) is used but to be read and
        // dropped.
        std::panic::catch_unwind(AssertUnwindSafe(|| call.poll(cx))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            Poll::Ready(Err(wasmtime::Error::msg(format!(
                "a host function panicked: {what}"
            ))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_accesses_are_bounds_checked() {
        let mut data = vec![0u8; 16];
        let mut m = GuestMemory { data: &mut data };
        m.write(12, b"abcd").unwrap();
        assert_eq!(m.str(12, 4).unwrap(), "abcd");
        assert_eq!(
            m.slice(13, 4),
            Err(MemoryError::OutOfBounds {
                ptr: 13,
                len: 4,
                size: 16
            })
        );
        assert!(m.slice(u32::MAX, u32::MAX).is_err());
        assert!(m.write(16, b"x").is_err());
        assert_eq!(m.slice(16, 0).unwrap(), b"");
        m.write(0, &[0xff]).unwrap();
        assert_eq!(m.str(0, 1), Err(MemoryError::NotUtf8 { ptr: 0, len: 1 }));
    }
}
