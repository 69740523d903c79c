//! WebAssembly components: telling them from core modules, linking them
//! once against WASI preview 2 and wasi:http, and the store state their
//! invocations run with.
//!
//! A component is compiled and cached like a module (the artifact's trailer
//! says which it is, see [`crate::artifact`]) and linked once, at load,
//! into a pre-instantiated world: a `wasi:http/proxy` (its
//! `incoming-handler` is what [`crate::http::handle_http`] calls) or a
//! `wasi:cli/command` (its `run` is what `Function::invoke` calls). Each
//! invocation instantiates that pre-linked world into a fresh store, in the
//! same pool, under the same limits, as a module's invocation.
//!
//! Not supported for components: snapshots (pre-initialization rewrites a
//! core module), and calling named exports (`Entry::Export`).

use crate::error::Error;
use crate::store::StoreState;
use std::sync::{Arc, LazyLock};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The interface a wasi:http component exports (any 0.2.x version).
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";
/// The interface a command component exports (any 0.2.x version).
const CLI_RUN: &str = "wasi:cli/run@0.2";

/// Whether `bytes` is a component binary (the preamble's layer field is 1).
pub(crate) fn is_component_binary(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(b"\0asm") && bytes[6..8] == [1, 0]
}

/// What a component's invocation keeps in its store, besides the limiter
/// and the context: WASI preview 2, the resource table, wasi:http and its
/// outbound policy. Opaque; public so that [`ComponentState`] can be named.
pub struct ComponentCtx {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: Outbound,
}

impl ComponentCtx {
    pub(crate) fn new(wasi: WasiCtx, outbound: Arc<OutboundHosts>) -> Self {
        ComponentCtx {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: Outbound(outbound),
        }
    }
}

/// The store data of a component invocation: what a host interface added
/// with [`crate::RuntimeBuilder::component_linker`] is given (its context
/// is [`StoreState::context_mut`]).
pub type ComponentState = StoreState<ComponentCtx>;

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.wasi,
            table: &mut self.wasi.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.wasi.http,
            table: &mut self.wasi.table,
            hooks: &mut self.wasi.hooks,
        }
    }
}

/// The hosts a component may send `wasi:http/outgoing-handler` requests to
/// (Spin's `allowed_outbound_hosts`). Empty: none.
///
/// An entry is `HOST`, `HOST:PORT`, `SCHEME://HOST` or `SCHEME://HOST:PORT`;
/// `*` as the host matches every host, and as the port every port. Hosts
/// compare without regard to case; a request's port is its URI's, or the
/// scheme's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundHosts {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

impl OutboundHosts {
    /// Parses the entries; an entry that is not of a form above is an
    /// error naming it.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, Error> {
        let rules = entries
            .iter()
            .map(|e| Rule::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(OutboundHosts { rules })
    }

