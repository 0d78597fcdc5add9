//! Thread-safe functions: the one sanctioned way for a native thread to run code on the
//! JS thread. Wrapped so that the handler is a Rust closure, errors/panics in it become JS
//! exceptions, and the handle is always released (Drop), which is what lets Node exit.

use super::error::{JsError, JsResult, catch_panic, check, panic_message};
use super::ffi::{self, napi_env, napi_value};
use super::promise::Deferred;
use super::value::{Env, Value};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr;
use std::sync::{Arc, Mutex};

/// Runs on the JS thread for every `call`. `js_cb` is the function given at creation.
pub type Handler<T> = Box<dyn FnMut(Env, Option<Value>, T) -> JsResult<()> + Send>;
/// Runs on the JS thread once, after the last release.
pub type Finalizer = Box<dyn FnOnce(Env) + Send>;

/// The raw handle, shared by the owner and Node's finalizer. Node frees the function
/// right after finalizing it, and it finalizes it on its own at environment teardown
/// (process exit, worker termination) even while our threads still hold it: so the
/// finalizer clears the handle under this lock, and every use checks it under the lock.
struct Handle(Mutex<Option<RawTsfn>>);
#[derive(Clone, Copy)]
struct RawTsfn(ffi::napi_threadsafe_function);
// SAFETY: napi_call/release_threadsafe_function may be called from any thread; that is
// the point of the API. Access is serialized by the Mutex and ends at finalization.
unsafe impl Send for RawTsfn {}

struct Ctx<T> {
    handler: Handler<T>,
    on_finalize: Option<Finalizer>,
    handle: Arc<Handle>,
}

pub struct Tsfn<T: Send + 'static> {
    handle: Arc<Handle>,
    _p: PhantomData<fn(T)>,
}

unsafe extern "C" fn call_js<T: Send + 'static>(env: napi_env, js_cb: napi_value, context: *mut c_void, data: *mut c_void) {
    // SAFETY: data is the Box<T> leaked by `call` and handed over exactly once.
    let data = unsafe { Box::from_raw(data as *mut T) };
    if env.is_null() {
        // Node is tearing the function down; nothing to run the handler with.
        return;
    }
    // SAFETY: context is the Ctx<T> leaked in `new`; Node calls call_js and the
    // finalizer on the JS thread, never concurrently, so this &mut is unique.
    let ctx = unsafe { &mut *(context as *mut Ctx<T>) };
    // SAFETY: we are on the JS thread inside a Node callback with this env.
    let jsenv = unsafe { Env::from_raw(env) };
    let cb = if js_cb.is_null() { None } else { Some(js_cb) };
    if let Err(e) = catch_panic("threadsafe callback", || (ctx.handler)(jsenv, cb, *data)) {
        // Thrown here, Node reports it as an uncaught exception, like any event handler's.
        // SAFETY: same env, inside the callback.
        unsafe { e.throw(env) };
    }
}

unsafe extern "C" fn finalize<T: Send + 'static>(env: napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: data is the Ctx<T> leaked in `new`; Node finalizes exactly once.
    let ctx = unsafe { Box::from_raw(data as *mut Ctx<T>) };
    *ctx.handle.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    if let Some(f) = ctx.on_finalize
        && !env.is_null() {
            // SAFETY: JS thread, inside the finalizer callback.
            let jsenv = unsafe { Env::from_raw(env) };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(jsenv)));
        }
}

