//! JS side of page_receiver.rs: `PageReceiver` in index.js (the page client's background
//! lane), and the `InstallTarget`s its requests name.

use crate::background::{End, Target};
use crate::export;
use crate::fault_loop::FaultLoop;
use crate::exports_conn::{closed_event, conn_args, event_tsfn, message_event, page_span};
use crate::napi::{Args, Env, Export, JsResult, Tagged, Value, range_error};
use crate::page_receiver::{Event, Lane, Now, PageReceiver};
use crate::sys::page_size;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub const TABLE: &[Export] = &[
    export!("installTargetCreate\0" => target_create),
    export!("pageReceiverStart\0" => receiver_start),
    export!("pageReceiverRequest\0" => receiver_request),
    export!("pageReceiverCancel\0" => receiver_cancel),
    export!("pageReceiverPresent\0" => receiver_present),
    export!("pageReceiverInstallNow\0" => receiver_install_now),
    export!("pageReceiverSend\0" => receiver_send),
    export!("pageReceiverPing\0" => receiver_ping),
    export!("pageReceiverHold\0" => receiver_hold),
    export!("pageReceiverClose\0" => receiver_close),
    export!("pageReceiverTerminate\0" => receiver_terminate),
    export!("pageReceiverState\0" => receiver_state),
];

#[repr(C)]
struct JsTarget {
    tag: u64,
    target: Target,
}

impl Tagged for JsTarget {
    const TAG: u64 = 0x6c7a_6d69_675f_7467; // "lzmig_tg"
}

/// installTargetCreate(loop, fd, dst): where a reply's pages may go, valid until the loop
/// reads an event from fd. The epoch is taken now: the JS thread has seen every event read.
fn target_create(env: Env, a: &Args) -> JsResult<Value> {
    let fault_loop = env.get_external::<FaultLoop>(a.get(0, "loop")?, "loop")?;
    let fd = env.to_fd(a.get(1, "fd")?)?;
    let dst = env.to_u64(a.get(2, "dst")?, "dst")?;
    if !dst.is_multiple_of(page_size() as u64) {
        return range_error(format!("dst {dst:#x} must be page-aligned"));
    }
    let Some(gate) = fault_loop.gate(fd) else {
        return range_error(format!("uffd {fd} is not watched by this event-loop FaultLoop"));
    };
    let epoch = gate.epoch();
    env.external(Arc::new(JsTarget { tag: JsTarget::TAG, target: Target { gate, epoch, dst } }))
}

#[repr(C)]
struct JsReceiver {
    tag: u64,
    inner: PageReceiver,
}

impl Tagged for JsReceiver {
    const TAG: u64 = 0x6c7a_6d69_675f_7072; // "lzmig_pr"
}

impl Drop for JsReceiver {
    fn drop(&mut self) {
        // Collected while still connected: nobody can be told about it any more.
        self.inner.terminate();
    }
}

fn end_value(env: Env, end: End) -> JsResult<Value> {
    env.str(end.name())
}

fn event_value(env: Env, e: Event) -> JsResult<Value> {
    match e {
        Event::Installed { id, bytes, end } => env.object_with(&[
            (c"type", env.str("installed")?),
            (c"id", env.num(id)?),
            (c"bytes", env.num(bytes)?),
            (c"end", end_value(env, end)?),
        ]),
        Event::BadReply { id, why } => env.object_with(&[(c"type", env.str("bad-reply")?), (c"id", env.num(id)?), (c"error", env.str(&why)?)]),
        Event::Message(data) => message_event(env, &data),
        Event::Closed(err) => closed_event(env, err),
    }
}

/// pageReceiverStart(fd, head: Uint8Array, maxBytes, onEvent(event), lane?: 'background' | 'fault')
fn receiver_start(env: Env, a: &Args) -> JsResult<Value> {
    let (fd, head, max_bytes) = conn_args(env, a, "maxBytes")?;
    let lane = match a.opt(4)? {
        None => Lane::Background,
        Some(v) => match env.to_string(v, "lane")?.as_str() {
            "background" => Lane::Background,
            "fault" => Lane::Fault,
            other => return range_error(format!("lane must be 'background' or 'fault', not {other:?}")),
        },
    };
    let tsfn = event_tsfn(env, a, 3, "lazymig-page-receiver", event_value)?;
    let inner = PageReceiver::start(fd, head, max_bytes, lane, Arc::new(move |e| {
        tsfn.call(e);
    }))?;
    env.external(Arc::new(JsReceiver { tag: JsReceiver::TAG, inner }))
}

/// pageReceiverRequest(receiver, id, pid, address, pages, target, payload)
fn receiver_request(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    let id = env.to_u64(a.get(1, "id")?, "id")?;
    let pid = env.to_u64(a.get(2, "pid")?, "pid")?;
    let address = env.to_u64(a.get(3, "address")?, "address")?;
    let pages = env.to_u64(a.get(4, "pages")?, "pages")?;
    let t = env.get_external::<JsTarget>(a.get(5, "target")?, "target")?;
    let payload = env.to_bytes(a.get(6, "payload")?, "payload")?;
    if pages == 0 {
        return range_error("pages must be at least 1");
    }
    r.inner.request(id, pid, address, pages, t.target.clone(), payload.as_slice())?;
    env.undefined()
}

fn receiver_cancel(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    r.inner.cancel(env.to_u64(a.get(1, "id")?, "id")?);
    env.undefined()
}

/// pageReceiverPresent(receiver, id, offset, len): whole pages of request id's data that
/// are in the process already.
fn receiver_present(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    let (id, from, to) = page_span(env, a, 1)?;
    r.inner.present(id, from, to);
    env.undefined()
}

/// pageReceiverInstallNow(receiver, id, offset, len): 'installed', 'absent' (not read
/// whole yet), or how it stopped ('stale', 'again', 'gone', 'failed').
fn receiver_install_now(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    let (id, from, to) = page_span(env, a, 1)?;
    match r.inner.install_now(id, from, to) {
        Now::Installed => env.str("installed"),
        Now::Absent => env.str("absent"),
        Now::Ended(end) => end_value(env, end),
    }
}

fn receiver_send(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    r.inner.send(env.to_bytes(a.get(1, "payload")?, "payload")?.as_slice())?;
    env.undefined()
}

fn receiver_ping(env: Env, a: &Args) -> JsResult<Value> {
    env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?.inner.ping()?;
    env.undefined()
}

fn receiver_hold(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    r.inner.hold(env.to_bool(a.get(1, "on")?, "on")?)?;
    env.undefined()
}

fn receiver_close(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    let code = env.to_u64(a.get(1, "code")?, "code")?;
    if !(1000..5000).contains(&code) {
        return range_error(format!("close code must be 1000..4999, got {code}"));
    }
    r.inner.close(code as u16);
    env.undefined()
}

fn receiver_terminate(env: Env, a: &Args) -> JsResult<Value> {
    env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?.inner.terminate();
    env.undefined()
}

fn receiver_state(env: Env, a: &Args) -> JsResult<Value> {
    let r = env.get_external::<JsReceiver>(a.get(0, "receiver")?, "receiver")?;
    let st = r.inner.stats();
    env.object_with(&[
        (c"silentMs", env.num(r.inner.silent_ms())?),
        (c"replies", env.num(st.replies.load(Ordering::Relaxed))?),
        (c"pagesInstalled", env.num(st.pages.load(Ordering::Relaxed))?),
        (c"bytesReceived", env.num(st.bytes.load(Ordering::Relaxed))?),
    ])
}
