//! Everything JS can call, as one table. Each function converts its arguments (bad input
//! -> TypeError/RangeError), calls into the JS-free modules, and converts the result.
//! index.js wraps these raw functions in classes; nothing else should call them.

use crate::export;
use crate::fault_loop::{FaultLoop, LoopOptions, Mode};
use crate::napi::promise::Deferred;
use crate::napi::tsfn::spawn_promise;
use crate::napi::value::Typed;
use crate::napi::{Args, Env, Export, JsError, JsResult, Kind, Value, range_error, type_error};
use crate::sys::uffd::*;
use crate::sys::{SysError, page_size, pagemap};
use crate::{probe, testing, uffd, wp};

pub const TABLE: &[Export] = &[
    // userfaultfd
    export!("uffdOpen\0" => uffd_open),
    export!("uffdClose\0" => uffd_close),
    export!("uffdHandshake\0" => uffd_handshake),
    export!("uffdRegister\0" => uffd_register),
    export!("uffdUnregister\0" => uffd_unregister),
    export!("uffdCopy\0" => uffd_copy),
    export!("uffdZeropage\0" => uffd_zeropage),
    export!("uffdWake\0" => uffd_wake),
    export!("uffdInstallBatch\0" => uffd_install_batch),
    export!("uffdWriteProtect\0" => uffd_write_protect),
    // fault loop
    export!("loopCreate\0" => loop_create),
    export!("loopAdd\0" => loop_add),
    export!("loopRemove\0" => loop_remove),
    export!("loopStop\0" => loop_stop),
    export!("loopRef\0" => loop_ref),
    export!("loopNearFaults\0" => loop_near_faults),
    export!("loopLastFault\0" => loop_last_fault),
    // write-protect tracking, kernel probe
    export!("pagemapScan\0" => pagemap_scan),
    // image checksums (CRC32C)
    export!("crc32c\0" => crc32c_js), export!("crc32cPages\0" => crc32c_pages_js),
    export!("pageOffset\0" => page_offset_js),
    export!("probe\0" => probe_kernel),
    // CPU affinity of the calling thread
    export!("setThreadAffinity\0" => set_thread_affinity),
    export!("getThreadAffinity\0" => get_thread_affinity),
    // a TCP socket's congestion control
    export!("setTcpCongestion\0" => set_tcp_congestion),
    export!("tcpCongestion\0" => tcp_congestion),
    // testing
    export!("testMapAnonymous\0" => test_map_anonymous),
    export!("testUnmap\0" => test_unmap),
    export!("testMadvise\0" => test_madvise),
    export!("testMremap\0" => test_mremap),
    export!("testTouch\0" => test_touch),
    export!("testReadU64\0" => test_read_u64),
    export!("testWriteU64\0" => test_write_u64),
    export!("testFill\0" => test_fill),
    export!("testBenchRustHandler\0" => test_bench_rust_handler),
    export!("testOnThread\0" => test_on_thread),
    export!("testForkTarget\0" => test_fork_target),
    export!("testGateTurns\0" => test_gate_turns),
];

/// Values set on the module object next to the functions.
pub fn constants(env: Env, exports: Value) -> JsResult<()> {
    env.set(exports, c"PAGE_SIZE", env.num(page_size() as u64)?)
}

// ---------- shared argument helpers ----------

fn addr_arg(env: Env, a: &Args, i: usize, what: &str) -> JsResult<u64> {
    env.to_u64(a.get(i, what)?, what)
}

fn fd_arg(env: Env, a: &Args) -> JsResult<i32> {
    env.to_fd(a.get(0, "fd")?)
}

fn outcome(env: Env, o: uffd::Outcome) -> JsResult<Value> {
    env.object_with(&[(c"status", env.str(o.status.name())?), (c"bytes", env.num(o.bytes)?)])
}

fn fill_mode(env: Env, opts: Option<Value>) -> JsResult<uffd::FillMode> {
    Ok(uffd::FillMode { dont_wake: env.opt_bool(opts, c"dontWake", false)?, wp: env.opt_bool(opts, c"wp", false)? })
}

fn check_page_multiple(len: u64, what: &str) -> JsResult<()> {
    let ps = page_size() as u64;
    if len == 0 || !len.is_multiple_of(ps) {
        return range_error(format!("{what} must be a non-zero multiple of the page size ({ps}), got {len}"));
    }
    Ok(())
}

