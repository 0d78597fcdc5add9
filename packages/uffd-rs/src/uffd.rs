//! userfaultfd operations on a raw fd, with no JS in sight. The fd's lifetime belongs to
//! the caller (the JS `Userfaultfd` object): these functions only borrow it for one call.
//!
//! Results that are part of normal lazy-migration life (the page is already there, the
//! mapping is changing, the process is gone) are `Outcome`s, not errors.

use crate::sys::uffd::*;
use crate::sys::{SysError, SysResult, cvt, ioctl_ptr, page_size};
use std::os::fd::RawFd;

pub fn open_syscall(nonblocking: bool) -> SysResult<RawFd> {
    let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 } | UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd takes only flags and returns a new fd.
    cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) }, "userfaultfd").map(|fd| fd as RawFd)
}

/// /dev/userfaultfd (Linux 6.1+): works where the syscall is restricted
/// (vm.unprivileged_userfaultfd = 0) but the device node's permissions allow it.
pub fn open_dev(nonblocking: bool) -> SysResult<RawFd> {
    // SAFETY: path is NUL-terminated; the device fd is closed before returning.
    unsafe {
        let dev = cvt(libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) as libc::c_long, "open /dev/userfaultfd")? as RawFd;
        let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 } | UFFD_USER_MODE_ONLY;
        let r = libc::ioctl(dev, USERFAULTFD_IOC_NEW as libc::c_ulong, flags);
        let r = cvt(r as libc::c_long, "USERFAULTFD_IOC_NEW");
        libc::close(dev);
        r.map(|fd| fd as RawFd)
    }
}

/// The syscall, then the device node.
pub fn open(nonblocking: bool) -> SysResult<RawFd> {
    open_syscall(nonblocking).or_else(|e| open_dev(nonblocking).map_err(|_| e))
}

#[derive(Debug, Clone, Copy)]
pub struct ApiInfo {
    /// Every feature the kernel supports (it reports all, not just the requested ones).
    pub features: u64,
    pub ioctls: u64,
}

/// UFFDIO_API: must be the first ioctl on a new uffd, and succeeds only once.
pub fn api(fd: RawFd, features: u64) -> SysResult<ApiInfo> {
    let mut a = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: a is a UffdioApi, matching UFFDIO_API's encoded size.
    unsafe { ioctl_ptr(fd, UFFDIO_API, &mut a, "UFFDIO_API")? };
    Ok(ApiInfo { features: a.features, ioctls: a.ioctls })
}

/// Feature bits this kernel supports, found on a throw-away uffd.
pub fn supported_features() -> SysResult<ApiInfo> {
    let fd = open(true)?;
    let r = api(fd, 0);
    let _ = crate::sys::close_fd(fd);
    r
}

fn check_range(op: &'static str, start: u64, len: u64) -> SysResult<()> {
    let ps = page_size() as u64;
    if !start.is_multiple_of(ps) {
        return Err(SysError::new(op, libc::EINVAL).at(start).because("start is not page-aligned"));
    }
    if len == 0 || !len.is_multiple_of(ps) {
        return Err(SysError::new(op, libc::EINVAL).at(start).because(format!("length {len:#x} is not a non-zero multiple of the page size")));
    }
    Ok(())
}

pub fn register(fd: RawFd, start: u64, len: u64, mode: u64) -> SysResult<u64> {
    check_range("UFFDIO_REGISTER", start, len)?;
    let mut r = UffdioRegister { range: UffdioRange { start, len }, mode, ioctls: 0 };
    // SAFETY: struct matches UFFDIO_REGISTER.
    unsafe { ioctl_ptr(fd, UFFDIO_REGISTER, &mut r, "UFFDIO_REGISTER") }.map_err(|e| e.at(start))?;
    Ok(r.ioctls)
}

pub fn unregister(fd: RawFd, start: u64, len: u64) -> SysResult<()> {
    check_range("UFFDIO_UNREGISTER", start, len)?;
    let mut r = UffdioRange { start, len };
    // SAFETY: struct matches UFFDIO_UNREGISTER.
    unsafe { ioctl_ptr(fd, UFFDIO_UNREGISTER, &mut r, "UFFDIO_UNREGISTER") }.map_err(|e| e.at(start))?;
    Ok(())
}

pub fn wake(fd: RawFd, start: u64, len: u64) -> SysResult<()> {
    check_range("UFFDIO_WAKE", start, len)?;
    let mut r = UffdioRange { start, len };
    // SAFETY: struct matches UFFDIO_WAKE.
    unsafe { ioctl_ptr(fd, UFFDIO_WAKE, &mut r, "UFFDIO_WAKE") }.map_err(|e| e.at(start))?;
    Ok(())
}

