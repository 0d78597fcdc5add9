//! JS entry points of the ptrace / process-memory / pidfd / unix-socket modules (the
//! `ptrace` feature). ptrace.js wraps these raw functions; nothing else should call them.
//! Kernel failures are thrown as Node-style system errors naming the tid/pid/fd/path
//! (SysError with a subject, see sys/errno.rs); bad JS input is a TypeError/RangeError.

use crate::export;
use crate::napi::ffi::{self, napi_env, napi_value};
use crate::napi::promise::Deferred;
use crate::napi::tsfn::Tsfn;
use crate::napi::value::{MAX_SAFE, Typed, safe_integers};
use crate::napi::{Args, Env, Export, JsError, JsResult, Kind, Tagged, Value, range_error, type_error};
use crate::procmem::{self, Dir, Range};
use crate::sys::{Subject, SysError};
use crate::ptrace::inject::{Injector, ListedCall, SYSCALL_RUNNER};
use crate::ptrace::regs::{REG_NAMES, Regs};
use crate::ptrace::wait::{StopState, wait_stop};
use crate::unix_socket::{self, Event, Listener};
use crate::{pidfd, ptrace};
use std::ffi::c_void;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::ptr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TABLE: &[Export] = &[
    export!("ptraceSeize\0" => seize),
    export!("ptraceInterrupt\0" => interrupt),
    export!("ptraceWaitStop\0" => wait_stop_js),
    export!("ptraceGetRegs\0" => get_regs),
    export!("ptraceSetRegs\0" => set_regs),
    export!("ptraceGetXstate\0" => get_xstate),
    export!("ptraceSetXstate\0" => set_xstate),
    export!("ptraceGetSigmask\0" => get_sigmask),
    export!("ptraceSetSigmask\0" => set_sigmask),
    export!("ptraceGetRseqConfig\0" => get_rseq_config),
    export!("ptraceCont\0" => cont),
    export!("ptraceSyscall\0" => syscall),
    export!("ptraceDetach\0" => detach),
    export!("injectorCreate\0" => injector_create),
    export!("injectorCall\0" => injector_call),
    export!("injectorRunList\0" => injector_run_list),
    export!("syscallRunnerCode\0" => syscall_runner_code),
    export!("injectorCount\0" => injector_count),
    export!("injectorPendingSignals\0" => injector_pending),
    export!("injectorRestore\0" => injector_restore),
    export!("findSyscallGadget\0" => find_syscall_gadget),
    export!("processVmRead\0" => process_vm_read),
    export!("processVmWrite\0" => process_vm_write),
    export!("pidfdOpen\0" => pidfd_open),
    export!("pidfdGetfd\0" => pidfd_getfd),
    export!("closeFd\0" => close_fd),
    export!("unixConnect\0" => unix_connect),
    export!("unixSend\0" => unix_send),
    export!("unixRecv\0" => unix_recv),
    export!("unixServerStart\0" => unix_server_start),
    export!("unixServerClose\0" => unix_server_close),
];

// Node-API functions the shared ffi module does not declare (all in Node-API <= 8).
unsafe extern "C" {
    fn napi_create_buffer_copy(env: napi_env, length: usize, data: *const c_void, result_data: *mut *mut c_void, result: *mut napi_value) -> ffi::napi_status;
    fn napi_create_bigint_int64(env: napi_env, value: i64, result: *mut napi_value) -> ffi::napi_status;
    fn napi_get_value_bigint_int64(env: napi_env, value: napi_value, result: *mut i64, lossless: *mut bool) -> ffi::napi_status;
}

fn status(s: ffi::napi_status) -> JsResult<()> {
    crate::napi::error::check(s)
}

fn buffer(env: Env, bytes: &[u8]) -> JsResult<Value> {
    let mut v = ptr::null_mut();
    let mut data = ptr::null_mut();
    // SAFETY: JS thread; bytes is readable for its length (copied by Node).
    status(unsafe { napi_create_buffer_copy(env.raw(), bytes.len(), bytes.as_ptr().cast(), &mut data, &mut v) })?;
    Ok(v)
}

fn bigint_i64(env: Env, x: i64) -> JsResult<Value> {
    let mut v = ptr::null_mut();
    // SAFETY: JS thread, local out-pointer.
    status(unsafe { napi_create_bigint_int64(env.raw(), x, &mut v) })?;
    Ok(v)
}

