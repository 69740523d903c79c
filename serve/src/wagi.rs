//! The WAGI convention (CGI for WASI preview 1 commands): what the guest
//! gets and how its output becomes a response.
//!
//! In: request metadata in environment variables (`REQUEST_METHOD`,
//! `PATH_INFO`, `QUERY_STRING`, `HTTP_*` for each header, ... as in RFC 3875
//! and WAGI), the query's `&`-separated parts as arguments, the body on
//! stdin. Out: header lines (`Content-Type`, `Location`, `Status: 404 Not
//! Found`, any other header), a blank line, the body, on stdout.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, request::Parts};
use std::net::SocketAddr;

/// Headers never passed to the guest: hop-by-hop ones (they describe the
/// connection, not the request) and proxy credentials.
const HIDDEN_REQUEST_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "upgrade",
];

/// The most header lines a WAGI function may write (`Status` included);
/// more is a 502. (hyper's own client reads at most 100; a browser, some
/// hundreds.)
pub(crate) const MAX_RESPONSE_HEADERS: usize = 1000;

/// The largest header block a WAGI function may write; more is a 502.
/// (hyper's client reads up to about 400 KiB, browsers some 256 KiB; no
/// response needs more than this.)
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Headers a guest may not set: the server frames the response itself.
const FRAMING_HEADERS: [&str; 5] = [
    "connection",
    "content-length",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
];

/// What a request looks like to a WAGI guest.
pub(crate) struct CgiRequest<'a> {
    pub parts: &'a Parts,
    pub body_len: usize,
    pub route: &'a crate::manifest::Route,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub request_id: &'a str,
}

impl CgiRequest<'_> {
    /// The guest's arguments and CGI environment (after the manifest's own
    /// variables, which these override).
    pub(crate) fn args_env(&self, name: &str) -> (Vec<String>, Vec<(String, String)>) {
        let uri = &self.parts.uri;
        let raw_path = uri.path();
        let query = uri.query().unwrap_or("");
        let route_path = if self.route.prefix {
            self.route.path.as_str()
        } else {
            raw_path
        };
        let raw_info = raw_path.get(route_path.len()..).unwrap_or("");
        let host_header = self
            .parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        let host = host_header
            .clone()
            .unwrap_or_else(|| self.local.to_string());
        let (server_name, server_port) = match host.rsplit_once(':') {
            Some((h, p))
                if !p.is_empty()
                    && p.chars().all(|c| c.is_ascii_digit())
                    && (!h.contains(':') || h.ends_with(']')) =>
            {
                (h.to_string(), p.to_string())
            }
            _ => (host.clone(), self.local.port().to_string()),
        };
        let mut env: Vec<(String, String)> = vec![
            ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
            (
                "SERVER_SOFTWARE".into(),
                concat!("wasmlet/", env!("CARGO_PKG_VERSION")).into(),
            ),
            (
                "SERVER_PROTOCOL".into(),
                format!("{:?}", self.parts.version),
            ),
            ("SERVER_NAME".into(), server_name),
            ("SERVER_PORT".into(), server_port),
            ("REQUEST_METHOD".into(), self.parts.method.as_str().into()),
            ("SCRIPT_NAME".into(), route_path.into()),
            ("PATH_INFO".into(), percent_decode(raw_info)),
            ("PATH_TRANSLATED".into(), percent_decode(raw_info)),
            ("X_RAW_PATH_INFO".into(), raw_info.into()),
            ("QUERY_STRING".into(), query.into()),
            ("X_MATCHED_ROUTE".into(), self.route.to_string()),
            (
                "X_FULL_URL".into(),
                format!(
                    "http://{host}{}",
                    uri.path_and_query().map_or("/", |p| p.as_str())
                ),
            ),
            ("REMOTE_ADDR".into(), self.peer.ip().to_string()),
            ("REMOTE_HOST".into(), self.peer.ip().to_string()),
            ("REMOTE_PORT".into(), self.peer.port().to_string()),
            ("AUTH_TYPE".into(), String::new()),
            ("REMOTE_USER".into(), String::new()),
            ("CONTENT_LENGTH".into(), self.body_len.to_string()),
            ("X_REQUEST_ID".into(), self.request_id.into()),
        ];
        let content_type = self
            .parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        env.push(("CONTENT_TYPE".into(), content_type));
        for name in self.parts.headers.keys() {
            if HIDDEN_REQUEST_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let values: Vec<String> = self
                .parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            let var = format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            );
            env.push((var, values.join(", ")));
        }
        let mut args = vec![name.to_string()];
        args.extend(
            query
                .split('&')
                .filter(|s| !s.is_empty())
                .map(percent_decode),
        );
        (args, env)
    }
}

