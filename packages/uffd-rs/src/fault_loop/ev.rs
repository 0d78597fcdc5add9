//! Event-loop mode: Node's libuv loop watches each uffd with a `uv_poll_t`; when one is
//! readable, the poll callback (on the JS thread) reads everything pending on it and calls
//! onBatch synchronously, inside a callback scope (`napi_make_callback`), so promise jobs
//! and nextTicks queued by onBatch run right after it, as after any Node I/O callback.
//!
//! Why: an event (REMOVE/UNMAP/REMAP) is acknowledged by reading it (the kernel then lets
//! the target's madvise/munmap/mremap proceed). Read by a separate thread, the target may
//! zap a range while JS, not told yet, installs old data into it. Read here, there is no
//! gap: any install JS made before the read failed with EAGAIN (the kernel's
//! mmap_changing), and no JS runs between the read and onBatch receiving the event.
//!
//! Liveness: the poll handles are always unref'd; one `uv_async_t` that is never sent
//! carries the loop's ref/unref state (so, as in thread mode, a running ref'd loop keeps
//! Node alive even before any uffd is added, and an unref'd one never does).
//!
//! Lifetimes: handle memory and its `PollCtx` are freed in the close callback, which libuv
//! runs on a later loop iteration; `EvLoop` lives as long as any of them (Arc). Everything
//! here runs on the JS thread: entry points take an `Env` (exports.rs), the rest are libuv
//! and Node-API callbacks of that same thread. An env cleanup hook closes everything if the
//! environment goes away first (worker termination, process exit).

use super::{Fault, LoopEvent, Pending, READ_MSGS, batch_to_js, error_condition, read_pending};
use crate::background::{Gate, NearFaults};
use crate::napi::error::{JsResult, check, panic_message};
use crate::napi::ffi::{self, napi_env, napi_value};
use crate::napi::uv::{self, uv_handle_t, uv_loop_t};
use crate::napi::{Env, Value};
use crate::sys::uffd::{UFFD_MSG_SIZE, UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_WP};
use crate::sys::{SysError, SysResult, page_size};
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::{Arc, Mutex};

pub struct EvLoop {
    st: Mutex<State>,
}

struct State {
    env: napi_env,
    uv_loop: *mut uv_loop_t,
    /// Strong reference to onBatch; null once stopped.
    on_batch: ffi::napi_ref,
    polls: HashMap<RawFd, *mut uv_handle_t>,
    /// Per watched uffd: orders background installs with this loop's reads (background.rs).
    gates: HashMap<RawFd, Arc<Gate>>,
    /// Faults the gates' connections took (background.rs, `Arrivals`).
    near: Arc<NearFaults>,
    /// The never-sent async handle that keeps Node alive while ref'd; null once closed.
    keepalive: *mut uv_handle_t,
    stopped: bool,
    hook_registered: bool,
    buf: Vec<[u8; UFFD_MSG_SIZE]>,
}

// SAFETY: the raw pointers (env, libuv loop and handles, napi_ref) are only dereferenced
// on the JS thread that created them (see the module doc); the Mutex only satisfies the
// type system (it is never contended) and keeps re-entrant JS calls from aliasing `State`.
unsafe impl Send for EvLoop {}
unsafe impl Sync for EvLoop {}

/// What a poll handle's `data` points to.
struct PollCtx {
    ev: Arc<EvLoop>,
    fd: RawFd,
}

unsafe extern "C" fn keepalive_cb(_h: *mut uv_handle_t) {}

unsafe extern "C" fn close_keepalive(h: *mut uv_handle_t) {
    // SAFETY: libuv is done with the handle (close callback); memory from alloc_handle.
    unsafe { uv::free_handle(h) };
}

unsafe extern "C" fn close_poll(h: *mut uv_handle_t) {
    // SAFETY: data is the PollCtx leaked in `add`, freed exactly once, here.
    unsafe {
        let ctx = uv::uv_handle_get_data(h) as *mut PollCtx;
        if !ctx.is_null() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(Box::from_raw(ctx))));
        }
        uv::free_handle(h);
    }
}

unsafe extern "C" fn on_poll(h: *mut uv_handle_t, status: c_int, _events: c_int) {
    // SAFETY: data is the live PollCtx of this handle (freed only in its close callback,
    // which libuv runs after any callback of the handle).
    let (ev, fd) = unsafe {
        let ctx = &*(uv::uv_handle_get_data(h) as *const PollCtx);
        (ctx.ev.clone(), ctx.fd)
    };
    // A panic must not unwind into libuv (C).
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ev.on_readable(h, fd, status)));
}

