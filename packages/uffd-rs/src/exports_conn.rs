//! What the JS sides of the native connection threads share (PageStream at the source,
//! PageReceiver at the destination, and the background installer's page spans): the
//! arguments they are started with, how their events reach JS, and byte spans of pages.

use crate::napi::tsfn::{Handler, Tsfn};
use crate::napi::{Args, Env, JsResult, Kind, Value, range_error, type_error};
use crate::sys::page_size;
use std::os::fd::RawFd;

/// Largest buffer a connection thread may be asked to make.
const MAX_BUFFER_BYTES: u64 = 1 << 30;

/// The common start arguments: (fd, head: Uint8Array, `bytes_name`: a buffer size), at 0..3.
pub fn conn_args(env: Env, a: &Args, bytes_name: &'static str) -> JsResult<(RawFd, Vec<u8>, usize)> {
    let fd = env.to_fd(a.get(0, "fd")?)?;
    let head = env.to_bytes(a.get(1, "head")?, "head")?.as_slice().to_vec();
    let bytes = env.to_u64(a.get(2, bytes_name)?, bytes_name)?;
    if bytes > MAX_BUFFER_BYTES {
        return range_error(format!("{bytes_name} must be at most 1 GiB, got {bytes}"));
    }
    Ok((fd, head, bytes as usize))
}

/// A thread-safe function that hands a connection thread's events to `cb` (argument `at`)
/// as the objects `to_js` makes. It does not keep Node alive: whoever waits for what the
/// connection brings has its own handle on the event loop.
pub fn event_tsfn<E: Send + 'static>(env: Env, a: &Args, at: usize, name: &str, to_js: fn(Env, E) -> JsResult<Value>) -> JsResult<Tsfn<E>> {
    let cb = a.get(at, "onEvent")?;
    if env.kind(cb)? != Kind::Function {
        return type_error("onEvent must be a function");
    }
    let handler: Handler<E> = Box::new(move |env, cb, e| {
        let Some(cb) = cb else { return Ok(()) };
        let v = to_js(env, e)?;
        env.call(cb, &[v])?;
        Ok(())
    });
    let tsfn = Tsfn::new(env, Some(cb), name, handler, None)?;
    tsfn.set_ref(env, false)?;
    Ok(tsfn)
}

/// `{ type: 'closed', error }`: the last event of a connection thread (no error: a clean close).
pub fn closed_event(env: Env, err: Option<String>) -> JsResult<Value> {
    let error = match err {
        Some(e) => env.str(&e)?,
        None => env.undefined()?,
    };
    env.object_with(&[(c"type", env.str("closed")?), (c"error", error)])
}

/// `{ type: 'message', data }`: a frame the thread passes on to JS.
pub fn message_event(env: Env, data: &[u8]) -> JsResult<Value> {
    env.object_with(&[(c"type", env.str("message")?), (c"data", env.uint8_array(data)?)])
}

/// Arguments (id, offset, len) at `at`..: bytes [offset, offset + len), whole pages, of
/// what request or job `id` carries. Returns (id, offset, end).
pub fn page_span(env: Env, a: &Args, at: usize) -> JsResult<(u64, u64, u64)> {
    let id = env.to_u64(a.get(at, "id")?, "id")?;
    let offset = env.to_u64(a.get(at + 1, "offset")?, "offset")?;
    let len = env.to_u64(a.get(at + 2, "len")?, "len")?;
    let ps = page_size() as u64;
    if !offset.is_multiple_of(ps) || !len.is_multiple_of(ps) {
        return range_error(format!("offset {offset} and len {len} must be whole pages"));
    }
    Ok((id, offset, offset.saturating_add(len)))
}
