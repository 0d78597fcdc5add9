//! JS side of page_stream.rs: `PageStream` in ptrace.js (the page server's background lanes).

use crate::export;
use crate::exports_conn::{closed_event, conn_args, event_tsfn, message_event};
use crate::napi::value::{Typed, safe_integers};
use crate::napi::{Args, Env, Export, JsResult, Tagged, Value, range_error, type_error};
use crate::page_stream::{Event, LazyRanges, PageStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub const TABLE: &[Export] = &[
    export!("pageStreamStart\0" => stream_start),
    export!("pageStreamServe\0" => stream_serve),
    export!("pageStreamResume\0" => stream_resume),
    export!("pageStreamSend\0" => stream_send),
    export!("pageStreamClose\0" => stream_close),
    export!("pageStreamTerminate\0" => stream_terminate),
    export!("pageStreamStats\0" => stream_stats),
];

#[repr(C)]
struct JsStream {
    tag: u64,
    inner: PageStream,
}

impl Tagged for JsStream {
    const TAG: u64 = 0x6c7a_6d69_675f_7073; // "lzmig_ps"
}

impl Drop for JsStream {
    fn drop(&mut self) {
        // Collected while still connected: nobody can be told about it any more.
        self.inner.terminate();
    }
}

fn event_value(env: Env, e: Event) -> JsResult<Value> {
    match e {
        Event::Message(data) => message_event(env, &data),
        Event::Sent(token) => env.object_with(&[(c"type", env.str("sent")?), (c"token", env.num(token)?)]),
        Event::Refused { pid, address, pages } => env.object_with(&[
            (c"type", env.str("refused")?),
            (c"pid", env.num(pid)?),
            (c"address", env.f64(address as f64)?),
            (c"pages", env.num(pages)?),
        ]),
        Event::ReadFailed { pid, address, error } => env.object_with(&[
            (c"type", env.str("read-failed")?),
            (c"pid", env.num(pid)?),
            (c"address", env.f64(address as f64)?),
            (c"error", env.str(&error)?),
        ]),
        Event::Closed(err) => closed_event(env, err),
    }
}

/// pageStreamStart(fd, head: Uint8Array, bufferBytes, greeting: Uint8Array, onEvent(event))
fn stream_start(env: Env, a: &Args) -> JsResult<Value> {
    let (fd, head, buffer_bytes) = conn_args(env, a, "bufferBytes")?;
    // At 3, between head and the size: the greeting (the handshake's response) goes out first.
    let greeting = env.to_bytes(a.get(3, "greeting")?, "greeting")?.as_slice().to_vec();
    // The server's listening socket keeps the process alive while it serves; a connection
    // left to itself must not.
    let tsfn = event_tsfn(env, a, 4, "lazymig-page-stream", event_value)?;
    let inner = PageStream::start(fd, head, greeting, buffer_bytes, Box::new(move |e| {
        tsfn.call(e);
    }))?;
    env.external(Arc::new(JsStream { tag: JsStream::TAG, inner }))
}

/// pageStreamServe(stream, ranges: Float64Array [pid, start, end, ...], maxPages)
fn stream_serve(env: Env, a: &Args) -> JsResult<Value> {
    let s = env.get_external::<JsStream>(a.get(0, "stream")?, "stream")?;
    let words = match env.to_typed(a.get(1, "ranges")?, "ranges")? {
        Typed::F64(w) => safe_integers(w, "ranges")?,
        _ => return type_error("ranges must be a Float64Array of [pid, start, end] triples"),
    };
    if !words.len().is_multiple_of(3) {
        return range_error(format!("ranges must hold [pid, start, end] triples, got {} numbers", words.len()));
    }
    let mut triples = Vec::with_capacity(words.len() / 3);
    for t in words.chunks_exact(3) {
        if t[0] == 0 || t[0] > i32::MAX as u64 || t[2] <= t[1] {
            return range_error(format!("bad range: pid {} [{:#x}, {:#x})", t[0], t[1], t[2]));
        }
        triples.push((t[0] as i32, t[1], t[2]));
    }
    let max_pages = env.to_u64(a.get(2, "maxPages")?, "maxPages")?;
    s.inner.serve(LazyRanges::new(&triples), max_pages);
    env.undefined()
}

fn stream_resume(env: Env, a: &Args) -> JsResult<Value> {
    env.get_external::<JsStream>(a.get(0, "stream")?, "stream")?.inner.resume();
    env.undefined()
}

/// pageStreamSend(stream, payload, token): a binary frame, written between replies.
fn stream_send(env: Env, a: &Args) -> JsResult<Value> {
    let s = env.get_external::<JsStream>(a.get(0, "stream")?, "stream")?;
    let payload = env.to_bytes(a.get(1, "payload")?, "payload")?;
    let token = env.to_u64(a.get(2, "token")?, "token")?;
    s.inner.send(payload.as_slice(), token);
    env.undefined()
}

/// pageStreamClose(stream, code, reason)
fn stream_close(env: Env, a: &Args) -> JsResult<Value> {
    let s = env.get_external::<JsStream>(a.get(0, "stream")?, "stream")?;
    let code = env.to_u64(a.get(1, "code")?, "code")?;
    if !(1000..5000).contains(&code) {
        return range_error(format!("close code must be 1000..4999, got {code}"));
    }
    let reason = env.to_string(a.get(2, "reason")?, "reason")?;
    s.inner.close(code as u16, &reason);
    env.undefined()
}

fn stream_terminate(env: Env, a: &Args) -> JsResult<Value> {
    env.get_external::<JsStream>(a.get(0, "stream")?, "stream")?.inner.terminate();
    env.undefined()
}

fn stream_stats(env: Env, a: &Args) -> JsResult<Value> {
    let s = env.get_external::<JsStream>(a.get(0, "stream")?, "stream")?;
    let st = s.inner.stats();
    env.object_with(&[
        (c"requests", env.num(st.requests.load(Ordering::Relaxed))?),
        (c"pagesSent", env.num(st.pages.load(Ordering::Relaxed))?),
        (c"bytesSent", env.num(st.bytes.load(Ordering::Relaxed))?),
    ])
}
