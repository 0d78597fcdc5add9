//! Native functions exposed to JS. Each is a plain Rust `fn(Env, &Args) -> JsResult<Value>`
//! listed in a table (see exports.rs); one trampoline turns errors and panics into JS
//! exceptions, so adding a function is one line in the table.

use super::error::{JsError, JsResult, catch_panic};
use super::ffi::{self, napi_callback_info, napi_env, napi_value};
use super::value::{Env, Kind, Value};
use std::ffi::{CStr, c_void};
use std::ptr;

pub type NativeFn = fn(Env, &Args) -> JsResult<Value>;

pub struct Export {
    pub name: &'static CStr,
    pub func: NativeFn,
}

/// `export!("name" => function)`
#[macro_export]
macro_rules! export {
    ($name:literal => $f:path) => {
        $crate::napi::callback::Export { name: $crate::napi::callback::cstr($name), func: $f }
    };
}

pub const fn cstr(s: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(s.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("export names are written with a trailing \\0"),
    }
}

const MAX_ARGS: usize = 8;

/// The arguments of one call. Missing arguments read as `undefined`.
pub struct Args {
    env: Env,
    argv: [napi_value; MAX_ARGS],
    argc: usize,
}

impl Args {
    /// Argument `i` if it was passed and is not undefined.
    pub fn opt(&self, i: usize) -> JsResult<Option<Value>> {
        if i >= self.argc.min(MAX_ARGS) {
            return Ok(None);
        }
        let v = self.argv[i];
        if self.env.kind(v)? == Kind::Undefined { Ok(None) } else { Ok(Some(v)) }
    }
    /// Argument `i`, required.
    pub fn get(&self, i: usize, what: &str) -> JsResult<Value> {
        self.opt(i)?.ok_or_else(|| JsError::Type(format!("{what} is required")))
    }
}

unsafe extern "C" fn trampoline(env: napi_env, info: napi_callback_info) -> napi_value {
    let mut argv = [ptr::null_mut(); MAX_ARGS];
    let mut argc = MAX_ARGS;
    let mut data: *mut c_void = ptr::null_mut();
    // SAFETY: env/info are the live handles of this call; argv has room for argc values.
    let status = unsafe { ffi::napi_get_cb_info(env, info, &mut argc, argv.as_mut_ptr(), ptr::null_mut(), &mut data) };
    // SAFETY: called by Node on the JS thread with this env.
    let jsenv = unsafe { Env::from_raw(env) };
    let result = catch_panic("native call", || {
        super::error::check(status)?;
        // SAFETY: data is the NativeFn pointer `register` stored for this function.
        let func: NativeFn = unsafe { std::mem::transmute::<*mut c_void, NativeFn>(data) };
        func(jsenv, &Args { env: jsenv, argv, argc })
    });
    match result {
        Ok(v) => v,
        Err(e) => {
            // SAFETY: same env, still inside the callback.
            unsafe { e.throw(env) };
            ptr::null_mut()
        }
    }
}

/// Defines every function of `table` on `target`.
pub fn register(env: Env, target: Value, table: &[Export]) -> JsResult<()> {
    for e in table {
        let mut f: napi_value = ptr::null_mut();
        // SAFETY: name is NUL-terminated and 'static; the fn pointer outlives the module.
        super::error::check(unsafe {
            ffi::napi_create_function(env.raw(), e.name.as_ptr(), usize::MAX /* NAPI_AUTO_LENGTH */, trampoline, e.func as *mut c_void, &mut f)
        })?;
        env.set(target, e.name, f)?;
    }
    Ok(())
}