fn sys<T>(r: Result<T, SysError>) -> JsResult<T> {
    r.map_err(JsError::Sys)
}

// ---------- userfaultfd ----------

fn uffd_open(env: Env, a: &Args) -> JsResult<Value> {
    let nonblocking = match a.opt(0)? {
        None => true,
        Some(v) => env.to_bool(v, "nonBlocking")?,
    };
    env.num(sys(uffd::open(nonblocking))? as u64)
}

fn uffd_close(env: Env, a: &Args) -> JsResult<Value> {
    sys(crate::sys::close_fd(fd_arg(env, a)?))?;
    env.undefined()
}

fn feature_bits(env: Env, v: Value) -> JsResult<u64> {
    if !env.is_array(v)? {
        return type_error("features must be an array of feature names");
    }
    let mut bits = 0;
    for i in 0..env.array_len(v)? {
        let name = env.to_string(env.get_index(v, i)?, "feature")?;
        bits |= match feature_bit(&name) {
            Some(b) => b,
            None => return range_error(format!("unknown userfaultfd feature '{name}' (known: {})", FEATURES.iter().map(|f| f.0).collect::<Vec<_>>().join(", "))),
        };
    }
    Ok(bits)
}

fn uffd_handshake(env: Env, a: &Args) -> JsResult<Value> {
    let fd = fd_arg(env, a)?;
    let want = match a.opt(1)? {
        None => 0,
        Some(v) => feature_bits(env, v)?,
    };
    let info = match uffd::api(fd, want) {
        Ok(i) => i,
        Err(e) if e.errno == libc::EINVAL && want != 0 => {
            // Say which feature is missing rather than a bare EINVAL.
            let lacking = uffd::supported_features().map(|s| want & !s.features).unwrap_or(0);
            return Err(JsError::Sys(if lacking != 0 {
                e.because(format!("this kernel lacks userfaultfd feature(s): {}", feature_names(lacking).join(", ")))
            } else {
                e.because("the kernel refused this feature combination (or the handshake was already done)")
            }));
        }
        Err(e) => return Err(JsError::Sys(e)),
    };
    env.object_with(&[
        (c"features", env.str_array(&feature_names(info.features))?),
        (c"enabled", env.str_array(&feature_names(want))?),
        (c"ioctls", env.str_array(&ioctl_names(info.ioctls))?),
    ])
}

fn uffd_register(env: Env, a: &Args) -> JsResult<Value> {
    let fd = fd_arg(env, a)?;
    let start = addr_arg(env, a, 1, "start")?;
    let len = addr_arg(env, a, 2, "len")?;
    let mode_obj = env.opts(Some(a.get(3, "mode")?), "mode")?;
    let mut mode = 0;
    for (name, bit) in [(c"missing", UFFDIO_REGISTER_MODE_MISSING), (c"wp", UFFDIO_REGISTER_MODE_WP), (c"minor", UFFDIO_REGISTER_MODE_MINOR)] {
        if env.opt_bool(mode_obj, name, false)? {
            mode |= bit;
        }
    }
    if mode == 0 {
        return range_error("mode must enable at least one of missing, wp, minor");
    }
    let ioctls = sys(uffd::register(fd, start, len, mode))?;
    env.object_with(&[(c"ioctls", env.str_array(&ioctl_names(ioctls))?)])
}

fn uffd_unregister(env: Env, a: &Args) -> JsResult<Value> {
    sys(uffd::unregister(fd_arg(env, a)?, addr_arg(env, a, 1, "start")?, addr_arg(env, a, 2, "len")?))?;
    env.undefined()
}

fn uffd_wake(env: Env, a: &Args) -> JsResult<Value> {
    sys(uffd::wake(fd_arg(env, a)?, addr_arg(env, a, 1, "start")?, addr_arg(env, a, 2, "len")?))?;
    env.undefined()
}

fn uffd_copy(env: Env, a: &Args) -> JsResult<Value> {
    let fd = fd_arg(env, a)?;
    let dst = addr_arg(env, a, 1, "dst")?;
    // Zero-copy: the kernel reads straight from the JS buffer's backing store, which
    // cannot move during this synchronous call.
    let src = env.to_bytes(a.get(2, "src")?, "src")?;
    check_page_multiple(src.len as u64, "src length")?;
    let mode = fill_mode(env, env.opts(a.opt(3)?, "options")?)?;
    outcome(env, sys(uffd::copy(fd, dst, src.as_slice(), mode))?)
}

