//! A minimal, hand-written Node-API binding layer (the `napi` crates are unavailable).
//!
//! - `ffi`: the raw C declarations, in one place.
//! - `value`: `Env` and safe conversions of JS values.
//! - `error`: JS errors (TypeError/RangeError/system errors with `code`).
//! - `callback`: the export table + trampoline (errors and panics become JS exceptions).
//! - `promise`: deferreds settled later on the JS thread.
//! - `tsfn`: thread-safe functions and promises settled from native threads.
//! - `uv`: the few libuv functions (from the node binary) the event-loop fault loop uses.

pub mod callback;
pub mod error;
pub mod ffi;
pub mod promise;
pub mod tsfn;
pub mod uv;
pub mod value;

pub use callback::{Args, Export};
pub use error::{JsError, JsResult, range_error, type_error};
pub use value::{Env, Kind, Tagged, Value};
