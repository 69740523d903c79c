//! `kind = "http"`: components exporting `wasi:http/incoming-handler`.
//!
//! The runtime's `http` module (`wasmlet_runtime::http`: loading and
//! pooling components, `handle_http(&Function, Request<HttpBody>,
//! Invocation) -> HttpOutcome`) is not part of this build yet, so such a
//! function is refused when the manifest is loaded, with a message saying
//! so. [`HttpHandler`] has no values until then: the server's code path for
//! it type-checks and is where `handle_http` plugs in (request body
//! streamed as [`crate::server::Body`], response streamed back, usage
//! record and status mapped like a WAGI function's).

use std::path::Path;
use wasmlet_runtime::{LoadOptions, Runtime};

/// A loaded wasi:http component. (No values in this build.)
pub(crate) enum HttpHandler {}

/// Loads a wasi:http component: refused in this build.
pub(crate) fn load(
    _runtime: &Runtime,
    _module: &Path,
    _opts: &LoadOptions,
) -> Result<HttpHandler, String> {
    Err(
        "kind = \"http\" (a wasi:http/incoming-handler component) is not supported in this build yet; serve a WAGI module (kind = \"wagi\") instead"
            .into(),
    )
}

impl HttpHandler {
    /// Handles one request: the response and the usage record.
    pub(crate) async fn handle(
        &self,
        _req: http::Request<crate::server::Body>,
        _inv: wasmlet_runtime::Invocation,
    ) -> crate::server::Handled {
        match *self {}
    }
}