fn uffd_zeropage(env: Env, a: &Args) -> JsResult<Value> {
    let fd = fd_arg(env, a)?;
    let dst = addr_arg(env, a, 1, "dst")?;
    let len = addr_arg(env, a, 2, "len")?;
    let mode = fill_mode(env, env.opts(a.opt(3)?, "options")?)?;
    if mode.wp {
        return range_error("zeropage cannot install write-protected pages (wp)");
    }
    outcome(env, sys(uffd::zeropage(fd, dst, len, mode))?)
}

fn uffd_write_protect(env: Env, a: &Args) -> JsResult<Value> {
    let fd = fd_arg(env, a)?;
    let start = addr_arg(env, a, 1, "start")?;
    let len = addr_arg(env, a, 2, "len")?;
    let protect = env.to_bool(a.get(3, "protect")?, "protect")?;
    let dont_wake = env.opt_bool(env.opts(a.opt(4)?, "options")?, c"dontWake", false)?;
    sys(uffd::write_protect(fd, start, len, protect, dont_wake))?;
    env.undefined()
}

/// Decodes the flat [dst, dataOffset, len, kind]* ranges and checks them against `data`
/// before anything is installed (a half-installed batch is worse than a refused one).
fn batch_ranges(env: Env, v: Value, data_len: u64) -> JsResult<Vec<uffd::BatchRange>> {
    let words: Vec<u64> = match env.to_typed(v, "ranges")? {
        Typed::U64(s) => s.to_vec(),
        Typed::F64(s) => {
            let mut out = Vec::with_capacity(s.len());
            for (i, &x) in s.iter().enumerate() {
                if !(x.is_finite() && x.fract() == 0.0 && x >= 0.0 && x <= crate::napi::value::MAX_SAFE as f64) {
                    return range_error(format!("ranges[{i}] must be an integer in [0, 2^53), got {x}"));
                }
                out.push(x as u64);
            }
            out
        }
        _ => return type_error("ranges must be a Float64Array or BigUint64Array"),
    };
    if !words.len().is_multiple_of(4) {
        return range_error(format!("ranges must hold [dst, dataOffset, len, kind] quadruples, got {} numbers", words.len()));
    }
    let ps = page_size() as u64;
    let mut out = Vec::with_capacity(words.len() / 4);
    for (i, q) in words.chunks_exact(4).enumerate() {
        let (dst, off, len, kind) = (q[0], q[1], q[2], q[3]);
        let kind = match kind {
            0 => uffd::RangeKind::Copy,
            1 => uffd::RangeKind::Zero,
            k => return range_error(format!("range {i}: kind must be 0 (copy) or 1 (zero), got {k}")),
        };
        if len == 0 || len % ps != 0 {
            return range_error(format!("range {i}: len must be a non-zero multiple of the page size, got {len}"));
        }
        if dst % ps != 0 {
            return Err(JsError::Sys(SysError::new("UFFDIO_COPY", libc::EINVAL).at(dst).because(format!("range {i}: dst is not page-aligned"))));
        }
        if kind == uffd::RangeKind::Copy && off.checked_add(len).is_none_or(|end| end > data_len) {
            return range_error(format!("range {i}: data[{off}..{}] is outside the {data_len}-byte data buffer", off.saturating_add(len)));
        }
        out.push(uffd::BatchRange { dst, data_offset: off, len, kind });
    }
    Ok(out)
}

fn uffd_install_batch(env: Env, a: &Args) -> JsResult<Value> {
    let fd = fd_arg(env, a)?;
    let data = env.to_bytes(a.get(1, "data")?, "data")?;
    let ranges = batch_ranges(env, a.get(2, "ranges")?, data.len as u64)?;
    let mode = fill_mode(env, env.opts(a.opt(3)?, "options")?)?;
    let r = sys(uffd::install_batch(fd, data.as_slice(), &ranges, mode))?;
    env.object_with(&[
        (c"ok", env.num(r.ok as u64)?),
        (c"exists", env.num(r.exists as u64)?),
        (c"again", env.num(r.again as u64)?),
        (c"gone", env.num(r.gone as u64)?),
        (c"unmapped", env.num(r.unmapped as u64)?),
        (c"bytes", env.num(r.bytes)?),
        (c"pagesExisting", env.num(r.pages_existing)?),
        (c"statuses", env.uint8_array(&r.statuses)?),
    ])
}

// ---------- fault loop ----------

