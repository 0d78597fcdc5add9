//! JS entry points of proc_scan.rs and syscall_count.rs (the `ptrace` feature: a dump reads
//! the processes it freezes). ptrace.js wraps these raw functions; nothing else should call them.

use crate::export;
use crate::napi::value::{Typed, safe_integers};
use crate::napi::{Args, Env, Export, JsResult, Value, range_error, type_error};
use crate::proc_scan;
use crate::syscall_count;
use std::os::fd::IntoRawFd;

pub const TABLE: &[Export] = &[
    export!("pagemapScanPid\0" => pagemap_scan_pid),
    export!("getRobustList\0" => get_robust_list),
    export!("syscallExitCounter\0" => syscall_exit_counter),
    export!("readSyscallCounter\0" => read_syscall_counter),
];

fn id_arg(env: Env, a: &Args, i: usize, what: &str) -> JsResult<i32> {
    let x = env.to_f64(a.get(i, what)?, what)?;
    if !(x.fract() == 0.0 && x >= 1.0 && x <= i32::MAX as f64) {
        return range_error(format!("{what} must be a positive integer id, got {x}"));
    }
    Ok(x as i32)
}

fn mask_arg(env: Env, a: &Args, i: usize, what: &str) -> JsResult<u64> {
    let m = env.to_u64(a.get(i, what)?, what)?;
    let known = crate::sys::pagemap::CATEGORIES.iter().fold(0, |acc, (_, bit)| acc | bit);
    if m & !known != 0 {
        return range_error(format!("{what} has unknown category bits: {m:#x}"));
    }
    Ok(m)
}

/// pagemapScanPid(pid, ranges: Float64Array [start, end, ...], anyof, report) →
/// Float64Array [start, end, categories, ...].
fn pagemap_scan_pid(env: Env, a: &Args) -> JsResult<Value> {
    let pid = id_arg(env, a, 0, "pid")?;
    let words: Vec<u64> = match env.to_typed(a.get(1, "ranges")?, "ranges")? {
        Typed::F64(s) => safe_integers(s, "ranges")?,
        _ => return type_error("ranges must be a Float64Array of [start, end] pairs"),
    };
    if !words.len().is_multiple_of(2) {
        return range_error(format!("ranges must hold [start, end] pairs, got {} numbers", words.len()));
    }
    let ranges: Vec<(u64, u64)> = words.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let anyof = mask_arg(env, a, 2, "anyof")?;
    let report = mask_arg(env, a, 3, "report")?;
    let regions = proc_scan::scan_pid(pid, &ranges, anyof, report)?;
    let flat: Vec<f64> = regions.iter().flat_map(|r| [r.start as f64, r.end as f64, r.categories as f64]).collect();
    env.float64_array(&flat)
}

fn get_robust_list(env: Env, a: &Args) -> JsResult<Value> {
    let r = proc_scan::get_robust_list(id_arg(env, a, 0, "tid")?)?;
    env.object_with(&[(c"head", env.bigint(r.head)?), (c"len", env.bigint(r.len)?)])
}

/// syscallExitCounter(tid, nrs: number[]) → fd (the caller closes it with closeFd).
fn syscall_exit_counter(env: Env, a: &Args) -> JsResult<Value> {
    let tid = id_arg(env, a, 0, "tid")?;
    let v = a.get(1, "nrs")?;
    if !env.is_array(v)? {
        return type_error("nrs must be an array of syscall numbers");
    }
    let mut nrs = Vec::new();
    for i in 0..env.array_len(v)? {
        let x = env.to_f64(env.get_index(v, i)?, "nrs[i]")?;
        if !(x.fract() == 0.0 && (0.0..1024.0).contains(&x)) {
            return range_error(format!("nrs[{i}] must be a syscall number (0..1023), got {x}"));
        }
        nrs.push(x as u32);
    }
    if nrs.is_empty() {
        return range_error("nrs must name at least one syscall");
    }
    let fd = syscall_count::open_exit_counter(tid, syscall_count::sys_exit_tracepoint()?, &nrs)?;
    env.num(fd.into_raw_fd() as u64)
}

fn read_syscall_counter(env: Env, a: &Args) -> JsResult<Value> {
    let x = env.to_f64(a.get(0, "fd")?, "fd")?;
    if !(x.fract() == 0.0 && x >= 0.0 && x <= i32::MAX as f64) {
        return range_error(format!("fd must be a file descriptor, got {x}"));
    }
    env.num(syscall_count::read_counter(x as i32)?)
}