/// A 64-bit register/argument value: a bigint in [-2^63, 2^64) or a safe integer number
/// (negative ones two's-complemented, e.g. -1 for an fd argument).
fn word(env: Env, v: Value, what: &str) -> JsResult<u64> {
    match env.kind(v)? {
        Kind::BigInt => {
            let mut lossless = false;
            let mut u = 0u64;
            // SAFETY: v is a bigint handle of this call.
            status(unsafe { ffi::napi_get_value_bigint_uint64(env.raw(), v, &mut u, &mut lossless) })?;
            if lossless {
                return Ok(u);
            }
            let mut i = 0i64;
            // SAFETY: as above.
            status(unsafe { napi_get_value_bigint_int64(env.raw(), v, &mut i, &mut lossless) })?;
            if lossless {
                return Ok(i as u64);
            }
            range_error(format!("{what} must fit in 64 bits"))
        }
        Kind::Number => {
            let x = env.to_f64(v, what)?;
            if !(x.is_finite() && x.fract() == 0.0 && x.abs() <= MAX_SAFE as f64) {
                return range_error(format!("{what} must be a safe integer or a bigint, got {x}"));
            }
            Ok(x as i64 as u64)
        }
        _ => type_error(format!("{what} must be a bigint or a number")),
    }
}

fn tid_arg(env: Env, a: &Args, i: usize) -> JsResult<i32> {
    let x = env.to_f64(a.get(i, "tid")?, "tid")?;
    if !(x.fract() == 0.0 && x >= 1.0 && x <= i32::MAX as f64) {
        return range_error(format!("tid must be a positive integer thread id, got {x}"));
    }
    Ok(x as i32)
}

fn pid_arg(env: Env, a: &Args, i: usize) -> JsResult<i32> {
    let x = env.to_f64(a.get(i, "pid")?, "pid")?;
    if !(x.fract() == 0.0 && x >= 1.0 && x <= i32::MAX as f64) {
        return range_error(format!("pid must be a positive integer process id, got {x}"));
    }
    Ok(x as i32)
}

fn signal_arg(env: Env, a: &Args, i: usize) -> JsResult<i32> {
    match a.opt(i)? {
        None => Ok(0),
        Some(v) => {
            let x = env.to_f64(v, "signal")?;
            if !(x.fract() == 0.0 && (0.0..=64.0).contains(&x)) {
                return range_error(format!("signal must be an integer in 0..64, got {x}"));
            }
            Ok(x as i32)
        }
    }
}

fn ms_arg(env: Env, a: &Args, i: usize, what: &str) -> JsResult<Duration> {
    let x = env.to_f64(a.get(i, what)?, what)?;
    if !(x.is_finite() && (0.0..=24.0 * 3600e3).contains(&x)) {
        return range_error(format!("{what} must be a number of milliseconds in [0, 1 day], got {x}"));
    }
    Ok(Duration::from_secs_f64(x / 1e3))
}

fn int_num(env: Env, x: i64) -> JsResult<Value> {
    env.f64(x as f64)
}

// ---------------- ptrace ----------------

fn seize(env: Env, a: &Args) -> JsResult<Value> {
    let tid = tid_arg(env, a, 0)?;
    let opts = env.opts(a.opt(1)?, "options")?;
    let exit_kill = env.opt_bool(opts, c"exitKill", false)?;
    let trace_clone = env.opt_bool(opts, c"traceClone", false)?;
    ptrace::seize(tid, exit_kill, trace_clone)?;
    env.undefined()
}

fn interrupt(env: Env, a: &Args) -> JsResult<Value> {
    ptrace::interrupt(tid_arg(env, a, 0)?)?;
    env.undefined()
}

fn stop_state(env: Env, s: StopState) -> JsResult<Value> {
    match s {
        StopState::Stopped { signal, event, group_stop } => env.object_with(&[
            (c"kind", env.str("stopped")?),
            (c"signal", int_num(env, signal as i64)?),
            (c"event", int_num(env, event as i64)?),
            (c"groupStop", env.bool(group_stop)?),
        ]),
        StopState::Syscall { signal } => env.object_with(&[(c"kind", env.str("syscall")?), (c"signal", int_num(env, signal as i64)?)]),
        StopState::Exited { code } => env.object_with(&[(c"kind", env.str("exited")?), (c"code", int_num(env, code as i64)?)]),
        StopState::Killed { signal } => env.object_with(&[(c"kind", env.str("killed")?), (c"signal", int_num(env, signal as i64)?)]),
    }
}

