//! Counting another thread's syscalls from the outside: a perf counter on the
//! raw_syscalls:sys_exit tracepoint, attached to one thread, with a filter on the syscall
//! number. A dump uses it to know that no syscall able to change a mapping's flags ran in a
//! window (see core-ts dump/flag-syscalls.ts). Exits, not entries, are counted: a call
//! already inside the kernel when the counter opens is still counted when it returns.
//! Nothing here knows about JS (see exports_proc.rs).

use crate::sys::{Subject, SysError, SysResult};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Where tracefs is usually mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const ID_FILE: &str = "events/raw_syscalls/sys_exit/id";

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// _IOW('$', 6, char *)
const PERF_EVENT_IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
/// _IO('$', 0)
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const ATTR_DISABLED: u64 = 1;

/// `struct perf_event_attr` as of PERF_ATTR_SIZE_VER0 (64 bytes): the kernel takes an older,
/// shorter struct and treats the fields it lacks as zero. A plain counter needs only these.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttrV0 {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// bit 0 disabled, 1 inherit, ...: only `disabled` (enabled once filtered; this thread only)
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}
const _: () = assert!(std::mem::size_of::<PerfEventAttrV0>() == 64);

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so after the last ')'.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// The tracepoint's id from tracefs: ours, or else as an ancestor sees it (`ip netns exec`
/// gives a command a /sys of its own, without tracefs; the id is the kernel's, the same in
/// every mount namespace). ENOENT naming what was tried when there is none.
pub fn sys_exit_tracepoint() -> SysResult<u64> {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(&id) = ID.get() {
        return Ok(id);
    }
    let id = find_sys_exit_tracepoint()?;
    Ok(*ID.get_or_init(|| id))
}

fn find_sys_exit_tracepoint() -> SysResult<u64> {
    let mut roots = vec![String::new()];
    let mut pid = std::process::id();
    while let Some(p) = parent_of(pid).filter(|&p| p > 1) {
        roots.push(format!("/proc/{p}/root"));
        pid = p;
    }
    for root in &roots {
        for t in TRACEFS {
            if let Ok(s) = std::fs::read_to_string(format!("{root}{t}/{ID_FILE}"))
                && let Ok(id) = s.trim().parse::<u64>()
            {
                return Ok(id);
            }
        }
    }
    Err(SysError::new("raw_syscalls:sys_exit", libc::ENOENT).because(format!("no tracefs with {ID_FILE} under {} (or as an ancestor process sees them)", TRACEFS.join(" or "))))
}

/// A counter of thread `tid`'s returns from the syscalls `nrs`, counting from when this returns.
pub fn open_exit_counter(tid: i32, tracepoint: u64, nrs: &[u32]) -> SysResult<OwnedFd> {
    // Opened disabled, and enabled once filtered: it never counts an unfiltered exit.
    let attr = PerfEventAttrV0 { kind: PERF_TYPE_TRACEPOINT, size: 64, config: tracepoint, flags: ATTR_DISABLED, ..Default::default() };
    // SAFETY: attr is a valid perf_event_attr of the size it declares; cpu -1 with a tid
    // counts that thread on any CPU; group_fd -1 makes a standalone event.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr as *const PerfEventAttrV0, tid, -1, -1, PERF_FLAG_FD_CLOEXEC) };
    if fd < 0 {
        return Err(SysError::last("perf_event_open").about(Subject::Tid(tid)));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let filter = nrs.iter().map(|n| format!("id == {n}")).collect::<Vec<_>>().join(" || ");
    let c = std::ffi::CString::new(filter).expect("no NUL in a filter of numbers");
    // SAFETY: fd is a perf event fd; the filter is a NUL-terminated string that outlives the call.
    if unsafe { libc::ioctl(fd as RawFd, PERF_EVENT_IOC_SET_FILTER, c.as_ptr()) } != 0 {
        return Err(SysError::last("PERF_EVENT_IOC_SET_FILTER").about(Subject::Tid(tid)));
    }
    // SAFETY: fd is a perf event fd; ENABLE takes no argument.
    if unsafe { libc::ioctl(fd as RawFd, PERF_EVENT_IOC_ENABLE, 0) } != 0 {
        return Err(SysError::last("PERF_EVENT_IOC_ENABLE").about(Subject::Tid(tid)));
    }
    Ok(owned)
}

/// The count so far (also after the thread has exited).
pub fn read_counter(fd: RawFd) -> SysResult<u64> {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into v, which has room for them.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    if n != 8 {
        return Err(if n < 0 { SysError::last("read perf counter") } else { SysError::new("read perf counter", libc::EIO).because(format!("{n} bytes")) }.about(Subject::Fd(fd)));
    }
    Ok(v)
}