fn loop_create(env: Env, a: &Args) -> JsResult<Value> {
    let cb = a.get(0, "onBatch")?;
    if env.kind(cb)? != Kind::Function {
        return type_error("onBatch must be a function");
    }
    let opts = env.opts(a.opt(1)?, "options")?;
    let cpu = env.opt_u64(opts, c"cpu")?.map(|c| c as usize);
    let mode = match env.opt_prop(opts, c"mode")? {
        None => Mode::Thread,
        Some(v) => match env.to_string(v, "option 'mode'")?.as_str() {
            "thread" => Mode::Thread,
            "event-loop" => Mode::EventLoop,
            other => return range_error(format!("option 'mode' must be 'thread' or 'event-loop', got '{other}'")),
        },
    };
    if mode == Mode::EventLoop && cpu.is_some() {
        return range_error("option 'cpu' pins the loop thread: it only applies to mode 'thread' (pin the JS thread instead)");
    }
    env.external(FaultLoop::start(env, cb, LoopOptions { cpu, mode })?)
}

fn loop_handle(env: Env, a: &Args) -> JsResult<std::sync::Arc<FaultLoop>> {
    env.get_external::<FaultLoop>(a.get(0, "loop")?, "loop")
}

fn loop_add(env: Env, a: &Args) -> JsResult<Value> {
    let l = loop_handle(env, a)?;
    sys(l.add(env, env.to_fd(a.get(1, "fd")?)?))?;
    env.undefined()
}

fn loop_remove(env: Env, a: &Args) -> JsResult<Value> {
    let l = loop_handle(env, a)?;
    sys(l.remove(env, env.to_fd(a.get(1, "fd")?)?))?;
    env.undefined()
}

fn loop_stop(env: Env, a: &Args) -> JsResult<Value> {
    let l = loop_handle(env, a)?;
    let (d, promise) = Deferred::new(env)?;
    l.stop(
        env,
        Box::new(move |env| {
            let _ = env.undefined().and_then(|u| d.resolve(env, u));
        }),
    );
    Ok(promise)
}

fn loop_ref(env: Env, a: &Args) -> JsResult<Value> {
    let l = loop_handle(env, a)?;
    l.set_ref(env, env.to_bool(a.get(1, "keepAlive")?, "keepAlive")?)?;
    env.undefined()
}

/// loopNearFaults(loop): { waited, installed, pages, serviceUs, waitedUs } taken without JS
/// so far; the service times are handed over (each is reported once).
fn loop_near_faults(env: Env, a: &Args) -> JsResult<Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let l = loop_handle(env, a)?;
    let near = l.near().unwrap_or_default();
    let service = std::mem::take(&mut *near.service_us.lock().unwrap_or_else(|p| p.into_inner()));
    let waited = std::mem::take(&mut *near.waited_us.lock().unwrap_or_else(|p| p.into_inner()));
    env.object_with(&[
        (c"waited", env.num(near.waited.load(Relaxed))?),
        (c"installed", env.num(near.installed.load(Relaxed))?),
        (c"pages", env.num(near.pages.load(Relaxed))?),
        (c"serviceUs", env.float64_array(&service)?),
        (c"waitedUs", env.float64_array(&waited)?),
    ])
}

/// loopLastFault(loop, fd): the page of the latest missing-page fault the loop read from
/// fd, whoever served it (0: none yet, or not an event-loop loop's).
fn loop_last_fault(env: Env, a: &Args) -> JsResult<Value> {
    let l = loop_handle(env, a)?;
    let fd = env.to_fd(a.get(1, "fd")?)?;
    env.f64(l.gate(fd).map_or(0, |g| g.last_fault()) as f64)
}

// ---------- write-protect tracking ----------

fn pagemap_scan(env: Env, a: &Args) -> JsResult<Value> {
    let start = addr_arg(env, a, 0, "start")?;
    let len = addr_arg(env, a, 1, "len")?;
    let opts = env.opts(a.opt(2)?, "options")?;
    let mut q = wp::ScanQuery { report: pagemap::ALL_CATEGORIES, ..Default::default() };
    for (name, bit) in pagemap::CATEGORIES {
        let cname = std::ffi::CString::new(*name).unwrap();
        if let Some(v) = env.opt_prop(opts, &cname)? {
            // true: the page must have it; false: it must not.
            q.required |= bit;
            if !env.to_bool(v, &format!("option '{name}'"))? {
                q.inverted |= bit;
            }
        }
    }
    q.reprotect = env.opt_bool(opts, c"reprotect", false)?;
    q.max_pages = env.opt_u64(opts, c"maxPages")?.unwrap_or(0);
    let regions = sys(wp::scan_self(start, len, q))?;
    env.array_of(regions.iter().map(|r| {
        env.object_with(&[(c"start", env.num(r.start)?), (c"end", env.num(r.end)?), (c"categories", env.str_array(&pagemap::category_names(r.categories))?)])
    }))
}