fn wait_stop_js(env: Env, a: &Args) -> JsResult<Value> {
    let tid = tid_arg(env, a, 0)?;
    let timeout = ms_arg(env, a, 1, "timeoutMs")?;
    let s = wait_stop(tid, timeout)?;
    stop_state(env, s)
}

fn regs_to_js(env: Env, r: &Regs) -> JsResult<Value> {
    let o = env.object()?;
    for (name, v) in REG_NAMES.iter().zip(r.0.iter()) {
        env.set(o, name, env.bigint(*v)?)?;
    }
    Ok(o)
}

fn regs_from_js(env: Env, v: Value) -> JsResult<Regs> {
    if env.kind(v)? != Kind::Object {
        return type_error("regs must be an object with the 27 fields of user_regs_struct");
    }
    let mut r = Regs::default();
    for (i, name) in REG_NAMES.iter().enumerate() {
        let f = env.get(v, name)?;
        if env.kind(f)? == Kind::Undefined {
            return type_error(format!("regs.{} is missing", name.to_string_lossy()));
        }
        r.0[i] = word(env, f, &format!("regs.{}", name.to_string_lossy()))?;
    }
    Ok(r)
}

fn get_regs(env: Env, a: &Args) -> JsResult<Value> {
    let r = ptrace::get_regs(tid_arg(env, a, 0)?)?;
    regs_to_js(env, &r)
}

fn set_regs(env: Env, a: &Args) -> JsResult<Value> {
    let tid = tid_arg(env, a, 0)?;
    let r = regs_from_js(env, a.get(1, "regs")?)?;
    ptrace::set_regs(tid, &r)?;
    env.undefined()
}

fn get_xstate(env: Env, a: &Args) -> JsResult<Value> {
    let x = ptrace::get_xstate(tid_arg(env, a, 0)?)?;
    buffer(env, &x)
}

fn set_xstate(env: Env, a: &Args) -> JsResult<Value> {
    let tid = tid_arg(env, a, 0)?;
    let b = env.to_bytes(a.get(1, "xstate")?, "xstate")?;
    ptrace::set_xstate(tid, b.as_slice())?;
    env.undefined()
}

fn get_sigmask(env: Env, a: &Args) -> JsResult<Value> {
    env.bigint(ptrace::get_sigmask(tid_arg(env, a, 0)?)?)
}

fn set_sigmask(env: Env, a: &Args) -> JsResult<Value> {
    let tid = tid_arg(env, a, 0)?;
    let m = word(env, a.get(1, "mask")?, "mask")?;
    ptrace::set_sigmask(tid, m)?;
    env.undefined()
}

fn get_rseq_config(env: Env, a: &Args) -> JsResult<Value> {
    match ptrace::get_rseq_config(tid_arg(env, a, 0)?)? {
        None => env.null(),
        Some(c) => env.object_with(&[
            (c"ptr", env.bigint(c.ptr)?),
            (c"len", env.num(c.len as u64)?),
            (c"sig", env.num(c.sig as u64)?),
            (c"flags", env.num(c.flags as u64)?),
        ]),
    }
}

fn cont(env: Env, a: &Args) -> JsResult<Value> {
    ptrace::cont(tid_arg(env, a, 0)?, signal_arg(env, a, 1)?)?;
    env.undefined()
}

fn syscall(env: Env, a: &Args) -> JsResult<Value> {
    ptrace::syscall(tid_arg(env, a, 0)?, signal_arg(env, a, 1)?)?;
    env.undefined()
}

fn detach(env: Env, a: &Args) -> JsResult<Value> {
    ptrace::detach(tid_arg(env, a, 0)?, signal_arg(env, a, 1)?)?;
    env.undefined()
}

// ---------------- syscall injection ----------------

#[repr(C)]
struct InjectorHandle {
    tag: u64,
    inner: Mutex<Injector>,
}

impl Tagged for InjectorHandle {
    const TAG: u64 = 0x6c7a_6d69_6e6a_6563; // "lzminjec"
}

fn injector(env: Env, a: &Args) -> JsResult<Arc<InjectorHandle>> {
    env.get_external::<InjectorHandle>(a.get(0, "injector")?, "injector")
}