unsafe extern "C" fn on_env_teardown(arg: *mut c_void) {
    // SAFETY: arg is the EvLoop registered in `start`; the hook is removed before the
    // EvLoop can be freed (shutdown runs before the last Arc goes: FaultLoop::drop).
    let ev = unsafe { &*(arg as *const EvLoop) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ev.shutdown(false)));
}

impl EvLoop {
    pub fn start(env: Env, on_batch: Value) -> JsResult<Arc<EvLoop>> {
        let mut uv_loop: *mut uv_loop_t = ptr::null_mut();
        // SAFETY: JS thread; out-pointer is local.
        check(unsafe { uv::napi_get_uv_event_loop(env.raw(), &mut uv_loop) })?;
        let keepalive = uv::alloc_handle(uv::UV_ASYNC, "async")?;
        // SAFETY: fresh zeroed handle memory of libuv's size for UV_ASYNC; JS thread.
        let rc = unsafe { uv::uv_async_init(uv_loop, keepalive, Some(keepalive_cb)) };
        if rc != 0 {
            // SAFETY: not initialized, so libuv never saw it.
            unsafe { uv::free_handle(keepalive) };
            return Err(uv::uv_error("uv_async_init", rc).into());
        }
        let mut on_batch_ref: ffi::napi_ref = ptr::null_mut();
        // SAFETY: JS thread; on_batch is a live function value of this call.
        if let Err(e) = check(unsafe { ffi::napi_create_reference(env.raw(), on_batch, 1, &mut on_batch_ref) }) {
            // SAFETY: initialized handle, closed once; freed in the close callback.
            unsafe { uv::uv_close(keepalive, Some(close_keepalive)) };
            return Err(e);
        }
        let ev = Arc::new(EvLoop {
            st: Mutex::new(State {
                env: env.raw(),
                uv_loop,
                on_batch: on_batch_ref,
                polls: HashMap::new(),
                gates: HashMap::new(),
                near: Arc::default(),
                keepalive,
                stopped: false,
                hook_registered: false,
                buf: vec![[0u8; UFFD_MSG_SIZE]; READ_MSGS],
            }),
        });
        // SAFETY: JS thread; the arg stays valid until the hook is removed (see
        // on_env_teardown).
        let hooked = unsafe { ffi::napi_add_env_cleanup_hook(env.raw(), on_env_teardown, Arc::as_ptr(&ev) as *mut c_void) };
        ev.st.lock().unwrap().hook_registered = hooked == ffi::NAPI_OK;
        if let Err(e) = check(hooked) {
            ev.shutdown(false);
            return Err(e);
        }
        Ok(ev)
    }

    /// Polls `fd` (already O_NONBLOCK). One uffd per loop at a time: libuv refuses a
    /// second handle on the same fd (EEXIST), including one of another event-loop
    /// FaultLoop on the same thread.
    pub fn add(self: &Arc<Self>, fd: RawFd) -> SysResult<()> {
        let mut st = self.st.lock().unwrap();
        if st.stopped {
            return Err(SysError::new("FaultLoop.add", libc::EINVAL).because("the loop is stopped"));
        }
        if st.polls.contains_key(&fd) {
            return Err(SysError::new("uv_poll_init", libc::EEXIST).because(format!("fd {fd} is already watched by this loop")));
        }
        let gate = Gate::new(fd, st.near.clone())?;
        let h = uv::alloc_handle(uv::UV_POLL, "poll")?;
        // SAFETY: JS thread; h is fresh handle memory of libuv's size for UV_POLL.
        let rc = unsafe { uv::uv_poll_init(st.uv_loop, h, fd) };
        if rc != 0 {
            // SAFETY: a failed init leaves the handle unknown to libuv.
            unsafe { uv::free_handle(h) };
            return Err(uv::uv_error("uv_poll_init", rc).because(format!("fd {fd}")));
        }
        let ctx = Box::into_raw(Box::new(PollCtx { ev: self.clone(), fd }));
        // SAFETY: initialized handle; ctx freed in close_poll.
        unsafe {
            uv::uv_handle_set_data(h, ctx.cast());
            uv::uv_unref(h);
        }
        // SAFETY: as above.
        let rc = unsafe { uv::uv_poll_start(h, uv::UV_READABLE, on_poll) };
        if rc != 0 {
            // SAFETY: initialized, closed once; close_poll frees ctx and memory.
            unsafe { uv::uv_close(h, Some(close_poll)) };
            return Err(uv::uv_error("uv_poll_start", rc).because(format!("fd {fd}")));
        }
        st.polls.insert(fd, h);
        st.gates.insert(fd, gate);
        Ok(())
    }