// ---------- probe ----------

fn check_js(env: Env, c: &probe::Check) -> JsResult<Value> {
    match c {
        Ok(()) => env.object_with(&[(c"ok", env.bool(true)?)]),
        Err(e) => env.object_with(&[(c"ok", env.bool(false)?), (c"code", env.str(e.code())?), (c"message", env.str(&e.to_string())?)]),
    }
}

fn opt_num(env: Env, v: Option<i64>) -> JsResult<Value> {
    match v {
        Some(x) => env.f64(x as f64),
        None => env.null(),
    }
}

fn probe_kernel(env: Env, _a: &Args) -> JsResult<Value> {
    let p = probe::probe();
    let u = &p.uffd;
    let (features, ioctls, unknown) = match &u.api {
        Ok(i) => {
            let known: u64 = FEATURES.iter().map(|f| f.1).fold(0, |x, y| x | y);
            (feature_names(i.features), ioctl_names(i.ioctls), i.features & !known)
        }
        Err(_) => (vec![], vec![], 0),
    };
    let api_check: probe::Check = u.api.as_ref().map(|_| ()).map_err(|e| e.clone());
    let range_ioctls = match &u.anon_range_ioctls {
        Ok(bits) => ioctl_names(*bits),
        Err(_) => vec![],
    };
    let uffd_obj = env.object_with(&[
        (c"syscall", check_js(env, &u.syscall)?),
        (c"device", check_js(env, &u.device)?),
        (c"unprivilegedSysctl", opt_num(env, u.unprivileged_sysctl)?),
        (c"api", check_js(env, &api_check)?),
        (c"features", env.str_array(&features)?),
        (c"unknownFeatureBits", env.num(unknown)?),
        (c"ioctls", env.str_array(&ioctls)?),
        (c"anonRangeIoctls", env.str_array(&range_ioctls)?),
        (c"wpAsync", check_js(env, &u.wp_async)?),
    ])?;
    env.object_with(&[
        (c"kernel", env.str(&p.kernel)?),
        (c"pageSize", env.num(p.page_size as u64)?),
        (c"userfaultfd", uffd_obj),
        (c"pagemapScan", check_js(env, &p.pagemap_scan)?),
        (c"pidfdOpen", check_js(env, &p.pidfd_open)?),
        (c"pidfdGetfd", check_js(env, &p.pidfd_getfd)?),
        (c"processVmReadv", check_js(env, &p.process_vm_readv)?),
        (c"processVmWritev", check_js(env, &p.process_vm_writev)?),
        (c"ptraceScope", opt_num(env, p.ptrace_scope)?),
    ])
}

// ---------- CPU affinity ----------

/// Optional argument i: a thread id, or 0 (the calling thread) when absent.
fn tid_opt(env: Env, a: &Args, i: usize) -> JsResult<i32> {
    match a.opt(i)? {
        None => Ok(0),
        Some(v) => {
            let x = env.to_f64(v, "tid")?;
            if !(x.fract() == 0.0 && x >= 1.0 && x <= i32::MAX as f64) {
                return range_error(format!("tid must be a positive integer, got {x}"));
            }
            Ok(x as i32)
        }
    }
}

/// sched_setaffinity(tid, cpus): by default (no tid) the calling (JS) thread only, not the process.
fn set_thread_affinity(env: Env, a: &Args) -> JsResult<Value> {
    let cpus: Vec<usize> = u64_list(env, a.get(0, "cpus")?, "cpus")?.into_iter().map(|c| c as usize).collect();
    if cpus.is_empty() {
        return range_error("cpus must not be empty");
    }
    let tid = tid_opt(env, a, 1)?;
    sys(crate::sys::pin_thread(tid, &cpus))?;
    env.undefined()
}

/// sched_getaffinity(tid ?? 0): the CPUs the calling (JS) thread, or thread tid, may run on, ascending.
fn get_thread_affinity(env: Env, a: &Args) -> JsResult<Value> {
    let tid = tid_opt(env, a, 0)?;
    let cpus = sys(crate::sys::thread_affinity(tid))?;
    env.array_of(cpus.iter().map(|&c| env.num(c as u64)))
}

