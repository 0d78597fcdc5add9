//! lazymig's native package: userfaultfd and the fault loop for Node, through a small
//! hand-written Node-API layer (see `napi`). Modules below `napi` know nothing of JS.

mod background;
mod crc32c;
mod exports;
mod exports_background;
mod exports_conn;
mod exports_page_receiver;
#[cfg(feature = "ptrace")]
mod exports_proc;
#[cfg(feature = "ptrace")]
mod exports_page_stream;
#[cfg(feature = "ptrace")]
mod exports_ptrace;
mod fault_loop;
mod napi;
mod page_receiver;
#[cfg(feature = "ptrace")]
mod page_stream;
#[cfg(feature = "ptrace")]
mod pidfd;
mod probe;
#[cfg(feature = "ptrace")]
mod proc_scan;
#[cfg(feature = "ptrace")]
mod procmem;
#[cfg(feature = "ptrace")]
mod syscall_count;
#[cfg(feature = "ptrace")]
mod ptrace;
mod sys;
mod testing;
mod uffd;
#[cfg(feature = "ptrace")]
mod unix_socket;
mod wp;
mod ws_wire;

use napi::ffi::{napi_env, napi_value};

/// Entry point Node looks up after dlopen (Node-API module registration, version 1).
///
/// # Safety
/// Called by Node only, on the JS thread, with a live `env` and the `exports` object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn napi_register_module_v1(env: napi_env, exports: napi_value) -> napi_value {
    // SAFETY: Node calls this on the JS thread with a live env.
    let jsenv = unsafe { napi::Env::from_raw(env) };
    let r = napi::error::catch_panic("module registration", || {
        napi::callback::register(jsenv, exports, exports::TABLE)?;
        napi::callback::register(jsenv, exports, exports_background::TABLE)?;
        napi::callback::register(jsenv, exports, exports_page_receiver::TABLE)?;
        #[cfg(feature = "ptrace")]
        napi::callback::register(jsenv, exports, exports_ptrace::TABLE)?;
        #[cfg(feature = "ptrace")]
        napi::callback::register(jsenv, exports, exports_proc::TABLE)?;
        #[cfg(feature = "ptrace")]
        napi::callback::register(jsenv, exports, exports_page_stream::TABLE)?;
        exports::constants(jsenv, exports)
    });
    if let Err(e) = r {
        // SAFETY: same env, inside the registration callback.
        unsafe { e.throw(env) };
    }
    exports
}

/// The Node-API version this module is written against (Node 20 has 9).
#[unsafe(no_mangle)]
pub extern "C" fn node_api_module_get_api_version_v1() -> i32 {
    8
}
