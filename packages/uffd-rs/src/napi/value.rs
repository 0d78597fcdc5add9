//! Safe conversions between JS values and Rust. `Env` is only ever constructed from the
//! env handed to a callback on the JS thread and does not outlive that callback, which is
//! the invariant every `unsafe` block below relies on.

use super::error::{JsError, JsResult, check, range_error, type_error};
use super::ffi::{self, napi_env, napi_value};
use std::ffi::{CStr, c_void};
use std::ptr;

pub type Value = napi_value;

/// Largest integer a JS number holds exactly; addresses and lengths must stay below it.
pub const MAX_SAFE: u64 = (1 << 53) - 1;

#[derive(Clone, Copy)]
pub struct Env(napi_env);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Undefined,
    Null,
    Boolean,
    Number,
    String,
    Symbol,
    Object,
    Function,
    External,
    BigInt,
}

/// Bytes of a JS TypedArray/Buffer, valid while the JS value is (i.e. for the current
/// synchronous callback: the backing store cannot move or be freed meanwhile).
pub struct Bytes {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len describe a live backing store (see the type's doc).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Element type + data of a typed array.
pub enum Typed<'a> {
    F64(&'a [f64]),
    U64(&'a [u64]),
    Other,
}

impl Env {
    /// SAFETY: `raw` must be the env of the callback currently running on the JS thread.
    pub unsafe fn from_raw(raw: napi_env) -> Env {
        Env(raw)
    }
    pub fn raw(self) -> napi_env {
        self.0
    }

    fn out<T>(self, f: impl FnOnce(*mut T) -> ffi::napi_status) -> JsResult<T>
    where
        T: Default,
    {
        let mut v = T::default();
        check(f(&mut v))?;
        Ok(v)
    }
    fn out_value(self, f: impl FnOnce(*mut napi_value) -> ffi::napi_status) -> JsResult<Value> {
        let mut v: napi_value = ptr::null_mut();
        check(f(&mut v))?;
        Ok(v)
    }

    // ---- creating values ----
    pub fn undefined(self) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_get_undefined(self.0, r) })
    }
    pub fn null(self) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_get_null(self.0, r) })
    }
    pub fn bool(self, b: bool) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_get_boolean(self.0, b, r) })
    }
    pub fn f64(self, x: f64) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_create_double(self.0, x, r) })
    }
    /// A u64 that is known to fit a JS number exactly (addresses, lengths, counts).
    pub fn num(self, x: u64) -> JsResult<Value> {
        self.f64(x as f64)
    }
    pub fn bigint(self, x: u64) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_create_bigint_uint64(self.0, x, r) })
    }
    pub fn str(self, s: &str) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_create_string_utf8(self.0, s.as_ptr().cast(), s.len(), r) })
    }
    pub fn object(self) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_create_object(self.0, r) })
    }
    pub fn array(self, len: usize) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_create_array_with_length(self.0, len, r) })
    }
    pub fn set(self, obj: Value, name: &CStr, v: Value) -> JsResult<()> {
        check(unsafe { ffi::napi_set_named_property(self.0, obj, name.as_ptr(), v) })
    }
    pub fn set_index(self, arr: Value, i: u32, v: Value) -> JsResult<()> {
        check(unsafe { ffi::napi_set_element(self.0, arr, i, v) })
    }
    /// `{ name: value, ... }` in one go.
    pub fn object_with(self, props: &[(&CStr, Value)]) -> JsResult<Value> {
        let o = self.object()?;
        for (k, v) in props {
            self.set(o, k, *v)?;
        }
        Ok(o)
    }
    pub fn str_array(self, items: &[&str]) -> JsResult<Value> {
        let a = self.array(items.len())?;
        for (i, s) in items.iter().enumerate() {
            self.set_index(a, i as u32, self.str(s)?)?;
        }
        Ok(a)
    }
    pub fn array_of(self, items: impl ExactSizeIterator<Item = JsResult<Value>>) -> JsResult<Value> {
        let a = self.array(items.len())?;
        for (i, v) in items.enumerate() {
            self.set_index(a, i as u32, v?)?;
        }
        Ok(a)
    }

    fn typed_array<T: Copy>(self, kind: ffi::napi_typedarray_type, items: &[T]) -> JsResult<Value> {
        let bytes = std::mem::size_of_val(items);
        let mut data: *mut c_void = ptr::null_mut();
        let ab = self.out_value(|r| unsafe { ffi::napi_create_arraybuffer(self.0, bytes, &mut data, r) })?;
        if bytes > 0 {
            // SAFETY: the new ArrayBuffer has `bytes` writable bytes at `data`, suitably
            // aligned for any element type (V8 allocates with malloc alignment).
            unsafe { ptr::copy_nonoverlapping(items.as_ptr().cast::<u8>(), data.cast::<u8>(), bytes) };
        }
        self.out_value(|r| unsafe { ffi::napi_create_typedarray(self.0, kind, items.len(), ab, 0, r) })
    }
    pub fn float64_array(self, items: &[f64]) -> JsResult<Value> {
        self.typed_array(ffi::NAPI_FLOAT64_ARRAY, items)
    }
    pub fn bigint64_array(self, items: &[i64]) -> JsResult<Value> {
        self.typed_array(ffi::NAPI_BIGINT64_ARRAY, items)
    }
    pub fn biguint64_array(self, items: &[u64]) -> JsResult<Value> {
        self.typed_array(ffi::NAPI_BIGUINT64_ARRAY, items)
    }
    pub fn uint8_array(self, items: &[u8]) -> JsResult<Value> {
        self.typed_array(ffi::NAPI_UINT8_ARRAY, items)
    }

    // ---- reading values ----
    pub fn kind(self, v: Value) -> JsResult<Kind> {
        let t = self.out(|r| unsafe { ffi::napi_typeof(self.0, v, r) })?;
        Ok(match t {
            ffi::NAPI_UNDEFINED => Kind::Undefined,
            ffi::NAPI_NULL => Kind::Null,
            ffi::NAPI_BOOLEAN => Kind::Boolean,
            ffi::NAPI_NUMBER => Kind::Number,
            ffi::NAPI_STRING => Kind::String,
            ffi::NAPI_SYMBOL => Kind::Symbol,
            ffi::NAPI_FUNCTION => Kind::Function,
            ffi::NAPI_EXTERNAL => Kind::External,
            ffi::NAPI_BIGINT => Kind::BigInt,
            _ => Kind::Object,
        })
    }
    pub fn get(self, obj: Value, name: &CStr) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_get_named_property(self.0, obj, name.as_ptr(), r) })
    }
    pub fn get_index(self, arr: Value, i: u32) -> JsResult<Value> {
        self.out_value(|r| unsafe { ffi::napi_get_element(self.0, arr, i, r) })
    }
    pub fn is_array(self, v: Value) -> JsResult<bool> {
        self.out(|r| unsafe { ffi::napi_is_array(self.0, v, r) })
    }
    pub fn array_len(self, v: Value) -> JsResult<u32> {
        self.out(|r| unsafe { ffi::napi_get_array_length(self.0, v, r) })
    }

    pub fn to_f64(self, v: Value, what: &str) -> JsResult<f64> {
        if self.kind(v)? != Kind::Number {
            return type_error(format!("{what} must be a number"));
        }
        self.out(|r| unsafe { ffi::napi_get_value_double(self.0, v, r) })
    }
    /// A non-negative integer below 2^53 (addresses, lengths, offsets).
    pub fn to_u64(self, v: Value, what: &str) -> JsResult<u64> {
        let x = self.to_f64(v, what)?;
        if !(x.is_finite() && x.fract() == 0.0) {
            return range_error(format!("{what} must be an integer, got {x}"));
        }
        if x < 0.0 || x > MAX_SAFE as f64 {
            return range_error(format!("{what} must be in [0, 2^53), got {x}"));
        }
        Ok(x as u64)
    }
    /// A u64 given as a number (< 2^53) or a bigint (full range).
    pub fn to_u64_or_bigint(self, v: Value, what: &str) -> JsResult<u64> {
        if self.kind(v)? == Kind::BigInt {
            let mut lossless = false;
            let x = self.out(|r| unsafe { ffi::napi_get_value_bigint_uint64(self.0, v, r, &mut lossless) })?;
            if !lossless {
                return range_error(format!("{what} must fit in 64 unsigned bits"));
            }
            return Ok(x);
        }
        self.to_u64(v, what)
    }
    /// A file descriptor number (0 ..= i32::MAX). -1 is accepted: it is what a closed
    /// handle holds, and the kernel's EBADF says the rest.
    pub fn to_fd(self, v: Value) -> JsResult<i32> {
        let x = self.to_f64(v, "fd")?;
        if !(x.fract() == 0.0 && x >= -1.0 && x <= i32::MAX as f64) {
            return range_error(format!("fd must be an integer file descriptor, got {x}"));
        }
        Ok(x as i32)
    }
    pub fn to_bool(self, v: Value, what: &str) -> JsResult<bool> {
        if self.kind(v)? != Kind::Boolean {
            return type_error(format!("{what} must be a boolean"));
        }
        self.out(|r| unsafe { ffi::napi_get_value_bool(self.0, v, r) })
    }
    pub fn to_string(self, v: Value, what: &str) -> JsResult<String> {
        if self.kind(v)? != Kind::String {
            return type_error(format!("{what} must be a string"));
        }
        let len = self.out(|r| unsafe { ffi::napi_get_value_string_utf8(self.0, v, ptr::null_mut(), 0, r) })?;
        let mut buf = vec![0u8; len + 1];
        let mut written = 0usize;
        check(unsafe { ffi::napi_get_value_string_utf8(self.0, v, buf.as_mut_ptr().cast(), buf.len(), &mut written) })?;
        buf.truncate(written);
        String::from_utf8(buf).map_err(|_| JsError::Type(format!("{what} is not valid UTF-8")))
    }

    /// The bytes of a Buffer / TypedArray, without copying.
    pub fn to_bytes(self, v: Value, what: &str) -> JsResult<Bytes> {
        let is_ta = self.out(|r| unsafe { ffi::napi_is_typedarray(self.0, v, r) })?;
        if !is_ta {
            return type_error(format!("{what} must be a Buffer or Uint8Array"));
        }
        let (kind, len, data) = self.typed_info(v)?;
        let elem = match kind {
            0..=2 => 1,
            3 | 4 => 2,
            5..=7 => 4,
            _ => 8,
        };
        Ok(Bytes { ptr: data.cast(), len: len * elem })
    }

    fn typed_info(self, v: Value) -> JsResult<(ffi::napi_typedarray_type, usize, *mut c_void)> {
        let mut kind = 0;
        let mut len = 0usize;
        let mut data: *mut c_void = ptr::null_mut();
        let mut ab: napi_value = ptr::null_mut();
        let mut off = 0usize;
        check(unsafe { ffi::napi_get_typedarray_info(self.0, v, &mut kind, &mut len, &mut data, &mut ab, &mut off) })?;
        Ok((kind, len, data))
    }

    /// A typed array viewed by element type; the slice lives as long as the JS value is
    /// reachable from the current callback's arguments (see `Bytes`).
    pub fn to_typed<'a>(self, v: Value, what: &str) -> JsResult<Typed<'a>> {
        let is_ta = self.out(|r| unsafe { ffi::napi_is_typedarray(self.0, v, r) })?;
        if !is_ta {
            return type_error(format!("{what} must be a typed array"));
        }
        let (kind, len, data) = self.typed_info(v)?;
        let empty = len == 0 || data.is_null();
        // SAFETY: V8 guarantees element alignment of typed array data (byte offsets of a
        // Float64Array/BigUint64Array must be multiples of 8) and len elements are live.
        Ok(unsafe {
            match kind {
                ffi::NAPI_FLOAT64_ARRAY if empty => Typed::F64(&[]),
                ffi::NAPI_FLOAT64_ARRAY => Typed::F64(std::slice::from_raw_parts(data.cast(), len)),
                ffi::NAPI_BIGUINT64_ARRAY if empty => Typed::U64(&[]),
                ffi::NAPI_BIGUINT64_ARRAY => Typed::U64(std::slice::from_raw_parts(data.cast(), len)),
                _ => Typed::Other,
            }
        })
    }

    // ---- options objects: missing/undefined means "use the default" ----
    /// `opts` itself may be undefined/null; otherwise it must be an object.
    pub fn opts(self, v: Option<Value>, what: &str) -> JsResult<Option<Value>> {
        match v {
            None => Ok(None),
            Some(v) => match self.kind(v)? {
                Kind::Undefined | Kind::Null => Ok(None),
                Kind::Object => Ok(Some(v)),
                _ => type_error(format!("{what} must be an object")),
            },
        }
    }
    pub fn opt_prop(self, obj: Option<Value>, name: &CStr) -> JsResult<Option<Value>> {
        let Some(o) = obj else { return Ok(None) };
        let v = self.get(o, name)?;
        if self.kind(v)? == Kind::Undefined { Ok(None) } else { Ok(Some(v)) }
    }
    pub fn opt_bool(self, obj: Option<Value>, name: &CStr, default: bool) -> JsResult<bool> {
        match self.opt_prop(obj, name)? {
            None => Ok(default),
            Some(v) => self.to_bool(v, &format!("option '{}'", name.to_string_lossy())),
        }
    }
    pub fn opt_u64(self, obj: Option<Value>, name: &CStr) -> JsResult<Option<u64>> {
        match self.opt_prop(obj, name)? {
            None => Ok(None),
            Some(v) => self.to_u64(v, &format!("option '{}'", name.to_string_lossy())).map(Some),
        }
    }

    // ---- calling JS ----
    pub fn call(self, func: Value, args: &[Value]) -> JsResult<Value> {
        let recv = self.undefined()?;
        self.out_value(|r| unsafe { ffi::napi_call_function(self.0, recv, func, args.len(), args.as_ptr(), r) })
    }

    // ---- native objects ----
    /// Hands `data` to JS; it is dropped when the returned value is garbage-collected.
    pub fn external<T: Send + Sync + 'static>(self, data: std::sync::Arc<T>) -> JsResult<Value> {
        unsafe extern "C" fn finalize<T>(_env: napi_env, data: *mut c_void, _hint: *mut c_void) {
            // SAFETY: data is the Arc::into_raw below, finalized exactly once by Node.
            let _ = std::panic::catch_unwind(|| drop(unsafe { std::sync::Arc::from_raw(data as *const T) }));
        }
        let raw = std::sync::Arc::into_raw(data) as *mut c_void;
        let r = self.out_value(|r| unsafe { ffi::napi_create_external(self.0, raw, Some(finalize::<T>), ptr::null_mut(), r) });
        if r.is_err() {
            // SAFETY: not handed to Node, so still ours.
            drop(unsafe { std::sync::Arc::from_raw(raw as *const T) });
        }
        r
    }
    /// The Arc behind an external made by `external::<T>`. The type check is by a tag
    /// the caller's type carries (see `Tagged`), since externals are untyped.
    pub fn get_external<T: Tagged + Send + Sync + 'static>(self, v: Value, what: &str) -> JsResult<std::sync::Arc<T>> {
        if self.kind(v)? != Kind::External {
            return type_error(format!("{what} must be a native handle"));
        }
        let mut p: *mut c_void = ptr::null_mut();
        check(unsafe { ffi::napi_get_value_external(self.0, v, &mut p) })?;
        // SAFETY: every external this crate creates points to an Arc<U> where U: Tagged
        // has TAG as its first field (#[repr(C)]), so reading a u64 there is valid; only
        // when it matches is it reinterpreted as T.
        unsafe {
            if p.is_null() || *(p as *const u64) != T::TAG {
                return type_error(format!("{what} is not the expected native handle"));
            }
            std::sync::Arc::increment_strong_count(p as *const T);
            Ok(std::sync::Arc::from_raw(p as *const T))
        }
    }
}

/// Types handed to JS as externals start with a unique tag (#[repr(C)], first field
/// `tag: u64 = Self::TAG`) so a handle of the wrong kind is refused, not misread.
pub trait Tagged {
    const TAG: u64;
}

/// The numbers of a Float64Array that must each be an integer in [0, 2^53) (addresses,
/// lengths), as u64; `what` names the argument in the RangeError.
pub fn safe_integers(s: &[f64], what: &str) -> crate::napi::JsResult<Vec<u64>> {
    s.iter()
        .enumerate()
        .map(|(i, &x)| {
            if x.is_finite() && x.fract() == 0.0 && x >= 0.0 && x <= MAX_SAFE as f64 {
                Ok(x as u64)
            } else {
                crate::napi::range_error(format!("{what}[{i}] must be an integer in [0, 2^53), got {x}"))
            }
        })
        .collect()
}