// ---------- TCP congestion control ----------

/// setsockopt(fd, TCP_CONGESTION, name).
fn set_tcp_congestion(env: Env, a: &Args) -> JsResult<Value> {
    let fd = env.to_fd(a.get(0, "fd")?)?;
    let name = env.to_string(a.get(1, "name")?, "name")?;
    sys(crate::sys::tcp::set_congestion(fd, &name))?;
    env.undefined()
}

/// getsockopt(fd, TCP_CONGESTION): the algorithm the socket sends with.
fn tcp_congestion(env: Env, a: &Args) -> JsResult<Value> {
    let fd = env.to_fd(a.get(0, "fd")?)?;
    env.str(&sys(crate::sys::tcp::congestion(fd))?)
}

// ---------- testing ----------

fn test_map_anonymous(env: Env, a: &Args) -> JsResult<Value> {
    let len = addr_arg(env, a, 0, "len")?;
    check_page_multiple(len, "len")?;
    env.num(sys(testing::map_anonymous(len))?)
}

fn test_unmap(env: Env, a: &Args) -> JsResult<Value> {
    sys(testing::unmap(addr_arg(env, a, 0, "addr")?, addr_arg(env, a, 1, "len")?))?;
    env.undefined()
}

fn advice_arg(env: Env, v: Value) -> JsResult<i32> {
    Ok(match env.to_string(v, "advice")?.as_str() {
        "dontneed" => libc::MADV_DONTNEED,
        "remove" => libc::MADV_REMOVE,
        "willneed" => libc::MADV_WILLNEED,
        "nohugepage" => libc::MADV_NOHUGEPAGE,
        other => return range_error(format!("advice must be 'dontneed', 'remove', 'willneed' or 'nohugepage', got '{other}'")),
    })
}

fn test_madvise(env: Env, a: &Args) -> JsResult<Value> {
    let addr = addr_arg(env, a, 0, "addr")?;
    let len = addr_arg(env, a, 1, "len")?;
    let advice = advice_arg(env, a.get(2, "advice")?)?;
    sys(testing::madvise(addr, len, advice))?;
    env.undefined()
}

/// testOnThread(op, addr, ...): madvise(addr, len, advice) / munmap(addr, len) /
/// mremap(addr, oldLen, newLen, newAddr?) on a new native thread; resolves with the new
/// address for mremap, 0 otherwise.
fn test_on_thread(env: Env, a: &Args) -> JsResult<Value> {
    let op = env.to_string(a.get(0, "op")?, "op")?;
    let addr = addr_arg(env, a, 1, "addr")?;
    let len = addr_arg(env, a, 2, "len")?;
    let plan = match op.as_str() {
        "madvise" => testing::MmOp::Madvise { addr, len, advice: advice_arg(env, a.get(3, "advice")?)? },
        "munmap" => testing::MmOp::Unmap { addr, len },
        "mremap" => testing::MmOp::Mremap {
            addr,
            old_len: len,
            new_len: addr_arg(env, a, 3, "newLen")?,
            new_addr: match a.opt(4)? {
                None => None,
                Some(v) => Some(env.to_u64(v, "newAddr")?),
            },
        },
        other => return range_error(format!("op must be 'madvise', 'munmap' or 'mremap', got '{other}'")),
    };
    spawn_promise(env, "lazymig-mm", move || plan.run(), |env, r| env.num(sys(r)?))
}

/// testForkTarget(pages, timeoutMs) -> { pid, uffd, start, sock, done: Promise<...> }
fn test_fork_target(env: Env, a: &Args) -> JsResult<Value> {
    let pages = addr_arg(env, a, 0, "pages")? as usize;
    if !(2..=4096).contains(&pages) {
        return range_error(format!("pages must be in [2, 4096], got {pages}"));
    }
    let timeout_ms = match a.opt(1)? {
        None => 10_000,
        Some(v) => env.to_u64(v, "timeoutMs")?,
    };
    let t = sys(testing::fork_target(pages))?;
    let wait = t.waiter(timeout_ms);
    let done = spawn_promise(env, "lazymig-forkwait", move || wait.run(), |env, r| {
        let r = sys(r)?;
        let opt_i = |x: Option<i32>| match x {
            Some(v) => env.f64(v as f64),
            None => env.null(),
        };
        let opt_u = |x: Option<u64>| match x {
            Some(v) => env.bigint(v),
            None => env.null(),
        };
        env.object_with(&[
            (c"childValues", env.biguint64_array(&r.child_values)?),
            (c"childStatus", opt_u(r.child_status)?),
            (c"targetValue", opt_u(r.target_value)?),
            (c"exitCode", opt_i(r.exit_code)?),
            (c"signal", opt_i(r.signal)?),
            (c"timedOut", env.bool(r.timed_out)?),
        ])
    })?;
    env.object_with(&[
        (c"pid", env.f64(t.pid as f64)?),
        (c"uffd", env.f64(t.uffd as f64)?),
        (c"start", env.num(t.start)?),
        (c"sock", env.f64(t.sock as f64)?),
        (c"done", done),
    ])
}

