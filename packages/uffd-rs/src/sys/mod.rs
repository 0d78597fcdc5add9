//! Raw kernel interfaces: constants, structs and ioctl numbers, plus tiny wrappers that
//! turn -1/errno into `SysError`. Nothing here knows about JS.

pub mod errno;
pub mod futex;
pub mod ioc;
pub mod pagemap;
pub mod tcp;
pub mod uffd;

pub use errno::{Subject, SysError, SysResult, cvt};

use std::os::fd::RawFd;
use std::sync::OnceLock;

pub fn page_size() -> usize {
    static PS: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no memory-safety preconditions.
    *PS.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize)
}

/// ioctl with a pointer argument.
///
/// SAFETY: `arg` must be the struct the kernel expects for `req` (the ioctl number encodes
/// its size, checked where the numbers are defined) and live for the call.
pub unsafe fn ioctl_ptr<T>(fd: RawFd, req: u32, arg: *mut T, op: &'static str) -> SysResult<libc::c_long> {
    // SAFETY: forwarded to the caller's contract.
    let rc = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) };
    cvt(rc as libc::c_long, op)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock every latency here is measured with.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Restricts the calling thread to `cpus` (sched_setaffinity(0)); pinning to one CPU cuts
/// the wake-up cost between CPUs that dominates fault latency on small VMs (KERNEL-NOTES).
pub fn pin_current_thread(cpus: &[usize]) -> SysResult<()> {
    pin_thread(0, cpus)
}

/// sched_setaffinity(tid, cpus): tid 0 is the calling thread.
pub fn pin_thread(tid: i32, cpus: &[usize]) -> SysResult<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET is bounds-checked against its size below.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
                return Err(SysError::new("sched_setaffinity", libc::EINVAL).because(format!("cpu {cpu} out of range")));
            }
            libc::CPU_SET(cpu, &mut set);
        }
        cvt(libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) as libc::c_long, "sched_setaffinity")
            .map_err(|e| if tid != 0 { e.about(crate::sys::Subject::Tid(tid)) } else { e })?;
    }
    Ok(())
}

/// The CPUs thread `tid` may run on (0: the calling thread).
pub fn thread_affinity(tid: i32) -> SysResult<Vec<usize>> {
    // SAFETY: as above; sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        cvt(libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) as libc::c_long, "sched_getaffinity")
            .map_err(|e| if tid != 0 { e.about(crate::sys::Subject::Tid(tid)) } else { e })?;
        Ok((0..8 * std::mem::size_of::<libc::cpu_set_t>()).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// close(2) that reports errors (EBADF on a closed fd is what a user must see).
pub fn close_fd(fd: RawFd) -> SysResult<()> {
    // SAFETY: closing an fd has no memory-safety impact on this process's Rust objects;
    // fds owned by Rust objects (OwnedFd) are never passed here.
    cvt(unsafe { libc::close(fd) } as libc::c_long, "close").map(|_| ())
}

/// eventfd used to wake a thread blocked in epoll_wait.
pub struct EventFd(pub std::os::fd::OwnedFd);

impl EventFd {
    pub fn new() -> SysResult<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd returns a fresh fd we take ownership of.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as libc::c_long, "eventfd")?;
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) }))
    }
    pub fn raw(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) still means
        // "signalled", so the result is ignored.
        unsafe { libc::write(self.raw(), &one as *const u64 as *const libc::c_void, 8) };
    }
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; non-blocking.
        unsafe { libc::read(self.raw(), &mut v as *mut u64 as *mut libc::c_void, 8) };
    }
}
