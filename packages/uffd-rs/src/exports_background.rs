//! JS side of background.rs: `BackgroundInstaller` in index.js.
//!
//! A job's source is a JS Buffer/Uint8Array: a reference to it is held from submit until
//! its completion has been delivered on the JS thread, so the worker reads live memory.

use crate::background::{Completion, Installer, Job, SrcBytes, Target};
use crate::export;
use crate::fault_loop::FaultLoop;
use crate::napi::ffi;
use crate::napi::tsfn::{Handler, Tsfn};
use crate::napi::{Args, Env, Export, JsError, JsResult, Kind, Tagged, Value, range_error, type_error};
use crate::sys::page_size;
use std::ptr;
use std::sync::{Arc, Mutex};

pub const TABLE: &[Export] = &[
    export!("installerCreate\0" => installer_create),
    export!("installerSubmit\0" => installer_submit),
    export!("installerPresent\0" => installer_present),
    export!("installerStop\0" => installer_stop),
];

/// A reference that keeps a job's source buffer alive.
struct BufRef(ffi::napi_ref);
// SAFETY: created and deleted on the JS thread only (submit, the completion handler,
// stop); worker threads merely carry it.
unsafe impl Send for BufRef {}

struct Keep {
    id: f64,
    buf: BufRef,
}

fn delete_ref(env: Env, r: BufRef) {
    // SAFETY: JS thread (we hold an Env); the reference was created by submit and is
    // deleted exactly once (it is moved in here).
    unsafe { ffi::napi_delete_reference(env.raw(), r.0) };
}

#[repr(C)]
struct JsInstaller {
    tag: u64,
    fault_loop: Arc<FaultLoop>,
    inner: Installer<Keep>,
    /// Taken by stop(): workers hold the last clones, so it is released once they exit.
    tsfn: Mutex<Option<Arc<Tsfn<Completion<Keep>>>>>,
}

impl Tagged for JsInstaller {
    const TAG: u64 = 0x6c7a_6d69_675f_6269; // "lzmig_bi"
}

impl Drop for JsInstaller {
    fn drop(&mut self) {
        // Garbage-collected without stop(): the references of jobs never started are
        // leaked (no env here), which only keeps their buffers alive.
        let left = self.inner.stop();
        std::mem::forget(left);
    }
}

/// installerCreate(loop, onDone(id, bytes, end), threads)
fn installer_create(env: Env, a: &Args) -> JsResult<Value> {
    let fault_loop = env.get_external::<FaultLoop>(a.get(0, "loop")?, "loop")?;
    let cb = a.get(1, "onDone")?;
    if env.kind(cb)? != Kind::Function {
        return type_error("onDone must be a function");
    }
    let threads = env.to_u64(a.get(2, "threads")?, "threads")?;
    if !(1..=16).contains(&threads) {
        return range_error(format!("threads must be 1..16, got {threads}"));
    }
    let handler: Handler<Completion<Keep>> = Box::new(|env, cb, c| {
        delete_ref(env, c.keep.buf);
        let Some(cb) = cb else { return Ok(()) };
        env.call(cb, &[env.f64(c.keep.id)?, env.num(c.bytes)?, env.str(c.end.name())?])?;
        Ok(())
    });
    let tsfn = Arc::new(Tsfn::new(env, Some(cb), "lazymig-background-install", handler, None)?);
    // Completions never keep Node alive: whoever submits has its own reasons to run.
    tsfn.set_ref(env, false)?;
    let for_workers = tsfn.clone();
    let inner = Installer::start(threads as usize, Arc::new(move |c| {
        for_workers.call(c);
    }))
    .map_err(|e| JsError::Plain(format!("cannot start the background install threads: {e}")))?;
    env.external(Arc::new(JsInstaller { tag: JsInstaller::TAG, fault_loop, inner, tsfn: Mutex::new(Some(tsfn)) }))
}

/// installerSubmit(installer, id, fd, dst, data)
fn installer_submit(env: Env, a: &Args) -> JsResult<Value> {
    let inst = env.get_external::<JsInstaller>(a.get(0, "installer")?, "installer")?;
    let id = env.to_u64(a.get(1, "id")?, "id")?;
    let fd = env.to_fd(a.get(2, "fd")?)?;
    let dst = env.to_u64(a.get(3, "dst")?, "dst")?;
    let data_v = a.get(4, "data")?;
    let data = env.to_bytes(data_v, "data")?;
    let ps = page_size() as u64;
    if !dst.is_multiple_of(ps) || data.len == 0 || !(data.len as u64).is_multiple_of(ps) {
        return range_error(format!("dst {dst:#x} must be page-aligned and data a non-zero whole number of pages ({} bytes)", data.len));
    }
    if inst.tsfn.lock().unwrap().is_none() {
        return Err(JsError::Plain("the background installer is stopped".into()));
    }
    let Some(gate) = inst.fault_loop.gate(fd) else {
        return range_error(format!("uffd {fd} is not watched by this event-loop FaultLoop"));
    };
    let mut r: ffi::napi_ref = ptr::null_mut();
    // SAFETY: JS thread, data_v is a live value of this call.
    crate::napi::error::check(unsafe { ffi::napi_create_reference(env.raw(), data_v, 1, &mut r) })?;
    // The epoch now: the JS thread has handled every event read so far (it reads them).
    let epoch = gate.epoch();
    inst.inner.submit(Job { id, target: Target { gate, epoch, dst }, src: SrcBytes { ptr: data.ptr, len: data.len as u64 }, keep: Keep { id: id as f64, buf: BufRef(r) } });
    env.undefined()
}

/// installerPresent(installer, id, offset, len): bytes [offset, offset+len) of job id's data
/// are in the process already; the job passes over them.
fn installer_present(env: Env, a: &Args) -> JsResult<Value> {
    let inst = env.get_external::<JsInstaller>(a.get(0, "installer")?, "installer")?;
    let (id, from, to) = crate::exports_conn::page_span(env, a, 1)?;
    inst.inner.present(id, from, to);
    env.undefined()
}

/// installerStop(installer): waits for the workers (each ends its job after the current
/// slice, reported as 'stale'); jobs never started are dropped without a completion.
fn installer_stop(env: Env, a: &Args) -> JsResult<Value> {
    let inst = env.get_external::<JsInstaller>(a.get(0, "installer")?, "installer")?;
    for j in inst.inner.stop() {
        delete_ref(env, j.keep.buf);
    }
    inst.tsfn.lock().unwrap().take();
    env.undefined()
}
