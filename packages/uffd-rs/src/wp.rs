//! Dirty-page tracking without soft-dirty (absent on this kernel): a range registered with
//! uffd in WP mode under UFFD_FEATURE_WP_ASYNC gets its write-protection resolved by the
//! kernel itself on write (no fault message), and PAGEMAP_SCAN lists the pages written
//! since they were last protected, optionally re-protecting them in the same walk.

use crate::sys::pagemap::*;
use crate::sys::{SysError, SysResult, cvt, ioctl_ptr, page_size};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// /proc/self/pagemap, opened once (PAGEMAP_SCAN is an ioctl on it).
fn self_pagemap() -> SysResult<RawFd> {
    static FD: OnceLock<Result<OwnedFd, i32>> = OnceLock::new();
    let r = FD.get_or_init(|| {
        // SAFETY: NUL-terminated path; the returned fd is owned by the OnceLock.
        let fd = unsafe { libc::open(c"/proc/self/pagemap".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 { Err(crate::sys::errno::last_errno()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
    });
    match r {
        Ok(fd) => Ok(fd.as_raw_fd()),
        Err(e) => Err(SysError::new("open /proc/self/pagemap", *e)),
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ScanQuery {
    /// Pages must have all of these categories (after `inverted` is applied)...
    pub required: u64,
    /// ...at least one of these (0 = no such condition)...
    pub anyof: u64,
    /// ...with these categories' meaning inverted (required to be absent).
    pub inverted: u64,
    /// Categories reported per region (and which split regions).
    pub report: u64,
    /// Write-protect the matched pages during the walk (atomically with reporting).
    pub reprotect: bool,
    /// Stop after this many pages (0 = no limit).
    pub max_pages: u64,
}

/// PAGEMAP_SCAN over [start, start+len) of this process.
pub fn scan_self(start: u64, len: u64, q: ScanQuery) -> SysResult<Vec<PageRegion>> {
    scan(self_pagemap()?, start, len, q)
}

pub fn scan(pagemap: RawFd, start: u64, len: u64, q: ScanQuery) -> SysResult<Vec<PageRegion>> {
    let ps = page_size() as u64;
    if !start.is_multiple_of(ps) || !len.is_multiple_of(ps) {
        return Err(SysError::new("PAGEMAP_SCAN", libc::EINVAL).at(start).because("range is not page-aligned"));
    }
    let end = start + len;
    let mut out: Vec<PageRegion> = Vec::new();
    let mut vec = vec![PageRegion::default(); 512];
    let mut at = start;
    let mut pages_left = q.max_pages;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: if q.reprotect { PM_SCAN_WP_MATCHING } else { 0 },
            start: at,
            end,
            walk_end: 0,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            max_pages: pages_left,
            category_inverted: q.inverted,
            category_mask: q.required,
            category_anyof_mask: q.anyof,
            return_mask: q.report,
        };
        // SAFETY: arg matches PAGEMAP_SCAN's size; vec has vec_len writable regions.
        let n = unsafe { ioctl_ptr(pagemap, PAGEMAP_SCAN, &mut arg, "PAGEMAP_SCAN") }.map_err(|e| e.at(at))? as usize;
        for r in &vec[..n.min(vec.len())] {
            // The kernel merges neighbours within one call; merge across calls too.
            match out.last_mut() {
                Some(last) if last.end == r.start && last.categories == r.categories => last.end = r.end,
                _ => out.push(*r),
            }
        }
        if q.max_pages > 0 {
            let got: u64 = vec[..n].iter().map(|r| (r.end - r.start) / ps).sum();
            pages_left = pages_left.saturating_sub(got);
            if pages_left == 0 {
                break;
            }
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(out)
}

/// Whether PAGEMAP_SCAN works here (ENOTTY before Linux 6.7).
pub fn probe_scan() -> SysResult<()> {
    // Any mapped page will do: the page holding this function's stack frame.
    let x = 0u8;
    let ps = page_size() as u64;
    let page = (&x as *const u8 as u64) & !(ps - 1);
    scan_self(page, ps, ScanQuery { report: PAGE_IS_WRITTEN, ..Default::default() }).map(|_| ())
}

/// For callers that scan another process later (pre-copy of a dump target).
#[allow(dead_code)]
pub fn open_pagemap(pid: i32) -> SysResult<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/pagemap")).unwrap();
    // SAFETY: NUL-terminated path; we own the returned fd.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) } as libc::c_long, "open pagemap")?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