pub fn write_protect(fd: RawFd, start: u64, len: u64, protect: bool, dont_wake: bool) -> SysResult<()> {
    check_range("UFFDIO_WRITEPROTECT", start, len)?;
    let mode = if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 } | if dont_wake { UFFDIO_WRITEPROTECT_MODE_DONTWAKE } else { 0 };
    let mut r = UffdioWriteprotect { range: UffdioRange { start, len }, mode };
    // SAFETY: struct matches UFFDIO_WRITEPROTECT.
    unsafe { ioctl_ptr(fd, UFFDIO_WRITEPROTECT, &mut r, "UFFDIO_WRITEPROTECT") }.map_err(|e| e.at(start))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// EEXIST: a page of the range is already mapped (someone else installed it).
    Exists,
    /// EAGAIN: the mapping is changing (a non-cooperative event must be read first); retry.
    Again,
    /// ESRCH: the whole mm is gone (the process has exited).
    Gone,
    /// ENOENT: no mapping registered with this uffd is there any more (unmapped, or moved
    /// by mremap); the process itself lives on.
    Unmapped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Exists => "exists",
            Status::Again => "again",
            Status::Gone => "gone",
            Status::Unmapped => "unmapped",
        }
    }
    fn from_errno(e: i32) -> Option<Status> {
        match e {
            libc::EEXIST => Some(Status::Exists),
            libc::EAGAIN => Some(Status::Again),
            libc::ESRCH => Some(Status::Gone),
            libc::ENOENT => Some(Status::Unmapped),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub status: Status,
    /// Bytes installed before the status was reached (== len when Ok).
    pub bytes: u64,
}

#[derive(Clone, Copy, Default)]
pub struct FillMode {
    pub dont_wake: bool,
    /// Install write-protected (UFFDIO_COPY_MODE_WP); only for copy.
    pub wp: bool,
}

/// Drives COPY/ZEROPAGE over a range. `step(at, offset)` issues one ioctl and returns
/// (the struct's result field, errno or 0). The kernel may stop early: it then reports the
/// bytes done and fails with EAGAIN, and the real cause (if any) is what the next call
/// reports; so partial progress is continued and the first call without progress decides.
fn fill(op: &'static str, dst: u64, len: u64, mut step: impl FnMut(u64, u64) -> (i64, i32)) -> SysResult<Outcome> {
    check_range(op, dst, len)?;
    let mut done = 0u64;
    while done < len {
        let (res, errno) = step(dst + done, done);
        if errno == 0 {
            // Success covers the whole remaining range.
            done = len;
            break;
        }
        if res > 0 {
            done += res as u64;
            continue;
        }
        return match Status::from_errno(errno) {
            Some(status) => Ok(Outcome { status, bytes: done }),
            None => Err(SysError::new(op, errno).at(dst + done)),
        };
    }
    Ok(Outcome { status: Status::Ok, bytes: done })
}

/// UFFDIO_COPY from `src` (the caller's memory: a JS Buffer, copied by the kernel).
pub fn copy(fd: RawFd, dst: u64, src: &[u8], mode: FillMode) -> SysResult<Outcome> {
    let len = src.len() as u64;
    let m = if mode.dont_wake { UFFDIO_COPY_MODE_DONTWAKE } else { 0 } | if mode.wp { UFFDIO_COPY_MODE_WP } else { 0 };
    fill("UFFDIO_COPY", dst, len, |at, off| {
        let mut c = UffdioCopy { dst: at, src: src.as_ptr() as u64 + off, len: len - off, mode: m, copy: 0 };
        // SAFETY: struct matches UFFDIO_COPY; src..src+len is readable for the call.
        let rc = unsafe { libc::ioctl(fd, UFFDIO_COPY as libc::c_ulong, &mut c) };
        if rc == 0 { (c.copy, 0) } else { (c.copy, crate::sys::errno::last_errno()) }
    })
}

/// UFFDIO_COPY of `len` bytes read from `src` (for installs off the JS thread, where the
/// bytes belong to a JS buffer: no Rust reference to them is formed).
///
/// # Safety
/// `src..src+len` must be readable memory that stays mapped for the call.
pub unsafe fn copy_from_raw(fd: RawFd, dst: u64, src: *const u8, len: u64, mode: FillMode) -> SysResult<Outcome> {
    let m = if mode.dont_wake { UFFDIO_COPY_MODE_DONTWAKE } else { 0 } | if mode.wp { UFFDIO_COPY_MODE_WP } else { 0 };
    fill("UFFDIO_COPY", dst, len, |at, off| {
        let mut c = UffdioCopy { dst: at, src: src as u64 + off, len: len - off, mode: m, copy: 0 };
        // SAFETY: struct matches UFFDIO_COPY; the caller keeps src..src+len readable.
        let rc = unsafe { libc::ioctl(fd, UFFDIO_COPY as libc::c_ulong, &mut c) };
        if rc == 0 { (c.copy, 0) } else { (c.copy, crate::sys::errno::last_errno()) }
    })
}

pub fn zeropage(fd: RawFd, dst: u64, len: u64, mode: FillMode) -> SysResult<Outcome> {
    let m = if mode.dont_wake { UFFDIO_ZEROPAGE_MODE_DONTWAKE } else { 0 };
    fill("UFFDIO_ZEROPAGE", dst, len, |at, off| {
        let mut z = UffdioZeropage { range: UffdioRange { start: at, len: len - off }, mode: m, zeropage: 0 };
        // SAFETY: struct matches UFFDIO_ZEROPAGE.
        let rc = unsafe { libc::ioctl(fd, UFFDIO_ZEROPAGE as libc::c_ulong, &mut z) };
        if rc == 0 { (z.zeropage, 0) } else { (z.zeropage, crate::sys::errno::last_errno()) }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    Copy,
    Zero,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchRange {
    pub dst: u64,
    pub data_offset: u64,
    pub len: u64,
    pub kind: RangeKind,
}

#[derive(Debug, Default)]
pub struct BatchResult {
    pub ok: u32,
    pub exists: u32,
    pub again: u32,
    pub gone: u32,
    pub unmapped: u32,
    pub bytes: u64,
    /// Per range: 0 ok, 1 exists, 2 again, 3 gone, 4 unmapped (the range's final status).
    pub statuses: Vec<u8>,
    /// Pages skipped because they already existed.
    pub pages_existing: u64,
}

/// Installs every range without waking, then wakes each contiguous span once.
/// A range that hits an existing page skips that page and goes on (a fault-window
/// prefetch races with faults that were served meanwhile: both wrote the same data).
/// Ranges must be validated by the caller (in bounds of `data`); alignment is checked here.
pub fn install_batch(fd: RawFd, data: &[u8], ranges: &[BatchRange], mode: FillMode) -> SysResult<BatchResult> {
    let ps = page_size() as u64;
    let mut res = BatchResult { statuses: Vec::with_capacity(ranges.len()), ..Default::default() };
    // Contiguous spans to wake afterwards (ranges usually arrive in address order).
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let dw = FillMode { dont_wake: true, wp: mode.wp };
    let mut failure = None;
    for r in ranges {
        match install_one(fd, data, r, dw, ps, &mut res) {
            Ok(status) => {
                match status {
                    Status::Ok => res.ok += 1,
                    Status::Exists => res.exists += 1,
                    Status::Again => res.again += 1,
                    Status::Gone => res.gone += 1,
                    Status::Unmapped => res.unmapped += 1,
                }
                res.statuses.push(status as u8);
            }
            Err(e) => {
                failure = Some(e);
            }
        }
        // Also after a failure: pages of this range may be in and must be woken.
        let end = r.dst + r.len;
        match spans.last_mut() {
            Some((_, hi)) if *hi == r.dst => *hi = end,
            _ => spans.push((r.dst, end)),
        }
        if failure.is_some() {
            break;
        }
    }
    if !mode.dont_wake {
        // One WAKE per contiguous span instead of one per page is what makes batching
        // cheap. Waking where nobody waits is harmless.
        for (lo, hi) in spans {
            if lo % ps == 0 && hi > lo && (hi - lo) % ps == 0
                && let Err(e) = wake(fd, lo, hi - lo) {
                    failure.get_or_insert(e);
                }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(res),
    }
}

fn install_one(fd: RawFd, data: &[u8], r: &BatchRange, dw: FillMode, ps: u64, res: &mut BatchResult) -> SysResult<Status> {
    let mut at = 0u64;
    let mut skipped = false;
    loop {
        let out = match r.kind {
            RangeKind::Copy => copy(fd, r.dst + at, &data[(r.data_offset + at) as usize..(r.data_offset + r.len) as usize], dw)?,
            RangeKind::Zero => zeropage(fd, r.dst + at, r.len - at, dw)?,
        };
        at += out.bytes;
        res.bytes += out.bytes;
        if out.status == Status::Exists {
            // Skip the page that is already there and go on behind it.
            res.pages_existing += 1;
            skipped = true;
            at += ps;
            if at < r.len {
                continue;
            }
        }
        return Ok(if out.status == Status::Ok && skipped { Status::Exists } else { out.status });
    }
}