    /// Whether a request to `scheme://host:port` is allowed.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.rules.iter().any(|r| {
            r.scheme
                .as_deref()
                .is_none_or(|s| s == "*" || s.eq_ignore_ascii_case(scheme))
                && (r.host == "*" || r.host.eq_ignore_ascii_case(host))
                && r.port.is_none_or(|p| p == port)
        })
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    fn parse(entry: &str) -> Result<Rule, Error> {
        let bad = || {
            Error::Config(format!(
                "allowed outbound host `{entry}` is not HOST, HOST:PORT or SCHEME://HOST[:PORT]"
            ))
        };
        let (scheme, rest) = match entry.split_once("://") {
            Some((s, r)) if !s.is_empty() => (Some(s.to_ascii_lowercase()), r),
            Some(_) => return Err(bad()),
            None => (None, entry),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // An IPv6 literal keeps its brackets; its port follows them.
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')) => {
                let port = match p {
                    "*" => None,
                    p => Some(p.parse::<u16>().map_err(|_| bad())?),
                };
                (h, port)
            }
            _ => (rest, None),
        };
        if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        Ok(Rule {
            scheme,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

/// The wasi:http hooks of an invocation: outgoing requests are sent only to
/// allowed hosts; others fail with `HTTP-request-denied`.
pub(crate) struct Outbound(Arc<OutboundHosts>);

type SendResult = wasmtime_wasi_http::Result<(
    hyper::Response<HyperOutgoingBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for Outbound {
    /// wasmtime-wasi-http's default filter (its forbidden headers), made
    /// once: the default makes a new `Arc` on every call, six a request.
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        static FILTER: LazyLock<wasmtime_wasi_http::ForbiddenHeaderFilter> = LazyLock::new(|| {
            Arc::new(|name| wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name))
        });
        FILTER.clone()
    }

    fn send_request(
        &mut self,
        request: hyper::Request<HyperOutgoingBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or("");
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !self.0.allows(scheme, host, port) {
            tracing::debug!(%scheme, %host, port, "outgoing request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The world a component was linked as.
pub(crate) enum World {
    /// Exports `wasi:http/incoming-handler`.
    Http(ProxyPre<ComponentState>),
    /// Exports `wasi:cli/run`.
    Command(CommandPre<ComponentState>),
}

/// A compiled, linked component.
pub(crate) struct ComponentCode {
    pub(crate) component: Component,
    pub(crate) world: World,
    pub(crate) outbound: Arc<OutboundHosts>,
}

/// The linker every component of a runtime is linked with: all of WASI
/// preview 2 and wasi:http, all async.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<ComponentState>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
        .map_err(|e| Error::Config(format!("cannot link WASI for components: {e:#}")))?;
    Ok(linker)
}

/// Links `component` once into the world it exports.
pub(crate) fn link(
    base: &Linker<ComponentState>,
    component: Component,
    trap_unknown_imports: bool,
    outbound: Arc<OutboundHosts>,
) -> Result<ComponentCode, Error> {
    let engine = base.engine().clone();
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(&engine).map(|(n, _)| n.to_string()).collect();
    let exports_iface = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
    let mut linker;
    let linker = if trap_unknown_imports {
        linker = base.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| Error::Link(one_line(&format!("{e:#}"))))?;
        &linker
    } else {
        base
    };
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| Error::Link(one_line(&format!("{e:#}"))))?;
    let world = if exports_iface(INCOMING_HANDLER) {
        World::Http(ProxyPre::new(pre).map_err(|e| Error::Link(one_line(&format!("{e:#}"))))?)
    } else if exports_iface(CLI_RUN) {
        World::Command(CommandPre::new(pre).map_err(|e| Error::Link(one_line(&format!("{e:#}"))))?)
    } else {
        return Err(Error::Entry(format!(
            "component exports neither wasi:http/incoming-handler nor wasi:cli/run (it exports: {})",
            if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            }
        )));
    };
    Ok(ComponentCode {
        component,
        world,
        outbound,
    })
}

/// Runs `wasi:cli/run` in a fresh instance in `store`; `Ok(1)` when the
/// guest's `run` returned an error.
pub(crate) async fn run_command(
    pre: &CommandPre<ComponentState>,
    store: &mut Store<ComponentState>,
    gate: Option<&crate::StartGate>,
) -> wasmtime::Result<i32> {
    let command = pre.instantiate_async(&mut *store).await?;
    if let Some(gate) = gate {
        gate.pass().await;
    }
    match command.wasi_cli_run().call_run(&mut *store).await? {
        Ok(()) => Ok(0),
        Err(()) => Ok(1),
    }
}

fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_rules() {
        let h = OutboundHosts::parse(&[
            "example.com",
            "http://127.0.0.1:8080",
            "*://api.test:*",
            "[::1]:9000",
        ])
        .unwrap();
        assert!(h.allows("https", "EXAMPLE.com", 443));
        assert!(h.allows("http", "example.com", 80));
        assert!(h.allows("http", "127.0.0.1", 8080));
        assert!(!h.allows("https", "127.0.0.1", 8080));
        assert!(!h.allows("http", "127.0.0.1", 8081));
        assert!(h.allows("http", "api.test", 1));
        assert!(h.allows("http", "::1", 9000));
        assert!(!h.allows("http", "other.test", 80));
        assert!(!OutboundHosts::default().allows("http", "example.com", 80));
        assert!(OutboundHosts::parse(&["*"]).unwrap().allows("http", "x", 1));
        for bad in ["", "http://", "a b", "host:notaport", "://x", "a/b"] {
            assert!(OutboundHosts::parse(&[bad]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn binary_kinds() {
        assert!(is_component_binary(b"\0asm\x0d\0\x01\0"));
        assert!(!is_component_binary(b"\0asm\x01\0\0\0"));
        assert!(!is_component_binary(b"\0asm"));
    }
}