fn injector_create(env: Env, a: &Args) -> JsResult<Value> {
    let tid = tid_arg(env, a, 0)?;
    let gadget = env.to_u64(a.get(1, "gadget")?, "gadget")?;
    let opts = env.opts(a.opt(2)?, "options")?;
    let timeout = match env.opt_prop(opts, c"timeoutMs")? {
        None => Duration::from_secs(5),
        Some(v) => {
            let x = env.to_f64(v, "option 'timeoutMs'")?;
            if !(x.is_finite() && x > 0.0 && x <= 24.0 * 3600e3) {
                return range_error(format!("option 'timeoutMs' must be in (0, 1 day], got {x}"));
            }
            Duration::from_secs_f64(x / 1e3)
        }
    };
    let inj = Injector::new(tid, gadget, timeout)?;
    env.external(Arc::new(InjectorHandle { tag: InjectorHandle::TAG, inner: Mutex::new(inj) }))
}

fn lock(h: &InjectorHandle) -> std::sync::MutexGuard<'_, Injector> {
    h.inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn injector_call(env: Env, a: &Args) -> JsResult<Value> {
    let h = injector(env, a)?;
    let nr = env.to_u64(a.get(1, "nr")?, "nr")?;
    if nr > 1023 {
        return range_error(format!("nr must be a syscall number (0..1023), got {nr}"));
    }
    let mut args = Vec::new();
    if let Some(v) = a.opt(2)? {
        if !env.is_array(v)? {
            return type_error("args must be an array of bigints or numbers");
        }
        let n = env.array_len(v)?;
        if n > 6 {
            return range_error(format!("a syscall takes at most 6 arguments, got {n}"));
        }
        for i in 0..n {
            args.push(word(env, env.get_index(v, i)?, &format!("args[{i}]"))?);
        }
    }
    let rax = lock(&h).call(nr, &args)?;
    bigint_i64(env, rax)
}

/// injectorRunList(h, runner, list, calls: BigUint64Array of [nr, a1..a6, goOn] entries) -> BigInt64Array
fn injector_run_list(env: Env, a: &Args) -> JsResult<Value> {
    let h = injector(env, a)?;
    let runner = env.to_u64(a.get(1, "runner")?, "runner")?;
    let list = env.to_u64(a.get(2, "list")?, "list")?;
    let words: Vec<u64> = match env.to_typed(a.get(3, "calls")?, "calls")? {
        Typed::U64(s) => s.to_vec(),
        _ => return type_error("calls must be a BigUint64Array of [nr, a1..a6, goOn] entries"),
    };
    if !words.len().is_multiple_of(8) {
        return range_error(format!("calls must hold entries of 8 words, got {} words", words.len()));
    }
    let mut calls = Vec::with_capacity(words.len() / 8);
    for (i, w) in words.chunks_exact(8).enumerate() {
        if w[0] > 1023 {
            return range_error(format!("calls[{i}]: nr must be a syscall number (0..1023), got {}", w[0]));
        }
        calls.push(ListedCall { nr: w[0], args: w[1..7].try_into().unwrap(), go_on: w[7] != 0 });
    }
    let results = lock(&h).run_list(runner, list, &calls)?;
    env.bigint64_array(&results)
}

fn syscall_runner_code(env: Env, _a: &Args) -> JsResult<Value> {
    env.uint8_array(&SYSCALL_RUNNER)
}

fn injector_count(env: Env, a: &Args) -> JsResult<Value> {
    let h = injector(env, a)?;
    let n = lock(&h).count;
    env.num(n)
}

fn injector_pending(env: Env, a: &Args) -> JsResult<Value> {
    let h = injector(env, a)?;
    let p = lock(&h).pending.clone();
    env.array_of(p.iter().map(|&s| env.num(s as u64)))
}

fn injector_restore(env: Env, a: &Args) -> JsResult<Value> {
    let h = injector(env, a)?;
    lock(&h).restore()?;
    env.undefined()
}

// ---------------- process memory ----------------

fn find_syscall_gadget(env: Env, a: &Args) -> JsResult<Value> {
    let pid = pid_arg(env, a, 0)?;
    let start = env.to_u64(a.get(1, "start")?, "start")?;
    let len = env.to_u64(a.get(2, "len")?, "len")?;
    match procmem::find_syscall_gadget(pid, start, len)? {
        Some(at) => env.num(at),
        None => env.null(),
    }
}