    /// Stops polling `fd`; synchronous (uv_poll_stop takes it out of the loop's epoll set
    /// at once), so the caller may close the fd right after.
    pub fn remove(&self, fd: RawFd) -> SysResult<()> {
        let mut st = self.st.lock().unwrap();
        if let Some(g) = st.gates.remove(&fd) {
            g.close();
        }
        match st.polls.remove(&fd) {
            Some(h) => {
                close_poll_handle(h);
                Ok(())
            }
            None if st.stopped => Ok(()),
            None => {
                // SAFETY: F_GETFD on an fd number has no side effects.
                let errno = if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 { libc::EBADF } else { libc::ENOENT };
                Err(SysError::new("uv_poll_stop", errno).because(format!("fd {fd} is not watched by this loop")))
            }
        }
    }

    /// What the gates' connections took.
    pub fn near(&self) -> Arc<NearFaults> {
        self.st.lock().unwrap().near.clone()
    }

    /// The gate of a watched uffd (JS thread).
    pub fn gate(&self, fd: RawFd) -> Option<Arc<Gate>> {
        self.st.lock().unwrap().gates.get(&fd).cloned()
    }

    pub fn set_ref(&self, keep_alive: bool) {
        let st = self.st.lock().unwrap();
        if !st.keepalive.is_null() {
            // SAFETY: live handle, JS thread.
            unsafe {
                if keep_alive { uv::uv_ref(st.keepalive) } else { uv::uv_unref(st.keepalive) }
            }
        }
    }

    /// Stops for good: closes every handle (no poll callback runs after this returns) and
    /// drops the onBatch reference. Idempotent. `remove_hook`: false when called from the
    /// cleanup hook itself.
    pub fn shutdown(&self, remove_hook: bool) {
        let mut st = self.st.lock().unwrap();
        if st.stopped {
            return;
        }
        st.stopped = true;
        for (_, h) in st.polls.drain() {
            close_poll_handle(h);
        }
        for (_, g) in st.gates.drain() {
            g.close();
        }
        let ka = std::mem::replace(&mut st.keepalive, ptr::null_mut());
        if !ka.is_null() {
            // SAFETY: live handle, closed once.
            unsafe { uv::uv_close(ka, Some(close_keepalive)) };
        }
        let r = std::mem::replace(&mut st.on_batch, ptr::null_mut());
        if !r.is_null() {
            // SAFETY: JS thread, reference created in start, deleted once.
            unsafe { ffi::napi_delete_reference(st.env, r) };
        }
        if std::mem::replace(&mut st.hook_registered, false) && remove_hook {
            // SAFETY: same (fun, arg) pair as registered.
            unsafe { ffi::napi_remove_env_cleanup_hook(st.env, on_env_teardown, self as *const EvLoop as *mut c_void) };
        }
    }

    /// The poll callback: read everything pending on `fd`, then hand it to onBatch.
    fn on_readable(&self, h: *mut uv_handle_t, fd: RawFd, status: c_int) {
        let page_mask = !(page_size() as u64 - 1);
        let mut faults: Vec<Fault> = Vec::new();
        let mut events: Vec<LoopEvent> = Vec::new();
        let (env, on_batch, gate) = {
            let mut st = self.st.lock().unwrap();
            // Stopped, or removed (maybe by an earlier callback of this same iteration).
            if st.stopped || st.polls.get(&fd) != Some(&h) {
                return;
            }
            let mut failed = None;
            // Under the gate: no background install is in progress while events are read,
            // and those submitted before an event is read will not install anything more.
            let gate = st.gates.get(&fd).cloned();
            let buf = &mut st.buf;
            let mut read = || {
                let r = read_pending(fd, buf, page_mask, &mut faults, &mut events);
                (r, touched_ranges(&events))
            };
            let got = match &gate {
                Some(g) => g.exclusive(read),
                None => read().0,
            };
            match got {
                // libuv reports EPOLLERR as status UV_EBADF and has stopped the handle.
                Ok(got_any) if status < 0 => {
                    if got_any {
                        // SAFETY: live handle; restarts the watcher libuv stopped.
                        let rc = unsafe { uv::uv_poll_start(h, uv::UV_READABLE, on_poll) };
                        if rc != 0 {
                            failed = Some(uv::uv_error("uv_poll_start", rc).because(format!("fd {fd}")));
                        }
                    } else {
                        failed = Some(error_condition("uv_poll", fd));
                    }
                }
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
            // A dropped fd's gate is closed: no connection installs through it any more.
            let gate = if failed.is_some() { None } else { gate };
            if let Some(error) = failed {
                if let Some(g) = st.gates.remove(&fd) {
                    g.close();
                }
                st.polls.remove(&fd);
                close_poll_handle(h);
                events.push(LoopEvent::Error { fd, error });
            }
            (st.env, st.on_batch, gate)
        };
        if let Some(g) = gate
            && !faults.is_empty()
        {
            // Faults on pages a connection is bringing or has read are its to serve; JS
            // never hears of them (background.rs, `Arrivals`). Not under the gate: the
            // connection may install a window through it.
            let read_ns = crate::sys::now_ns();
            // Write-protect and minor faults are never a connection's to take.
            faults.retain(|f| {
                if f.flags & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_MINOR) != 0 {
                    return true;
                }
                g.note_fault(f.address);
                !g.take_fault(f.address, read_ns)
            });
        }
        if faults.is_empty() && events.is_empty() {
            return;
        }
        let mut batch = Pending::default();
        for f in faults {
            batch.push_fault(f);
        }
        batch.events = events;
        // The lock is released: onBatch may call add/remove/stop/ref on this loop.
        call_on_batch(env, on_batch, &batch);
    }
}