fn test_mremap(env: Env, a: &Args) -> JsResult<Value> {
    let addr = addr_arg(env, a, 0, "addr")?;
    let old_len = addr_arg(env, a, 1, "oldLen")?;
    let new_len = addr_arg(env, a, 2, "newLen")?;
    let new_addr = match a.opt(3)? {
        None => None,
        Some(v) => Some(env.to_u64(v, "newAddr")?),
    };
    env.num(sys(testing::mremap(addr, old_len, new_len, new_addr))?)
}

fn u64_list(env: Env, v: Value, what: &str) -> JsResult<Vec<u64>> {
    match env.to_typed(v, what) {
        Ok(Typed::F64(s)) => s.iter().map(|&x| if x.fract() == 0.0 && x >= 0.0 && x <= crate::napi::value::MAX_SAFE as f64 { Ok(x as u64) } else { range_error(format!("{what}: {x} is not an address")) }).collect(),
        Ok(Typed::U64(s)) => Ok(s.to_vec()),
        Ok(_) => type_error(format!("{what} must be an array of numbers, a Float64Array or a BigUint64Array")),
        Err(_) => {
            if !env.is_array(v)? {
                return type_error(format!("{what} must be an array of numbers, a Float64Array or a BigUint64Array"));
            }
            (0..env.array_len(v)?).map(|i| env.to_u64(env.get_index(v, i)?, what)).collect()
        }
    }
}

fn test_touch(env: Env, a: &Args) -> JsResult<Value> {
    let opts = env.opts(Some(a.get(0, "options")?), "options")?;
    let addresses = if let Some(v) = env.opt_prop(opts, c"addresses")? {
        u64_list(env, v, "addresses")?
    } else {
        let start = env.opt_u64(opts, c"start")?.ok_or_else(|| JsError::Type("touch needs addresses, or start and count".into()))?;
        let count = env.opt_u64(opts, c"count")?.ok_or_else(|| JsError::Type("touch needs count with start".into()))?;
        let stride = env.opt_u64(opts, c"stride")?.unwrap_or(page_size() as u64);
        (0..count).map(|i| start + i * stride).collect()
    };
    let value = match env.opt_prop(opts, c"value")? {
        None => 0,
        Some(v) => env.to_u64_or_bigint(v, "value")?,
    };
    let plan = testing::TouchPlan { addresses, write: env.opt_bool(opts, c"write", false)?, value, cpu: env.opt_u64(opts, c"cpu")?.map(|c| c as usize) };
    sys(plan.validate())?;
    spawn_promise(env, "lazymig-touch", move || plan.run(), |env, r| {
        let r = sys(r)?;
        env.object_with(&[(c"values", env.biguint64_array(&r.values)?), (c"latencyNs", env.float64_array(&r.latency_ns)?)])
    })
}

fn test_gate_turns(env: Env, a: &Args) -> JsResult<Value> {
    let rounds = addr_arg(env, a, 0, "rounds")?;
    env.num(sys(crate::background::gate_turns(rounds.min(100_000) as u32))?)
}

fn test_read_u64(env: Env, a: &Args) -> JsResult<Value> {
    env.bigint(sys(testing::read_u64(addr_arg(env, a, 0, "addr")?))?)
}

fn test_write_u64(env: Env, a: &Args) -> JsResult<Value> {
    let addr = addr_arg(env, a, 0, "addr")?;
    let v = env.to_u64_or_bigint(a.get(1, "value")?, "value")?;
    sys(testing::write_u64(addr, v))?;
    env.undefined()
}

