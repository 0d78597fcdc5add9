//! The few libuv functions the event-loop fault loop needs, declared by hand (no libuv
//! headers or crates here), plus a safe-ish owner for one handle.
//!
//! Like the Node-API symbols (see `ffi`), these are resolved at `dlopen` time from the
//! `node` executable, which exports its libuv (Node 20 ships libuv 1.46). We reach Node's
//! own loop with `napi_get_uv_event_loop`, so a handle started here is watched by the same
//! epoll as Node's sockets and timers, and its callback runs on the JS thread.
//!
//! No struct layout is hard-coded: handles are opaque, their size is asked of libuv at run
//! time (`uv_handle_size`), and `data` is reached through `uv_handle_{get,set}_data`
//! (libuv >= 1.34). The enum values below are libuv's stable ABI (`uv.h`:
//! `UV_HANDLE_TYPE_MAP`, `enum uv_poll_event`); `check_abi` verifies the handle
//! types against `uv_handle_type_name` before the first use, so a mismatch is an error,
//! not memory corruption.
#![allow(non_camel_case_types, dead_code)]

use crate::sys::{SysError, SysResult};
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

#[repr(C)]
pub struct uv_loop_t {
    _p: [u8; 0],
}
#[repr(C)]
pub struct uv_handle_t {
    _p: [u8; 0],
}

/// `uv_handle_type` (a C enum).
pub type uv_handle_type = c_int;
pub const UV_ASYNC: uv_handle_type = 1;
pub const UV_POLL: uv_handle_type = 8;

/// `enum uv_poll_event` bits.
pub const UV_READABLE: c_int = 1;
pub const UV_WRITABLE: c_int = 2;
pub const UV_DISCONNECT: c_int = 4;

/// `void (*uv_poll_cb)(uv_poll_t*, int status, int events)`; status < 0 is -errno.
pub type uv_poll_cb = unsafe extern "C" fn(handle: *mut uv_handle_t, status: c_int, events: c_int);
pub type uv_close_cb = unsafe extern "C" fn(handle: *mut uv_handle_t);
pub type uv_async_cb = unsafe extern "C" fn(handle: *mut uv_handle_t);

unsafe extern "C" {
    /// Node-API's door to the loop of the env (N-API 2).
    pub fn napi_get_uv_event_loop(env: super::ffi::napi_env, out: *mut *mut uv_loop_t) -> super::ffi::napi_status;

    pub fn uv_handle_size(kind: uv_handle_type) -> usize;
    pub fn uv_handle_type_name(kind: uv_handle_type) -> *const c_char;
    pub fn uv_handle_set_data(handle: *mut uv_handle_t, data: *mut c_void);
    pub fn uv_handle_get_data(handle: *const uv_handle_t) -> *mut c_void;
    pub fn uv_close(handle: *mut uv_handle_t, cb: Option<uv_close_cb>);
    pub fn uv_ref(handle: *mut uv_handle_t);
    pub fn uv_unref(handle: *mut uv_handle_t);
    pub fn uv_err_name(err: c_int) -> *const c_char;
    pub fn uv_version() -> c_uint;

    /// Sets `fd` O_NONBLOCK; fails with UV_EEXIST if this loop already polls `fd`.
    pub fn uv_poll_init(lp: *mut uv_loop_t, handle: *mut uv_handle_t, fd: c_int) -> c_int;
    pub fn uv_poll_start(handle: *mut uv_handle_t, events: c_int, cb: uv_poll_cb) -> c_int;
    /// Synchronous: the fd is out of the loop's epoll set when this returns.
    pub fn uv_poll_stop(handle: *mut uv_handle_t) -> c_int;

    pub fn uv_async_init(lp: *mut uv_loop_t, handle: *mut uv_handle_t, cb: Option<uv_async_cb>) -> c_int;
}

/// A libuv error (negative errno on Linux) as a SysError named after the call.
pub fn uv_error(op: &'static str, rc: c_int) -> SysError {
    SysError::new(op, -rc)
}

/// Checks once that our enum values name the handle types we think they do.
fn check_abi(what: &str) -> SysResult<()> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        for (k, name) in [(UV_ASYNC, "async"), (UV_POLL, "poll")] {
            // SAFETY: uv_handle_type_name returns a static string or NULL.
            let got = unsafe { uv_handle_type_name(k) };
            let got = if got.is_null() { String::from("(null)") } else { unsafe { CStr::from_ptr(got) }.to_string_lossy().into_owned() };
            if got != name {
                return Err(format!("libuv handle type {k} is '{got}', expected '{name}' (incompatible libuv ABI)"));
            }
        }
        Ok(())
    });
    r.clone().map_err(|m| SysError::new("uv_handle_type_name", libc::ENOSYS).because(format!("{m}; while creating a {what} handle")))
}

/// Memory for one libuv handle of `kind`, sized by libuv itself, zeroed. Freed with
/// `free_handle` — only once libuv is done with it (never initialized, or in its close
/// callback).
pub fn alloc_handle(kind: uv_handle_type, what: &'static str) -> SysResult<*mut uv_handle_t> {
    check_abi(what)?;
    // SAFETY: uv_handle_size is a pure lookup.
    let size = unsafe { uv_handle_size(kind) };
    if size == 0 {
        return Err(SysError::new("uv_handle_size", libc::ENOSYS).because(format!("libuv reports size 0 for a {what} handle")));
    }
    // calloc: malloc alignment (16 bytes) suits every libuv handle, as in libuv's own code.
    // SAFETY: plain allocation.
    let p = unsafe { libc::calloc(1, size) };
    if p.is_null() {
        return Err(SysError::new("calloc", libc::ENOMEM));
    }
    Ok(p.cast())
}

/// SAFETY: `h` came from `alloc_handle`, and libuv no longer references it.
pub unsafe fn free_handle(h: *mut uv_handle_t) {
    // SAFETY: forwarded.
    unsafe { libc::free(h.cast()) }
}
