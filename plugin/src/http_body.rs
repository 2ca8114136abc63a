//! Reading request bodies (bounded, `100 Continue` only once a request is accepted) and
//! writing replies.

use super::*;

/// The body length the client declared, if any.
pub(super) fn declared_length(session: &ServerSession) -> Option<u64> {
    session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Whether the client sent `Expect: 100-continue` and waits before sending its body.
pub(super) fn expects_continue(session: &ServerSession) -> bool {
    session
        .get_header("expect")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads an accepted request's body, first telling a client that sent
/// `Expect: 100-continue` to go on (HTTP/1.1; HTTP/2 clients do not wait).
pub(super) async fn read_body_after_continue(
    session: &mut ServerSession,
    limit: usize,
) -> Result<Vec<u8>, HttpReply> {
    // A body declared too large is refused by `read_body` instead.
    if expects_continue(session)
        && !session.is_http2()
        && declared_length(session).is_none_or(|n| n <= limit as u64)
    {
        let go_on = ResponseHeader::build(100, None)
            .map_err(|_| HttpReply::error(500, "internal", "could not build 100 Continue"))?;
        if session
            .write_response_header(Box::new(go_on))
            .await
            .is_err()
        {
            return Err(HttpReply::error(400, "bad_request", "connection failed"));
        }
    }
    read_body(session, limit).await
}

/// Reads the whole request body (an h2 client reusing the connection needs that), bounded in
/// size and time.
pub(super) async fn read_body(
    session: &mut ServerSession,
    limit: usize,
) -> Result<Vec<u8>, HttpReply> {
    if declared_length(session).is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // Callers read bodies only of accepted requests, within their route's limit.
    let mut body =
        Vec::with_capacity(declared_length(session).map_or(0, |n| n.min(limit as u64) as usize));
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    loop {
        let chunk = tokio::time::timeout_at(deadline, session.read_request_body()).await;
        match chunk {
            Err(_) => {
                return Err(HttpReply::error(
                    408,
                    "timeout",
                    "request body not received in time",
                ));
            }
            Ok(Err(_)) => {
                return Err(HttpReply::error(
                    400,
                    "bad_request",
                    "malformed request body",
                ));
            }
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(bytes))) => {
                if body.len() + bytes.len() > limit {
                    return Err(too_large(limit));
                }
                body.extend_from_slice(&bytes);
            }
        }
    }
}

pub(super) fn too_large(limit: usize) -> HttpReply {
    HttpReply::error(
        413,
        "payload_too_large",
        &format!("request body larger than {limit} bytes"),
    )
}

pub async fn write_reply(
    session: &mut ServerSession,
    reply: HttpReply,
    head_only: bool,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(4))?;
    header.insert_header("content-type", reply.content_type)?;
    header.insert_header("content-length", reply.body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in reply.extra_headers {
        header.insert_header(name, value)?;
    }
    let empty = head_only || reply.body.is_empty();
    session.write_response_header(Box::new(header)).await?;
    if !empty {
        session
            .write_response_body(Bytes::from(reply.body), true)
            .await?;
    }
    session.finish_body().await?;
    Ok(())
}

/// Before a request is refused without being read: a small body is drained so an h2 client
/// sees the answer, not a reset stream; a larger one is not read at all (the connection is
/// then not reused), nor one the client holds back until `100 Continue`.
pub async fn drain_before_refusing(session: &mut ServerSession) {
    if expects_continue(session)
        || read_body(session, super::REFUSED_BODY_DRAIN_BYTES)
            .await
            .is_err()
    {
        session.set_keepalive(None);
    }
}