fn ranges_arg(env: Env, v: Value) -> JsResult<Vec<Range>> {
    let words: Vec<u64> = match env.to_typed(v, "ranges")? {
        Typed::F64(s) => safe_integers(s, "ranges")?,
        Typed::U64(s) => s.to_vec(),
        Typed::Other => return type_error("ranges must be a Float64Array (or BigUint64Array) of [remoteAddr, len] pairs"),
    };
    if !words.len().is_multiple_of(2) {
        return range_error(format!("ranges must hold [remoteAddr, len] pairs, got {} numbers", words.len()));
    }
    Ok(words.chunks_exact(2).map(|p| Range { addr: p[0], len: p[1] }).collect())
}

fn vm_io(env: Env, a: &Args, dir: Dir) -> JsResult<Value> {
    let pid = pid_arg(env, a, 0)?;
    let ranges = ranges_arg(env, a.get(1, "ranges")?)?;
    let what = match dir {
        Dir::Read => "into",
        Dir::Write => "from",
    };
    let local = env.to_bytes(a.get(2, what)?, what)?;
    let total = ranges.iter().try_fold(0u64, |s, r| s.checked_add(r.len));
    match total {
        Some(t) if t <= local.len as u64 => {}
        _ => return range_error(format!("the ranges cover more bytes than {what} holds ({} bytes)", local.len)),
    }
    // SAFETY: `local` is the live backing store of a JS typed array for this synchronous
    // call and holds at least `total` bytes (checked above).
    let n = unsafe { procmem::transfer(pid, dir, &ranges, local.ptr, local.len) }?;
    env.num(n)
}

fn process_vm_read(env: Env, a: &Args) -> JsResult<Value> {
    vm_io(env, a, Dir::Read)
}

fn process_vm_write(env: Env, a: &Args) -> JsResult<Value> {
    vm_io(env, a, Dir::Write)
}

// ---------------- pidfd ----------------

fn pidfd_open(env: Env, a: &Args) -> JsResult<Value> {
    let fd = pidfd::pidfd_open(pid_arg(env, a, 0)?)?;
    env.num(fd as u64)
}

fn pidfd_getfd(env: Env, a: &Args) -> JsResult<Value> {
    let pidfd = env.to_fd(a.get(0, "pidfd")?)?;
    let target = env.to_fd(a.get(1, "targetFd")?)?;
    let fd = pidfd::pidfd_getfd(pidfd, target)?;
    env.num(fd as u64)
}

fn close_fd(env: Env, a: &Args) -> JsResult<Value> {
    pidfd::close_fd(env.to_fd(a.get(0, "fd")?)?)?;
    env.undefined()
}

// ---------------- unix sockets ----------------

fn fd_list(env: Env, v: Option<Value>) -> JsResult<Vec<i32>> {
    let Some(v) = v else { return Ok(vec![]) };
    if !env.is_array(v)? {
        return type_error("fds must be an array of file descriptors");
    }
    (0..env.array_len(v)?).map(|i| env.to_fd(env.get_index(v, i)?)).collect()
}

fn fds_to_js(env: Env, fds: Vec<OwnedFd>) -> JsResult<Value> {
    // Ownership passes to JS only once the array exists; until then a failure closes them.
    let arr = env.array(fds.len())?;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    for (i, fd) in raw.iter().enumerate() {
        env.set_index(arr, i as u32, env.num(*fd as u64)?)?;
    }
    for f in fds {
        let _ = f.into_raw_fd();
    }
    Ok(arr)
}

fn unix_connect(env: Env, a: &Args) -> JsResult<Value> {
    let path = env.to_string(a.get(0, "path")?, "path")?;
    let timeout = ms_arg(env, a, 1, "timeoutMs")?;
    let fd = unix_socket::connect(&path, timeout)?;
    env.num(fd as u64)
}

fn unix_send(env: Env, a: &Args) -> JsResult<Value> {
    let fd = env.to_fd(a.get(0, "fd")?)?;
    let payload = env.to_bytes(a.get(1, "payload")?, "payload")?;
    if payload.len == 0 {
        return range_error("payload must not be empty (an empty message reads as the peer closing)");
    }
    let fds = fd_list(env, a.opt(2)?)?;
    unix_socket::send(fd, payload.as_slice(), &fds)?;
    env.undefined()
}