/// `%XX` decoding (and `+` left as is, as in a path); invalid sequences
/// are kept verbatim, and so is `%00` (a NUL would cut the variable short
/// in the guest); bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
            && (h, l) != (0, 0)
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// A WAGI guest's response, parsed.
#[derive(Debug)]
pub(crate) struct CgiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Parses CGI output: header lines, a blank line, the body. `Err` says why
/// it is not a CGI response.
pub(crate) fn parse_output(out: Bytes) -> Result<CgiResponse, String> {
    let end = find_blank_line(&out).ok_or_else(|| {
        if out.is_empty() {
            "the function wrote nothing (a WAGI function writes headers, a blank line, then the body)".to_string()
        } else {
            "the function's output has no header block (headers, then a blank line, then the body)".to_string()
        }
    })?;
    let (head_len, body_start) = end;
    if head_len > MAX_RESPONSE_HEAD {
        return Err(format!(
            "the function's headers are larger than {} KiB",
            MAX_RESPONSE_HEAD / 1024
        ));
    }
    let head = std::str::from_utf8(&out[..head_len])
        .map_err(|_| "the function's headers are not UTF-8".to_string())?;
    let mut status = None;
    let mut headers = HeaderMap::new();
    for (n, line) in head.lines().enumerate() {
        if n == MAX_RESPONSE_HEADERS {
            return Err(format!(
                "the function wrote more than {MAX_RESPONSE_HEADERS} header lines"
            ));
        }
        let line = line.trim_end_matches('\r');
        let (name, value) = line.split_once(':').ok_or_else(|| {
            format!(
                "the function wrote a header line without `:`: {:?}",
                cut(line)
            )
        })?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .ok_or_else(|| format!("the function wrote an invalid Status: {:?}", cut(value)))?;
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("the function wrote an invalid header name {:?}", cut(name)))?;
        // (`x-wasmlet-error` is the server's own: a guest cannot set it.)
        if FRAMING_HEADERS.contains(&name.as_str()) || name == "x-wasmlet-error" {
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the function wrote an invalid value for header {name}"))?;
        headers
            .try_append(name, value)
            .map_err(|_| "the function wrote more headers than a response can hold".to_string())?;
    }
    let status = status.unwrap_or(if headers.contains_key(http::header::LOCATION) {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(CgiResponse {
        status,
        headers,
        body: out.slice(body_start..),
    })
}

/// The end of the header block: (length of the headers, start of the body).
fn find_blank_line(out: &[u8]) -> Option<(usize, usize)> {
    if out.starts_with(b"\n") {
        return Some((0, 1));
    }
    if out.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'\n' {
            if out.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if out.get(i + 1) == Some(&b'\r') && out.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers_status_and_body() {
        let r = parse_output(Bytes::from_static(
            b"Content-Type: text/plain\r\nStatus: 404 Not Found\r\nX-A: 1\r\n\r\nnope\n",
        ))
        .unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.headers["content-type"], "text/plain");
        assert_eq!(r.headers["x-a"], "1");
        assert_eq!(&r.body[..], b"nope\n");
        let r = parse_output(Bytes::from_static(b"Location: /x\n\n")).unwrap();
        assert_eq!(r.status, StatusCode::FOUND);
        let r = parse_output(Bytes::from_static(b"\nbody")).unwrap();
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"body"[..]));
    }

    #[test]
    fn refuses_what_is_not_cgi() {
        assert!(parse_output(Bytes::from_static(b"hello world\n")).is_err());
        assert!(parse_output(Bytes::new()).is_err());
        assert!(parse_output(Bytes::from_static(b"no colon\n\nbody")).is_err());
        assert!(parse_output(Bytes::from_static(b"Status: abc\n\n")).is_err());
        let r = parse_output(Bytes::from_static(
            b"Content-Length: 99\nX-Wasmlet-Error: forged\nX: y\n\nab",
        ))
        .unwrap();
        assert!(!r.headers.contains_key("content-length"));
        assert!(!r.headers.contains_key("x-wasmlet-error"));
    }

    #[test]
    fn refuses_a_flood_of_headers() {
        let head = |n: usize| {
            let mut out = "X-H: v\n".repeat(n);
            out.push_str("\nbody");
            parse_output(Bytes::from(out))
        };
        assert_eq!(
            head(MAX_RESPONSE_HEADERS).unwrap().headers.len(),
            MAX_RESPONSE_HEADERS
        );
        let e = head(MAX_RESPONSE_HEADERS + 1).unwrap_err();
        assert!(e.contains("more than 1000 header lines"), "{e}");
        // Far past what a header map can hold: an error, not a panic.
        assert!(head(40_000).is_err());
        // One huge line.
        let huge = format!("X-Huge: {}\n\nbody", "v".repeat(MAX_RESPONSE_HEAD));
        let e = parse_output(Bytes::from(huge)).unwrap_err();
        assert!(e.contains("larger than 64 KiB"), "{e}");
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("/a%20b/%zz%4"), "/a b/%zz%4");
        assert_eq!(percent_decode("x%2Fy"), "x/y");
        // A NUL would cut the variable or argument short in the guest.
        assert_eq!(percent_decode("/env%00INJECT=1%0a"), "/env%00INJECT=1\n");
    }
}
