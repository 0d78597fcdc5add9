//! Errors crossing into JS. Bad JS input becomes TypeError/RangeError; a failed syscall
//! becomes an Error shaped like Node's system errors (`code` = errno name, `errno`,
//! `syscall` = the operation, `address` when there is one, and `tid`/`pid`/`fd`/`path`
//! naming whom the call was about when the SysError has a subject).

use super::ffi::{self, napi_env, napi_value};
use crate::sys::{Subject, SysError};
use std::ffi::CStr;
use std::ptr;

#[derive(Debug)]
pub enum JsError {
    Type(String),
    Range(String),
    Sys(SysError),
    Plain(String),
    /// A napi call failed with this status; a JS exception may already be pending.
    Napi(ffi::napi_status),
}

pub type JsResult<T> = Result<T, JsError>;

impl From<SysError> for JsError {
    fn from(e: SysError) -> Self {
        JsError::Sys(e)
    }
}

pub fn type_error<T>(msg: impl Into<String>) -> JsResult<T> {
    Err(JsError::Type(msg.into()))
}
pub fn range_error<T>(msg: impl Into<String>) -> JsResult<T> {
    Err(JsError::Range(msg.into()))
}

/// Converts a napi_status into a result.
#[inline]
pub fn check(status: ffi::napi_status) -> JsResult<()> {
    if status == ffi::NAPI_OK { Ok(()) } else { Err(JsError::Napi(status)) }
}

// Built with raw calls (not the Env helpers) so that a failure while building an error
// cannot recurse into building another one.
unsafe fn str_value(env: napi_env, s: &str) -> napi_value {
    let mut v = ptr::null_mut();
    // SAFETY: s points to s.len() valid UTF-8 bytes; v is a valid out-pointer.
    unsafe { ffi::napi_create_string_utf8(env, s.as_ptr().cast(), s.len(), &mut v) };
    v
}

unsafe fn set(env: napi_env, obj: napi_value, name: &CStr, v: napi_value) {
    if !v.is_null() {
        // SAFETY: name is NUL-terminated; obj/v are live handles of this scope.
        unsafe { ffi::napi_set_named_property(env, obj, name.as_ptr(), v) };
    }
}

impl JsError {
    /// Builds the JS error object for this error, or None when a JS exception is already
    /// pending (that one wins: it is the original cause).
    ///
    /// SAFETY: `env` must be the current, live environment of the calling JS thread.
    pub unsafe fn to_js(&self, env: napi_env) -> Option<napi_value> {
        let mut err = ptr::null_mut();
        // SAFETY (whole block): env is live (caller contract); all out-pointers are local.
        unsafe {
            match self {
                JsError::Type(m) => {
                    ffi::napi_create_type_error(env, ptr::null_mut(), str_value(env, m), &mut err);
                }
                JsError::Range(m) => {
                    ffi::napi_create_range_error(env, ptr::null_mut(), str_value(env, m), &mut err);
                }
                JsError::Plain(m) => {
                    ffi::napi_create_error(env, ptr::null_mut(), str_value(env, m), &mut err);
                }
                JsError::Sys(e) => {
                    let code = str_value(env, e.code());
                    ffi::napi_create_error(env, code, str_value(env, &e.to_string()), &mut err);
                    if !err.is_null() {
                        let mut n = ptr::null_mut();
                        ffi::napi_create_uint32(env, e.errno as u32, &mut n);
                        set(env, err, c"errno", n);
                        set(env, err, c"syscall", str_value(env, e.op));
                        if let Some(a) = e.addr {
                            let mut av = ptr::null_mut();
                            ffi::napi_create_double(env, a as f64, &mut av);
                            set(env, err, c"address", av);
                        }
                        let mut sv = ptr::null_mut();
                        match &e.subject {
                            Some(Subject::Tid(t)) => {
                                ffi::napi_create_double(env, *t as f64, &mut sv);
                                set(env, err, c"tid", sv);
                            }
                            Some(Subject::Pid(p)) => {
                                ffi::napi_create_double(env, *p as f64, &mut sv);
                                set(env, err, c"pid", sv);
                            }
                            Some(Subject::Fd(d)) => {
                                ffi::napi_create_double(env, *d as f64, &mut sv);
                                set(env, err, c"fd", sv);
                            }
                            Some(Subject::Path(p)) => set(env, err, c"path", str_value(env, p)),
                            None => {}
                        }
                    }
                }
                JsError::Napi(status) => {
                    let mut pending = false;
                    ffi::napi_is_exception_pending(env, &mut pending);
                    if pending || *status == ffi::NAPI_PENDING_EXCEPTION {
                        return None;
                    }
                    let mut info: *const ffi::napi_extended_error_info = ptr::null();
                    ffi::napi_get_last_error_info(env, &mut info);
                    let detail = if !info.is_null() && !(*info).error_message.is_null() {
                        CStr::from_ptr((*info).error_message).to_string_lossy().into_owned()
                    } else {
                        String::from("unknown")
                    };
                    let msg = format!("Node-API call failed (status {status}): {detail}");
                    ffi::napi_create_error(env, ptr::null_mut(), str_value(env, &msg), &mut err);
                }
            }
        }
        if err.is_null() { None } else { Some(err) }
    }

    /// Throws this error into JS (unless an exception is already pending).
    ///
    /// SAFETY: as `to_js`.
    pub unsafe fn throw(&self, env: napi_env) {
        // SAFETY: forwarded.
        unsafe {
            if let Some(e) = self.to_js(env) {
                ffi::napi_throw(env, e);
            }
        }
    }
}

/// Message of a caught panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f`, turning a panic into a JsError (panics must never unwind into Node).
pub fn catch_panic<T>(what: &str, f: impl FnOnce() -> JsResult<T>) -> JsResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(JsError::Plain(format!("internal error in {what}: {}", panic_message(&*p)))),
    }
}
