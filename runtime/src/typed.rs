//! Typed calls: [`Function::typed`] checks an export's signature once,
//! and [`TypedFunction`] then calls it per invocation with Rust values,
//! without `Val` boxing (no argument or result vector, no per-call type
//! check of the arguments, the export found by index, not by name).
//!
//! A typed invocation is an ordinary one (fresh instance, `_initialize`
//! first if the module has one, the same limits, usage record and
//! context); only the call and its results differ. `Invocation::entry` is
//! not used.

use crate::context::Context;
use crate::error::Error;
use crate::executor;
use crate::function::{Code, Finished, Function, Start};
use crate::invocation::{Invocation, Status};
use crate::usage::{Metered, Usage};
use crate::wasi;
use bytes::Bytes;
use std::marker::PhantomData;
use std::sync::Arc;
use wasmtime::{ExternType, ModuleExport, ValType, WasmParams, WasmResults};

/// A wasm value type a typed call can pass or return: `i32`, `u32`
/// (as `i32`), `i64`, `u64` (as `i64`), `f32`, `f64`.
pub trait WasmScalar: wasmtime::WasmTy + Send + Sync + 'static {
    /// Its wasm type.
    fn val_type() -> ValType;
}

macro_rules! scalar {
    ($($t:ty => $v:ident),*) => {$(
        impl WasmScalar for $t {
            fn val_type() -> ValType {
                ValType::$v
            }
        }
    )*};
}
scalar!(i32 => I32, u32 => I32, i64 => I64, u64 => I64, f32 => F32, f64 => F64);

/// The parameters or results of a typed call: `()`, one [`WasmScalar`], or
/// a tuple of up to eight.
pub trait WasmTypes: WasmParams + Send + Sync + 'static {
    /// Their wasm types, in order.
    fn val_types() -> Vec<ValType>;
}

impl<T: WasmScalar> WasmTypes for T {
    fn val_types() -> Vec<ValType> {
        vec![T::val_type()]
    }
}

macro_rules! tuple {
    ($($t:ident)*) => {
        impl<$($t: WasmScalar,)*> WasmTypes for ($($t,)*) {
            fn val_types() -> Vec<ValType> {
                vec![$($t::val_type()),*]
            }
        }
    };
}
tuple!();
tuple!(A);
tuple!(A B);
tuple!(A B C);
tuple!(A B C D);
tuple!(A B C D E);
tuple!(A B C D E F);
tuple!(A B C D E F G);
tuple!(A B C D E F G H);

/// An export of a core module with a signature checked at
/// [`Function::typed`], called with `P` and returning `R`. Cheap to clone;
/// safe to invoke from many threads at once.
pub struct TypedFunction<P, R> {
    func: Function,
    export: ModuleExport,
    name: Arc<str>,
    types: PhantomData<fn(P) -> R>,
}

impl<P, R> Clone for TypedFunction<P, R> {
    fn clone(&self) -> Self {
        TypedFunction {
            func: self.func.clone(),
            export: self.export,
            name: self.name.clone(),
            types: PhantomData,
        }
    }
}

impl<P, R> std::fmt::Debug for TypedFunction<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedFunction")
            .field("export", &self.name)
            .field("function", &self.func)
            .finish()
    }
}

/// The result of a typed invocation.
#[derive(Debug)]
pub struct TypedOutcome<R> {
    /// What the export returned; `None` when it did not return (then
    /// `status` says why).
    pub results: Option<R>,
    /// How it ended: `Status::Returned` with no values when it returned
    /// (the values are in `results`), otherwise a trap, an exit or a limit.
    pub status: Status,
    /// What it used.
    pub usage: Usage,
    /// Captured stdout (when `Output::Capture`).
    pub stdout: Option<Bytes>,
    /// Captured stderr (when `Output::Capture`).
    pub stderr: Option<Bytes>,
}

impl<R> TypedOutcome<R> {
    /// The results, or the status as an error (see
    /// `Outcome::into_result`); a guest that exited, even with code 0,
    /// instead of returning is `Error::Exit`.
    pub fn into_result(self) -> Result<R, Error> {
        match self.results {
            Some(r) => Ok(r),
            None => Err(crate::Outcome {
                status: self.status,
                usage: self.usage,
                stdout: None,
                stderr: None,
            }
            .into_result()
            .err()
            .unwrap_or(Error::Exit(0))),
        }
    }
}

