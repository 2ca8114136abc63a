//! `http_listen`: a plain-HTTP listener that sends every request to HTTPS with a `308
//! Permanent Redirect` (method and body kept) to the same host and path on the TLS
//! listener's port, as an edge in front of sites is expected to — except the ACME CA's
//! HTTP-01 requests for `/.well-known/acme-challenge/<token>` while an order is in flight.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::acme::ChallengeTokens;
use crate::http::drain_before_refusing;
use crate::metrics::metrics;

/// Answers every request with a redirect to `https://<host>[:<port>]<path>?<query>`.
pub struct RedirectToHttps {
    /// The HTTPS listener's port (left out of the location when it is 443).
    pub https_port: u16,
    /// `tls: {acme}`: the tokens of the order in flight.
    pub challenges: Option<Arc<ChallengeTokens>>,
}

/// Where the CA fetches an HTTP-01 token (RFC 8555, section 8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

impl RedirectToHttps {
    /// Where a request for `host` (the `Host` header, with or without a port) and
    /// `path_and_query` is sent; `None` for a missing or malformed host.
    pub fn location(&self, host: Option<&str>, path_and_query: &str) -> Option<String> {
        let host = host?.trim();
        let name = match host.strip_prefix('[') {
            // An IPv6 literal keeps its brackets; its port, if any, follows them.
            Some(rest) => format!("[{}]", rest.split_once(']')?.0),
            None => host
                .rsplit_once(':')
                .map_or(host, |(name, _)| name)
                .to_string(),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || "-._[]:".contains(c);
        if name.is_empty() || name == "[]" || !name.chars().all(valid) {
            return None;
        }
        let port = match self.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let path = if path_and_query.starts_with('/') {
            path_and_query
        } else {
            "/"
        };
        Some(format!("https://{name}{port}{path}"))
    }
}

#[async_trait]
impl ServeHttp for RedirectToHttps {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let header = session.req_header();
        let host = header
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(header.uri.authority().map(|a| a.as_str()))
            .map(str::to_string);
        let target = header
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let path = header.uri.path().to_string();
        drain_before_refusing(session).await;
        if let (Some(tokens), Some(token)) = (&self.challenges, path.strip_prefix(CHALLENGE_PREFIX))
        {
            return challenge_answer(tokens, token, started);
        }
        let location = self.location(host.as_deref(), &target);
        let (status, body) = match &location {
            Some(_) => (308, String::new()),
            None => (
                400,
                "{\"error\":\"bad_request\",\"message\":\"a Host header naming this site is needed \
                 to redirect to HTTPS\"}"
                    .to_string(),
            ),
        };
        metrics().record_http("redirect", status, started.elapsed());
        let mut response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(location) = location {
            response = response.header(http::header::LOCATION, location);
        }
        response.body(body.into_bytes()).unwrap_or_default()
    }
}

/// The key authorization for `token` (`text/plain`), or a 404 for a token no order issued.
fn challenge_answer(tokens: &ChallengeTokens, token: &str, started: Instant) -> Response<Vec<u8>> {
    let (status, body, kind) = match tokens.answer(token) {
        Some(answer) => (200, answer, "text/plain"),
        None => (
            404,
            "{\"error\":\"not_found\",\"message\":\"no ACME challenge with this token is \
             in flight\"}"
                .to_string(),
            "application/json",
        ),
    };
    metrics().record_http("acme_challenge", status, started.elapsed());
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CONTENT_TYPE, kind)
        .body(body.into_bytes())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::RedirectToHttps;

    #[test]
    fn redirects_keep_the_host_and_path_and_take_the_https_port() {
        let on = |port| RedirectToHttps {
            https_port: port,
            challenges: None,
        };
        assert_eq!(
            on(8443)
                .location(Some("example.com:8080"), "/a/b?c=1")
                .as_deref(),
            Some("https://example.com:8443/a/b?c=1")
        );
        assert_eq!(
            on(443).location(Some("example.com"), "/").as_deref(),
            Some("https://example.com/")
        );
        assert_eq!(
            on(443).location(Some("[::1]:80"), "/x").as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(
            on(4444).location(Some("127.0.0.1"), "*").as_deref(),
            Some("https://127.0.0.1:4444/")
        );
        for bad in [
            None,
            Some(""),
            Some("a b"),
            Some("evil.com/@x"),
            Some("[::1"),
            Some(":80"),
        ] {
            assert_eq!(on(443).location(bad, "/"), None, "{bad:?}");
        }
    }
}
