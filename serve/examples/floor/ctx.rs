//! The floor's store data and pre-linking: wasmtime and wasmtime-wasi-http
//! alone, as an embedder with no limits, accounting or capture would use
//! them. Shared by `floor_serve` (the serve benchmark's floor) and
//! `benches/http_component.rs` (its `wasmtime_floor` case).

use wasmtime::Engine;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView};

/// A request's store data: WASI, wasi:http and their resource table.
pub struct Ctx {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl Ctx {
    pub fn new() -> Ctx {
        Ctx {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// A component pre-linked on its engine.
pub struct Floor {
    pub engine: Engine,
    pub pre: ProxyPre<Ctx>,
}

/// `component` linked to WASI and wasi:http, on its own engine.
pub fn prelinked(component: &Component) -> wasmtime::Result<Floor> {
    let engine = component.engine().clone();
    let mut linker = Linker::<Ctx>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(component)?)?;
    Ok(Floor { engine, pre })
}