impl<T: Send + 'static> Tsfn<T> {
    /// `func` may be None when the handler does everything itself (e.g. settles a promise).
    pub fn new(env: Env, func: Option<Value>, name: &str, handler: Handler<T>, on_finalize: Option<Finalizer>) -> JsResult<Self> {
        let handle = Arc::new(Handle(Mutex::new(None)));
        let ctx = Box::into_raw(Box::new(Ctx { handler, on_finalize, handle: handle.clone() })) as *mut c_void;
        let name = env.str(name)?;
        let mut raw: ffi::napi_threadsafe_function = ptr::null_mut();
        // SAFETY: all handles belong to this env; ctx stays valid until `finalize`.
        // Queue size 0 = unbounded: every user keeps the number of calls in flight small
        // (one per batch for the fault loop, one per promise), so it never grows.
        let st = unsafe {
            ffi::napi_create_threadsafe_function(
                env.raw(),
                func.unwrap_or(ptr::null_mut()),
                ptr::null_mut(),
                name,
                0,
                1,
                ctx,
                Some(finalize::<T>),
                ctx,
                Some(call_js::<T>),
                &mut raw,
            )
        };
        if let Err(e) = check(st) {
            // SAFETY: not handed to Node.
            drop(unsafe { Box::from_raw(ctx as *mut Ctx<T>) });
            return Err(e);
        }
        *handle.0.lock().unwrap() = Some(RawTsfn(raw));
        Ok(Tsfn { handle, _p: PhantomData })
    }

    fn with_raw<R>(&self, f: impl FnOnce(ffi::napi_threadsafe_function) -> R) -> Option<R> {
        let g = self.handle.0.lock().unwrap_or_else(|p| p.into_inner());
        g.map(|r| f(r.0))
    }

    /// Queues `data` for the JS thread without blocking. Fails only while Node is closing
    /// the function (environment teardown); the data is dropped then.
    pub fn call(&self, data: T) -> bool {
        let p = Box::into_raw(Box::new(data)) as *mut c_void;
        // SAFETY: raw is live while the handle holds it (checked under the lock); p is
        // handed over on success.
        let st = self.with_raw(|raw| unsafe { ffi::napi_call_threadsafe_function(raw, p, ffi::NAPI_TSFN_NONBLOCKING) });
        if st != Some(ffi::NAPI_OK) {
            // SAFETY: Node did not take it.
            drop(unsafe { Box::from_raw(p as *mut T) });
            return false;
        }
        true
    }

    /// Whether this function keeps the Node event loop alive (JS thread only).
    pub fn set_ref(&self, env: Env, keep_alive: bool) -> JsResult<()> {
        // SAFETY: JS thread (caller holds an Env), raw live (checked under the lock).
        self.with_raw(|raw| {
            check(unsafe {
                if keep_alive { ffi::napi_ref_threadsafe_function(env.raw(), raw) } else { ffi::napi_unref_threadsafe_function(env.raw(), raw) }
            })
        })
        .unwrap_or(Ok(()))
    }
}

impl<T: Send + 'static> Drop for Tsfn<T> {
    fn drop(&mut self) {
        // Released under the lock, so a teardown finalizer cannot free it mid-call.
        let mut g = self.handle.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = g.take() {
            // SAFETY: this handle's single acquisition (initial_thread_count = 1) is
            // released exactly once, here, and only if Node has not finalized it yet.
            // Release only queues the finalization (it runs later on the JS thread), so
            // holding the lock cannot deadlock with the finalizer.
            unsafe { ffi::napi_release_threadsafe_function(r.0, ffi::NAPI_TSFN_RELEASE) };
        }
    }
}

/// Runs `work` on a new native thread and returns a promise settled on the JS thread with
/// `settle(result)` (or rejected with the error it returns, or with a panic).
pub fn spawn_promise<R: Send + 'static>(
    env: Env,
    name: &str,
    work: impl FnOnce() -> R + Send + 'static,
    settle: fn(Env, R) -> JsResult<Value>,
) -> JsResult<Value> {
    let (deferred, promise) = Deferred::new(env)?;
    let mut slot = Some(deferred);
    let handler: Handler<std::thread::Result<R>> = Box::new(move |env, _cb, res| {
        let Some(d) = slot.take() else { return Ok(()) };
        let outcome = match res {
            Ok(r) => settle(env, r),
            Err(p) => Err(JsError::Plain(format!("internal error in native thread: {}", panic_message(&*p)))),
        };
        d.settle(env, outcome)
    });
    let tsfn = Tsfn::new(env, None, name, handler, None)?;
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            tsfn.call(r);
            // tsfn dropped here: released, so the promise no longer holds Node open.
        })
        .map_err(|e| JsError::Plain(format!("cannot start thread {name}: {e}")))?;
    Ok(promise)
}
