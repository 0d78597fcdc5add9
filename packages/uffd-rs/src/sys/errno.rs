//! errno values as the names users grep for, and the error type every syscall wrapper returns.

use std::ffi::CStr;
use std::fmt;

/// The errno of the last failed libc call on this thread.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Symbolic name of an errno ("EBADF"); JS errors carry it as `code`, like Node's own.
pub fn errno_name(errno: i32) -> &'static str {
    use libc::*;
    match errno {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        ESRCH => "ESRCH",
        EINTR => "EINTR",
        EIO => "EIO",
        ENXIO => "ENXIO",
        E2BIG => "E2BIG",
        EBADF => "EBADF",
        ECHILD => "ECHILD",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        ENODEV => "ENODEV",
        ENOTDIR => "ENOTDIR",
        EINVAL => "EINVAL",
        ENFILE => "ENFILE",
        EMFILE => "EMFILE",
        ENOTTY => "ENOTTY",
        EFBIG => "EFBIG",
        ENOSPC => "ENOSPC",
        ESPIPE => "ESPIPE",
        EROFS => "EROFS",
        EPIPE => "EPIPE",
        ERANGE => "ERANGE",
        ENOSYS => "ENOSYS",
        ENOTSUP => "EOPNOTSUPP",
        EOVERFLOW => "EOVERFLOW",
        ETIMEDOUT => "ETIMEDOUT",
        EHWPOISON => "EHWPOISON",
        _ => "EUNKNOWN",
    }
}

/// strerror(3), thread-safe.
pub fn strerror(errno: i32) -> String {
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: buf is writable for its whole length; the XSI strerror_r libc binds to
    // NUL-terminates within it on success.
    let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return format!("errno {errno}");
    }
    // SAFETY: NUL-terminated by strerror_r (checked rc above).
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// A failed system call, with what it was doing: enough to write
/// `UFFDIO_COPY at 0x7f00..: EINVAL (Invalid argument)` without the caller's help.
#[derive(Debug, Clone)]
pub struct SysError {
    pub errno: i32,
    /// Syscall or ioctl name, as the user would look it up ("UFFDIO_COPY", "userfaultfd").
    pub op: &'static str,
    pub addr: Option<u64>,
    /// Why we refused before asking the kernel, when we did.
    pub detail: Option<String>,
}

impl SysError {
    pub fn new(op: &'static str, errno: i32) -> Self {
        SysError { errno, op, addr: None, detail: None }
    }
    pub fn last(op: &'static str) -> Self {
        Self::new(op, last_errno())
    }
    pub fn at(mut self, addr: u64) -> Self {
        self.addr = Some(addr);
        self
    }
    pub fn because(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn code(&self) -> &'static str {
        errno_name(self.errno)
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op)?;
        if let Some(addr) = self.addr {
            write!(f, " at {addr:#x}")?;
        }
        write!(f, ": {} ({})", self.code(), strerror(self.errno))?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

pub type SysResult<T> = Result<T, SysError>;

/// Maps a libc-style return (-1 + errno) to a SysError naming `op`.
pub fn cvt(ret: libc::c_long, op: &'static str) -> SysResult<libc::c_long> {
    if ret < 0 { Err(SysError::last(op)) } else { Ok(ret) }
}
