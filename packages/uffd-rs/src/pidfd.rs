//! pidfd_open / pidfd_getfd: take a copy of another process's file descriptor (the
//! userfaultfd created inside a restored process, an fd to inspect at dump time).

use crate::sys::{Subject, SysError, SysResult};

pub fn pidfd_open(pid: i32) -> SysResult<i32> {
    // SAFETY: plain syscall with integer arguments; the result is a new fd (O_CLOEXEC).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 { Err(SysError::last("pidfd_open").about(Subject::Pid(pid))) } else { Ok(fd as i32) }
}

pub fn pidfd_getfd(pidfd: i32, target_fd: i32) -> SysResult<i32> {
    // SAFETY: as above; the new fd has FD_CLOEXEC set by the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target_fd, 0) };
    if fd < 0 {
        Err(SysError::last("pidfd_getfd").about(Subject::Fd(pidfd)).because(format!("target fd {target_fd}")))
    } else {
        Ok(fd as i32)
    }
}

pub fn close_fd(fd: i32) -> SysResult<()> {
    // SAFETY: closing an fd number JS owns; no Rust object here owns it.
    if unsafe { libc::close(fd) } < 0 { Err(SysError::last("close").about(Subject::Fd(fd))) } else { Ok(()) }
}