/// `(i32, i64) -> (f32)`.
fn signature(params: &[ValType], results: &[ValType]) -> String {
    let list = |ts: &[ValType]| {
        ts.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

fn same(a: &[ValType], b: &[ValType]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ValType::eq(x, y))
}

impl Function {
    /// The export `name` of a core module as a [`TypedFunction`] taking
    /// `P` and returning `R`. The signature is checked here, once: a
    /// mismatch is an [`Error::Entry`] naming the export's signature and
    /// the one asked for.
    ///
    /// ```
    /// # use wasmlet_runtime::{Invocation, LoadOptions, Runtime, RuntimeConfig};
    /// # let rt = Runtime::new(RuntimeConfig::default())?;
    /// let f = rt.load_bytes(
    ///     br#"(module (func (export "add") (param i32 i32) (result i32)
    ///                   (i32.add (local.get 0) (local.get 1))))"#,
    ///     &LoadOptions::default(),
    /// )?;
    /// let add = f.typed::<(i32, i32), i32>("add")?;
    /// assert_eq!(add.invoke((2, 3), Invocation::default())?.results, Some(5));
    /// assert!(f.typed::<i64, i32>("add").is_err());
    /// # Ok::<(), wasmlet_runtime::Error>(())
    /// ```
    pub fn typed<P: WasmTypes, R: WasmTypes + WasmResults>(
        &self,
        name: &str,
    ) -> Result<TypedFunction<P, R>, Error> {
        let Code::Module { module, .. } = &self.inner().code else {
            return Err(Error::Entry(
                "typed calls are for core modules' exports; components run through wasi:cli/run or wasi:http".into(),
            ));
        };
        let Some(ExternType::Func(ty)) = module.get_export(name) else {
            return Err(Error::Entry(format!(
                "module has no exported function `{name}`"
            )));
        };
        let (params, results): (Vec<_>, Vec<_>) = (ty.params().collect(), ty.results().collect());
        let (want_params, want_results) = (P::val_types(), R::val_types());
        if !same(&params, &want_params) || !same(&results, &want_results) {
            return Err(Error::Entry(format!(
                "export `{name}` has signature {}, but the typed call asks for {}",
                signature(&params, &results),
                signature(&want_params, &want_results)
            )));
        }
        let export = module
            .get_export_index(name)
            .expect("the export was just found");
        Ok(TypedFunction {
            func: self.clone(),
            export,
            name: name.into(),
            types: PhantomData,
        })
    }
}

impl<P: WasmTypes, R: WasmTypes + WasmResults> TypedFunction<P, R> {
    /// The function it calls an export of.
    pub fn function(&self) -> &Function {
        &self.func
    }

    /// Runs one invocation calling the export with `params`, on the
    /// calling thread, as [`Function::invoke`] does (`inv.entry` is not
    /// used).
    pub fn invoke(&self, params: P, mut inv: Invocation) -> Result<TypedOutcome<R>, Error> {
        let context = std::mem::take(&mut inv.context);
        let start = self.start(&inv)?;
        let run = std::pin::pin!(self.metered(params, &inv, start, context));
        let outcome = executor::block_on(run)??;
        if matches!(outcome.status, Status::LimitExceeded(_)) {
            executor::retire_local_runtime();
        }
        Ok(outcome)
    }

    /// The same as a future, as [`Function::invoke_async`].
    pub async fn invoke_async(
        &self,
        params: P,
        mut inv: Invocation,
    ) -> Result<TypedOutcome<R>, Error> {
        let _slot = self.func.async_slot().await?;
        let context = std::mem::take(&mut inv.context);
        let start = self.start(&inv)?;
        self.metered(params, &inv, start, context).await
    }

    fn start<'a>(&'a self, inv: &'a Invocation) -> Result<Start<'a>, Error> {
        let limits = inv.limits.as_ref().unwrap_or(&self.func.inner().limits);
        self.func.check_limits(limits)?;
        Ok(self.func.start_clock(limits, inv.probe.clone()))
    }

    async fn metered(
        &self,
        params: P,
        inv: &Invocation,
        start: Start<'_>,
        context: Context,
    ) -> Result<TypedOutcome<R>, Error> {
        let wall_start = start.wall_start;
        let meter = start.meter.clone();
        let probe = start.probe.clone();
        let run = self.run(params, inv, start, context);
        let (finished, cpu_time) = Metered::new(run, meter).with_probe(probe).await;
        let (finished, results) = finished?;
        let outcome = finished.outcome(wall_start, cpu_time);
        Ok(TypedOutcome {
            results,
            status: outcome.status,
            usage: outcome.usage,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
        })
    }

    /// `Function::run` with a typed call.
    async fn run(
        &self,
        params: P,
        inv: &Invocation,
        start: Start<'_>,
        context: Context,
    ) -> Result<(Finished, Option<R>), Error> {
        let inner = self.func.inner();
        let Code::Module {
            pre, initialize, ..
        } = &inner.code
        else {
            unreachable!("checked by Function::typed");
        };
        let wasi = wasi::build(inv, start.limits)?;
        let mut results = None;
        let finished = start
            .in_fresh_store(&inner.executor, wasi, context, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                if let Some(gate) = &inv.gate {
                    gate.pass().await;
                }
                if initialize.is_some() && &*self.name != "_initialize" {
                    let init = crate::function::export_func(
                        &instance,
                        store,
                        initialize.as_ref(),
                        "_initialize",
                    )?;
                    init.call_async(&mut *store, ()).await?;
                }
                let func = instance
                    .get_module_export(&mut *store, &self.export)
                    .and_then(wasmtime::Extern::into_func)
                    .expect("the export's type was checked at Function::typed");
                let typed = func.typed::<P, R>(&*store)?;
                results = Some(typed.call_async(&mut *store, params).await?);
                Ok(Status::Returned(Vec::new()))
            })
            .await;
        Ok((finished, results))
    }
}