fn test_fill(env: Env, a: &Args) -> JsResult<Value> {
    let addr = addr_arg(env, a, 0, "addr")?;
    let len = addr_arg(env, a, 1, "len")?;
    let pattern = env.to_u64_or_bigint(a.get(2, "pattern")?, "pattern")?;
    sys(testing::fill(addr, len, pattern))?;
    env.undefined()
}

fn test_bench_rust_handler(env: Env, a: &Args) -> JsResult<Value> {
    let opts = env.opts(Some(a.get(0, "options")?), "options")?;
    let pages = env.opt_u64(opts, c"pages")?.unwrap_or(1000) as usize;
    if pages == 0 {
        return range_error("pages must be > 0");
    }
    let plan = testing::BenchPlan {
        pages,
        handler_cpu: env.opt_u64(opts, c"handlerCpu")?.map(|c| c as usize),
        toucher_cpu: env.opt_u64(opts, c"toucherCpu")?.map(|c| c as usize),
    };
    spawn_promise(env, "lazymig-bench", move || testing::bench_rust_handler(plan), |env, r| {
        let r = sys(r)?;
        env.object_with(&[(c"latencyNs", env.float64_array(&r.latency_ns)?), (c"mismatches", env.num(r.mismatches)?), (c"totalNs", env.num(r.total_ns)?)])
    })
}

// ---------- CRC32C (image checksums) ----------

fn crc_seed(env: Env, a: &Args, i: usize) -> JsResult<u32> {
    match a.opt(i)? {
        None => Ok(0),
        Some(v) => {
            let s = env.to_u64(v, "seed")?;
            u32::try_from(s).or_else(|_| range_error(format!("seed must be a u32, got {s}")))
        }
    }
}

/// crc32c(data, seed = 0): the CRC32C of data, continuing `seed` (a finished CRC32C).
fn crc32c_js(env: Env, a: &Args) -> JsResult<Value> {
    let data = env.to_bytes(a.get(0, "data")?, "data")?;
    let seed = crc_seed(env, a, 1)?;
    env.num(crate::crc32c::update(seed, data.as_slice()) as u64)
}

/// pageOffset(data): how far into its page the first byte of `data` lies. Only the address
/// is read, never the bytes.
fn page_offset_js(env: Env, a: &Args) -> JsResult<Value> {
    let data = env.to_bytes(a.get(0, "data")?, "data")?;
    env.num((data.ptr as usize % page_size()) as u64)
}

/// crc32cPages(data, pageSize, out: Uint32Array (checked by index.js), outOffset, seed = 0):
/// each page's CRC32C into out[outOffset..], returns crc32c(data, seed).
fn crc32c_pages_js(env: Env, a: &Args) -> JsResult<Value> {
    let data = env.to_bytes(a.get(0, "data")?, "data")?;
    let page_size = env.to_u64(a.get(1, "pageSize")?, "pageSize")? as usize;
    let out = env.to_bytes(a.get(2, "out")?, "out")?;
    let out_offset = env.to_u64(a.get(3, "outOffset")?, "outOffset")? as usize;
    let seed = crc_seed(env, a, 4)?;
    if page_size == 0 || !data.len.is_multiple_of(page_size) {
        return range_error(format!("data length {} is not a whole number of {page_size}-byte pages", data.len));
    }
    let n = data.len / page_size;
    if !(out.ptr as usize).is_multiple_of(4) || !out.len.is_multiple_of(4) {
        return type_error("out must be a Uint32Array");
    }
    let slots = out.len / 4;
    if out_offset.checked_add(n).is_none_or(|end| end > slots) {
        return range_error(format!("out has {slots} entries, {n} pages from index {out_offset} do not fit"));
    }
    if n == 0 {
        return env.num(seed as u64);
    }
    let out_start = out.ptr as usize + out_offset * 4;
    let (d0, d1) = (data.ptr as usize, data.ptr as usize + data.len);
    if out_start < d1 && d0 < out_start + n * 4 {
        return range_error("out must not overlap data");
    }
    // SAFETY: `out` is the backing store of a live typed-array argument that cannot move or
    // be freed during this synchronous call; it is 4-aligned and [out_offset, out_offset + n)
    // lies inside it (both checked above), and it does not overlap `data` (checked above), so
    // this &mut is the only reference to those bytes while it lives.
    let out_slice = unsafe { std::slice::from_raw_parts_mut((out.ptr as *mut u32).add(out_offset), n) };
    env.num(crate::crc32c::pages(data.as_slice(), page_size, out_slice, seed) as u64)
}
