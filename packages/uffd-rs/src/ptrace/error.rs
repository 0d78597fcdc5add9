//! The error type of the ptrace / process-memory / socket modules: a failed syscall plus
//! *whom* it was about (`tid 1234`, `pid 1234`, a socket path), so a JS user reads
//! `PTRACE_SEIZE tid 1234: ESRCH (No such process)` without the caller adding context.
//!
//! The shared `SysError` (src/sys/errno.rs) carries a `&'static str` operation and an
//! address only; rather than change it, errors of these modules are thrown through
//! `throw_os_error` below, which builds the same Node-style system error (`code`, `errno`,
//! `syscall`, optional `address`) plus `pid`/`tid`/`path` properties.

use crate::napi::ffi::{self, napi_env, napi_value};
use crate::napi::{Env, JsError, JsResult};
use crate::sys::errno::{errno_name, last_errno, strerror};
use std::ffi::CStr;
use std::fmt;
use std::ptr;

/// Who a failed call was about.
#[derive(Debug, Clone)]
pub enum Subject {
    Tid(i32),
    Pid(i32),
    Fd(i32),
    Path(String),
}

#[derive(Debug, Clone)]
pub struct OsError {
    pub errno: i32,
    /// Syscall or request name as a user would look it up ("PTRACE_SEIZE", "process_vm_readv").
    pub op: &'static str,
    pub subject: Subject,
    pub addr: Option<u64>,
    pub detail: Option<String>,
}

pub type OsResult<T> = Result<T, OsError>;

impl OsError {
    pub fn new(op: &'static str, errno: i32, subject: Subject) -> Self {
        OsError { errno, op, subject, addr: None, detail: None }
    }
    /// From the calling thread's errno.
    pub fn last(op: &'static str, subject: Subject) -> Self {
        Self::new(op, last_errno(), subject)
    }
    pub fn at(mut self, addr: u64) -> Self {
        self.addr = Some(addr);
        self
    }
    pub fn because(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn code(&self) -> &'static str {
        code_of(self.errno)
    }
}

/// errno names, including the socket ones the shared table does not list.
pub fn code_of(errno: i32) -> &'static str {
    use libc::*;
    match errno {
        EADDRINUSE => "EADDRINUSE",
        EADDRNOTAVAIL => "EADDRNOTAVAIL",
        ECONNREFUSED => "ECONNREFUSED",
        ECONNRESET => "ECONNRESET",
        ENOTCONN => "ENOTCONN",
        ENOTSOCK => "ENOTSOCK",
        EMSGSIZE => "EMSGSIZE",
        ENAMETOOLONG => "ENAMETOOLONG",
        EPROTOTYPE => "EPROTOTYPE",
        EISDIR => "EISDIR",
        ELOOP => "ELOOP",
        EOPNOTSUPP => "EOPNOTSUPP",
        _ => errno_name(errno),
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Tid(t) => write!(f, " tid {t}"),
            Subject::Pid(p) => write!(f, " pid {p}"),
            Subject::Fd(d) => write!(f, " fd {d}"),
            Subject::Path(p) => write!(f, " {p}"),
        }
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.op, self.subject)?;
        if let Some(a) = self.addr {
            write!(f, " at {a:#x}")?;
        }
        write!(f, ": {} ({})", self.code(), strerror(self.errno))?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

unsafe fn str_value(env: napi_env, s: &str) -> napi_value {
    let mut v = ptr::null_mut();
    // SAFETY: s is valid UTF-8 of s.len() bytes; v is a local out-pointer.
    unsafe { ffi::napi_create_string_utf8(env, s.as_ptr().cast(), s.len(), &mut v) };
    v
}

unsafe fn num_value(env: napi_env, x: f64) -> napi_value {
    let mut v = ptr::null_mut();
    // SAFETY: local out-pointer.
    unsafe { ffi::napi_create_double(env, x, &mut v) };
    v
}

unsafe fn set(env: napi_env, obj: napi_value, name: &CStr, v: napi_value) {
    if !v.is_null() {
        // SAFETY: live handles of this scope, NUL-terminated name.
        unsafe { ffi::napi_set_named_property(env, obj, name.as_ptr(), v) };
    }
}

impl OsError {
    /// Throws this error into JS and returns the `JsError` that tells the trampoline an
    /// exception is pending (so it adds nothing; a promise rejects with the pending one).
    pub fn throw(&self, env: Env) -> JsError {
        let raw = env.raw();
        // SAFETY: env is the live env of the current JS-thread callback (Env's invariant).
        unsafe {
            let mut pending = false;
            ffi::napi_is_exception_pending(raw, &mut pending);
            if pending {
                return JsError::Napi(ffi::NAPI_PENDING_EXCEPTION);
            }
            let mut err = ptr::null_mut();
            ffi::napi_create_error(raw, str_value(raw, self.code()), str_value(raw, &self.to_string()), &mut err);
            if err.is_null() {
                return JsError::Plain(self.to_string());
            }
            set(raw, err, c"errno", num_value(raw, self.errno as f64));
            set(raw, err, c"syscall", str_value(raw, self.op));
            if let Some(a) = self.addr {
                set(raw, err, c"address", num_value(raw, a as f64));
            }
            match &self.subject {
                Subject::Tid(t) => set(raw, err, c"tid", num_value(raw, *t as f64)),
                Subject::Pid(p) => set(raw, err, c"pid", num_value(raw, *p as f64)),
                Subject::Fd(d) => set(raw, err, c"fd", num_value(raw, *d as f64)),
                Subject::Path(p) => set(raw, err, c"path", str_value(raw, p)),
            }
            ffi::napi_throw(raw, err);
        }
        JsError::Napi(ffi::NAPI_PENDING_EXCEPTION)
    }
}

/// `r.map_err(|e| e.throw(env))` for results of these modules.
pub trait OrThrow<T> {
    fn or_throw(self, env: Env) -> JsResult<T>;
}

impl<T> OrThrow<T> for OsResult<T> {
    fn or_throw(self, env: Env) -> JsResult<T> {
        self.map_err(|e| e.throw(env))
    }
}
