//! What a dump reads about a frozen process from the outside, without injecting anything:
//! which pages are populated (PAGEMAP_SCAN on /proc/PID/pagemap: one region per run of pages
//! with equal categories, where reading the pagemap costs 8 bytes and a decode per page),
//! and a thread's robust futex list (get_robust_list(tid) works on another thread for a
//! caller allowed to ptrace it). Nothing here knows about JS (see exports_proc.rs).

use crate::sys::pagemap::PageRegion;
use crate::sys::{Subject, SysError, SysResult, cvt, page_size};
use crate::wp::{ScanQuery, open_pagemap, scan};
use std::os::fd::AsRawFd;

/// Scans each of `ranges` ([start, end), page aligned, sorted or not) of process `pid`.
/// Only pages with at least one category of `anyof` are reported, each region with the
/// categories of `report` it has. Regions never span two ranges (each is scanned on its
/// own), so a caller passing one range per VMA gets regions inside one VMA each.
pub fn scan_pid(pid: i32, ranges: &[(u64, u64)], anyof: u64, report: u64) -> SysResult<Vec<PageRegion>> {
    let ps = page_size() as u64;
    for &(start, end) in ranges {
        if end < start || !start.is_multiple_of(ps) || !end.is_multiple_of(ps) {
            return Err(SysError::new("PAGEMAP_SCAN", libc::EINVAL)
                .about(Subject::Pid(pid))
                .at(start)
                .because(format!("range {start:#x}-{end:#x} is not page-aligned")));
        }
    }
    let fd = open_pagemap(pid).map_err(|e| e.about(Subject::Pid(pid)))?;
    let q = ScanQuery { anyof, report, ..Default::default() };
    let mut out = Vec::new();
    for &(start, end) in ranges {
        if end > start {
            out.extend(scan(fd.as_raw_fd(), start, end - start, q).map_err(|e| e.about(Subject::Pid(pid)))?);
        }
    }
    Ok(out)
}

/// A thread's robust futex list head and the size of `struct robust_list_head`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RobustList {
    pub head: u64,
    pub len: u64,
}

/// get_robust_list(tid): the kernel checks PTRACE_MODE_READ on the thread (we trace it).
pub fn get_robust_list(tid: i32) -> SysResult<RobustList> {
    let mut head: usize = 0;
    let mut len: usize = 0;
    // SAFETY: get_robust_list writes one pointer-sized value to each of the two out-pointers,
    // which point to live locals of exactly that size.
    let rc = unsafe { libc::syscall(libc::SYS_get_robust_list, tid as libc::c_long, &mut head as *mut usize, &mut len as *mut usize) };
    cvt(rc, "get_robust_list").map_err(|e| e.about(Subject::Tid(tid)))?;
    Ok(RobustList { head: head as u64, len: len as u64 })
}
