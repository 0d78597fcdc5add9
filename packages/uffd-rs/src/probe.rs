//! What this kernel supports, found by trying it (used by `lazymig check`). Every check
//! cleans up after itself and never touches another process.

use crate::sys::uffd::*;
use crate::sys::{SysError, SysResult, close_fd, cvt, page_size};
use crate::uffd;

pub type Check = Result<(), SysError>;

pub struct UffdProbe {
    pub syscall: Check,
    pub device: Check,
    /// vm.unprivileged_userfaultfd, when readable.
    pub unprivileged_sysctl: Option<i64>,
    pub api: SysResult<uffd::ApiInfo>,
    /// ioctls the kernel offers on anonymous memory registered MISSING|WP.
    pub anon_range_ioctls: SysResult<u64>,
    pub wp_async: Check,
}

pub struct Probe {
    pub kernel: String,
    pub page_size: usize,
    pub uffd: UffdProbe,
    pub pagemap_scan: Check,
    pub pidfd_open: Check,
    pub pidfd_getfd: Check,
    pub process_vm_readv: Check,
    pub process_vm_writev: Check,
    pub ptrace_scope: Option<i64>,
}

fn read_int(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data filled by uname.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::from("unknown");
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// An anonymous page to register, unmapped on drop.
struct ScratchPage(u64);
impl ScratchPage {
    fn new() -> SysResult<Self> {
        crate::testing::map_anonymous(page_size() as u64).map(ScratchPage)
    }
}
impl Drop for ScratchPage {
    fn drop(&mut self) {
        let _ = crate::testing::unmap(self.0, page_size() as u64);
    }
}

fn with_uffd<T>(features: u64, f: impl FnOnce(i32, uffd::ApiInfo) -> SysResult<T>) -> SysResult<T> {
    let fd = uffd::open(true)?;
    let r = uffd::api(fd, features).and_then(|info| f(fd, info));
    let _ = close_fd(fd);
    r
}

fn probe_uffd() -> UffdProbe {
    let syscall = uffd::open_syscall(true).map(|fd| drop(close_fd(fd)));
    let device = uffd::open_dev(true).map(|fd| drop(close_fd(fd)));
    let api = uffd::supported_features();
    let anon_range_ioctls = with_uffd(UFFD_FEATURE_PAGEFAULT_FLAG_WP, |fd, _| {
        let page = ScratchPage::new()?;
        uffd::register(fd, page.0, page_size() as u64, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP)
    });
    let wp_async = with_uffd(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, |fd, _| {
        let page = ScratchPage::new()?;
        uffd::register(fd, page.0, page_size() as u64, UFFDIO_REGISTER_MODE_WP).map(|_| ())
    });
    UffdProbe { syscall, device, unprivileged_sysctl: read_int("/proc/sys/vm/unprivileged_userfaultfd"), api, anon_range_ioctls, wp_async }
}

fn probe_pidfd() -> (Check, Check) {
    // SAFETY: pidfd_open on our own pid; the returned fds are closed below.
    let pidfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) }, "pidfd_open");
    match pidfd {
        Err(e) => {
            let getfd = Err(SysError::new("pidfd_getfd", e.errno).because("needs pidfd_open"));
            (Err(e), getfd)
        }
        Ok(pfd) => {
            // Take a duplicate of our own stdin-or-whatever fd 0 … but fd 0 may be closed:
            // use the pidfd itself as the target fd, which surely exists.
            // SAFETY: as above.
            let got = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd, pfd, 0) }, "pidfd_getfd");
            let getfd = got.map(|fd| drop(close_fd(fd as i32)));
            let _ = close_fd(pfd as i32);
            (Ok(()), getfd)
        }
    }
}

fn probe_vm_rw() -> (Check, Check) {
    let mut src = [0x5au8; 64];
    let mut dst = [0u8; 64];
    let local = libc::iovec { iov_base: dst.as_mut_ptr().cast(), iov_len: dst.len() };
    let remote = libc::iovec { iov_base: src.as_mut_ptr().cast(), iov_len: src.len() };
    // SAFETY: both iovecs describe live buffers of this process.
    let r = cvt(unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) } as libc::c_long, "process_vm_readv");
    let read = match r {
        Ok(64) if dst == src => Ok(()),
        Ok(n) => Err(SysError::new("process_vm_readv", libc::EIO).because(format!("short or wrong read ({n} bytes)"))),
        Err(e) => Err(e),
    };
    let mut target = [0u8; 64];
    let local = libc::iovec { iov_base: src.as_mut_ptr().cast(), iov_len: src.len() };
    let remote = libc::iovec { iov_base: target.as_mut_ptr().cast(), iov_len: target.len() };
    // SAFETY: as above.
    let w = cvt(unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) } as libc::c_long, "process_vm_writev");
    let write = match w {
        Ok(64) if std::hint::black_box(target) == src => Ok(()),
        Ok(n) => Err(SysError::new("process_vm_writev", libc::EIO).because(format!("short or wrong write ({n} bytes)"))),
        Err(e) => Err(e),
    };
    (read, write)
}

pub fn probe() -> Probe {
    let (pidfd_open, pidfd_getfd) = probe_pidfd();
    let (process_vm_readv, process_vm_writev) = probe_vm_rw();
    Probe {
        kernel: kernel_release(),
        page_size: page_size(),
        uffd: probe_uffd(),
        pagemap_scan: crate::wp::probe_scan(),
        pidfd_open,
        pidfd_getfd,
        process_vm_readv,
        process_vm_writev,
        ptrace_scope: read_int("/proc/sys/kernel/yama/ptrace_scope"),
    }
}
