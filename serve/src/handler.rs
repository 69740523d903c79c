//! How a function handles a request: the seam between the HTTP trigger and
//! the two kinds of function.
//!
//! - [`Handler::Wagi`]: a WASI preview 1 command in the WAGI convention:
//!   the body is read whole (up to `server.max_body_size`), the request
//!   becomes environment variables and stdin, stdout becomes the response
//!   (see [`crate::wagi`]);
//! - [`Handler::Http`]: a component exporting `wasi:http/incoming-handler`,
//!   handed the request with its body streaming (see [`crate::http`]).
//!
//! Everything else (routing, admission, limits, status mapping, metrics,
//! logs) is the same for both, in [`crate::server`].

use crate::manifest::Kind;
use wasmlet_runtime::Function;

/// A loaded function's way of handling requests.
pub(crate) enum Handler {
    /// WAGI: CGI over WASI preview 1.
    Wagi(Function),
    /// wasi:http.
    Http(crate::http::HttpHandler),
}

impl Handler {
    /// The manifest's kind for it.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Handler::Wagi(_) => Kind::Wagi,
            Handler::Http(_) => Kind::Http,
        }
    }
}