fn close_poll_handle(h: *mut uv_handle_t) {
    // SAFETY: live poll handle (just taken out of `polls`, so closed once); stopping first
    // takes the fd out of epoll now, the close callback frees memory and PollCtx later.
    unsafe {
        uv::uv_poll_stop(h);
        uv::uv_close(h, Some(close_poll));
    }
}

/// Calls onBatch from a libuv callback: a handle scope for the values, make_callback for
/// the callback scope. An exception thrown by onBatch becomes an uncaught exception, as in
/// thread mode (where Node's thread-safe function machinery does that).
fn call_on_batch(env_raw: napi_env, on_batch: ffi::napi_ref, batch: &Pending) {
    let mut scope: ffi::napi_handle_scope = ptr::null_mut();
    // SAFETY: JS thread, in a libuv callback, the env is live (the cleanup hook closes
    // our handles before it goes away).
    if unsafe { ffi::napi_open_handle_scope(env_raw, &mut scope) } != ffi::NAPI_OK {
        return;
    }
    // SAFETY: as above; the Env does not outlive this scope.
    let env = unsafe { Env::from_raw(env_raw) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> JsResult<()> {
        let mut cb: napi_value = ptr::null_mut();
        // SAFETY: live reference (deleted only by shutdown, which cannot have run since
        // `on_readable` checked `stopped` without calling JS in between).
        check(unsafe { ffi::napi_get_reference_value(env_raw, on_batch, &mut cb) })?;
        let args = batch_to_js(env, batch)?;
        let mut global: napi_value = ptr::null_mut();
        // SAFETY: out-pointer local.
        check(unsafe { ffi::napi_get_global(env_raw, &mut global) })?;
        let mut result: napi_value = ptr::null_mut();
        // SAFETY: values of this scope; NULL async context = no async_hooks resource.
        check(unsafe { ffi::napi_make_callback(env_raw, ptr::null_mut(), global, cb, args.len(), args.as_ptr(), &mut result) })
    }));
    let err = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(p) => Some(crate::napi::JsError::Plain(format!("internal error in the fault loop: {}", panic_message(&*p)))),
    };
    if let Some(e) = err {
        // SAFETY: JS thread, inside our handle scope.
        unsafe {
            let mut pending = false;
            ffi::napi_is_exception_pending(env_raw, &mut pending);
            let mut exc: napi_value = ptr::null_mut();
            if pending {
                ffi::napi_get_and_clear_last_exception(env_raw, &mut exc);
            } else if let Some(v) = e.to_js(env_raw) {
                exc = v;
            }
            if !exc.is_null() {
                ffi::napi_fatal_exception(env_raw, exc);
            }
        }
    }
    // SAFETY: the scope opened above.
    unsafe { ffi::napi_close_handle_scope(env_raw, scope) };
}

/// The address ranges a batch of events changed, for the gate: what an unmap or a remove
/// takes away. A remap or a fork counts as touching everything: they move or copy the
/// address space, and every install asked for before one is decided again after it. (With
/// only a remap's two ends counted, a workload that remapped and forked at once had its
/// child read one wrong page in 2 of 13 runs under load, where staling everything on
/// those two rare events gave 0 of 33; the cause is not pinned down. docs/PERFORMANCE.md.)
fn touched_ranges(events: &[LoopEvent]) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for e in events {
        match *e {
            LoopEvent::Remove { start, end, .. } | LoopEvent::Unmap { start, end, .. } => v.push((start, end)),
            LoopEvent::Remap { .. } | LoopEvent::Fork { .. } => v.push((0, u64::MAX)),
            LoopEvent::Error { .. } => {}
        }
    }
    v
}
