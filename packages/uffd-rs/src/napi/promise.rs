//! Promises settled later, possibly after the value travelled through another thread.

use super::error::{JsError, JsResult, check};
use super::ffi::{self, napi_value};
use super::value::{Env, Value};
use std::ptr;

/// The resolve/reject handle of a promise. It may be carried by any thread, but only
/// settled on the JS thread (settling needs an `Env`, which only exists there).
pub struct Deferred(ffi::napi_deferred);

// SAFETY: Node only dereferences the handle inside napi_resolve/reject_deferred, which
// take an Env and so run on the JS thread.
unsafe impl Send for Deferred {}

impl Deferred {
    pub fn new(env: Env) -> JsResult<(Deferred, Value)> {
        let mut d: ffi::napi_deferred = ptr::null_mut();
        let mut p: napi_value = ptr::null_mut();
        // SAFETY: JS thread (we hold an Env); out-pointers are local.
        check(unsafe { ffi::napi_create_promise(env.raw(), &mut d, &mut p) })?;
        Ok((Deferred(d), p))
    }

    pub fn resolve(self, env: Env, v: Value) -> JsResult<()> {
        // SAFETY: JS thread; consuming self settles exactly once.
        check(unsafe { ffi::napi_resolve_deferred(env.raw(), self.0, v) })
    }

    pub fn reject(self, env: Env, e: JsError) -> JsResult<()> {
        // SAFETY: JS thread. If building the error left an exception pending instead,
        // that exception is the rejection reason.
        unsafe {
            let err = match e.to_js(env.raw()) {
                Some(v) => v,
                None => {
                    let mut exc = ptr::null_mut();
                    ffi::napi_get_and_clear_last_exception(env.raw(), &mut exc);
                    exc
                }
            };
            check(ffi::napi_reject_deferred(env.raw(), self.0, err))
        }
    }

    pub fn settle(self, env: Env, r: JsResult<Value>) -> JsResult<()> {
        match r {
            Ok(v) => self.resolve(env, v),
            Err(e) => self.reject(env, e),
        }
    }
}