fn unix_recv(env: Env, a: &Args) -> JsResult<Value> {
    let fd = env.to_fd(a.get(0, "fd")?)?;
    let max = env.to_u64(a.get(1, "maxBytes")?, "maxBytes")?;
    if max == 0 || max > 64 << 20 {
        return range_error(format!("maxBytes must be in 1..64 MiB, got {max}"));
    }
    let timeout = ms_arg(env, a, 2, "timeoutMs")?;
    match unix_socket::recv(fd, max as usize, timeout)? {
        None => env.null(),
        Some((payload, fds)) => {
            let p = buffer(env, &payload)?;
            env.object_with(&[(c"payload", p), (c"fds", fds_to_js(env, fds)?)])
        }
    }
}

#[repr(C)]
struct ServerHandle {
    tag: u64,
    stop: crate::sys::EventFd,
    state: Mutex<ServerState>,
}

#[derive(Default)]
struct ServerState {
    closing: Vec<Deferred>,
    stopped: bool,
}

impl Tagged for ServerHandle {
    const TAG: u64 = 0x6c7a_6d75_7873_7276; // "lzmuxsrv"
}

fn server_event(env: Env, cb: Option<Value>, h: &ServerHandle, ev: Event) -> JsResult<()> {
    match ev {
        Event::Message { conn, payload, fds } => {
            let p = buffer(env, &payload)?;
            let msg = env.object_with(&[(c"connFd", env.num(conn as u64)?), (c"payload", p), (c"fds", fds_to_js(env, fds)?)])?;
            if let Some(cb) = cb {
                env.call(cb, &[msg])?;
            }
            Ok(())
        }
        Event::Closed { conn } => {
            let r = (|| {
                let msg = env.object_with(&[(c"connFd", env.num(conn.as_raw_fd() as u64)?), (c"closed", env.bool(true)?)])?;
                if let Some(cb) = cb {
                    env.call(cb, &[msg])?;
                }
                Ok(())
            })();
            drop(conn); // closed only now: until JS saw the event the number stayed valid
            r
        }
        Event::Stopped { conns, error } => {
            drop(conns);
            let waiting = {
                let mut st = h.state.lock().unwrap_or_else(|p| p.into_inner());
                st.stopped = true;
                std::mem::take(&mut st.closing)
            };
            for d in waiting {
                let u = env.undefined()?;
                d.resolve(env, u)?;
            }
            match error {
                // A server that died on its own says so (like an 'error' event nobody handles).
                Some(e) => Err(JsError::Sys(e)),
                None => Ok(()),
            }
        }
    }
}

fn unix_server_start(env: Env, a: &Args) -> JsResult<Value> {
    let path = env.to_string(a.get(0, "path")?, "path")?;
    let cb = a.get(1, "onMessage")?;
    if env.kind(cb)? != Kind::Function {
        return type_error("onMessage must be a function");
    }
    let listener = Listener::bind(&path)?;
    let stop = crate::sys::EventFd::new().map_err(JsError::Sys)?;
    let handle = Arc::new(ServerHandle { tag: ServerHandle::TAG, stop, state: Mutex::new(ServerState::default()) });
    let h2 = handle.clone();
    let tsfn: Tsfn<Event> = Tsfn::new(env, Some(cb), "lazymig-unix-server", Box::new(move |env, cb, ev| server_event(env, cb, &h2, ev)), None)?;
    let h3 = handle.clone();
    std::thread::Builder::new()
        .name("lazymig-unixsrv".into())
        .spawn(move || {
            let mut conns = Vec::new();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                unix_socket::serve(&listener, &h3.stop, &mut conns, &|ev| tsfn.call(ev))
            }));
            let error = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(p) => Some(
                    SysError::new("unix socket server", libc::EIO).about(Subject::Path(listener.path.clone()))
                        .because(format!("internal error: {}", crate::napi::error::panic_message(&*p))),
                ),
            };
            unix_socket::finish(listener);
            let conns = conns.into_iter().map(|c| c.fd).collect();
            tsfn.call(Event::Stopped { conns, error });
            // tsfn released here: nothing of the server keeps Node alive any more.
        })
        .map_err(|e| JsError::Plain(format!("cannot start the unix socket server thread: {e}")))?;
    env.external(handle)
}

fn unix_server_close(env: Env, a: &Args) -> JsResult<Value> {
    let h = env.get_external::<ServerHandle>(a.get(0, "server")?, "server")?;
    let (d, promise) = Deferred::new(env)?;
    let mut st = h.state.lock().unwrap_or_else(|p| p.into_inner());
    if st.stopped {
        drop(st);
        let u = env.undefined()?;
        d.resolve(env, u)?;
    } else {
        st.closing.push(d);
        drop(st);
        h.stop.signal();
    }
    Ok(promise)
}
