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
        // Socket / path ones (unix_socket.rs). EOPNOTSUPP is ENOTSUP on Linux, listed above.
        EADDRINUSE => "EADDRINUSE",
        EADDRNOTAVAIL => "EADDRNOTAVAIL",
        ECONNREFUSED => "ECONNREFUSED",
        ECONNRESET => "ECONNRESET",
        ENOTCONN => "ENOTCONN",
        ENOTSOCK => "ENOTSOCK",
        EMSGSIZE => "EMSGSIZE",
        ENAMETOOLONG => "ENAMETOOLONG",
        EPROTOTYPE => "EPROTOTYPE",
        EISDIR => "EISDIR",
        ELOOP => "ELOOP",
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

/// Who a failed call was about (a traced thread, a process, a descriptor, a socket path).
/// JS errors carry it as a `tid`/`pid`/`fd`/`path` property, and the message names it.
#[derive(Debug, Clone)]
pub enum Subject {
    Tid(i32),
    Pid(i32),
    Fd(i32),
    Path(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Tid(t) => write!(f, "tid {t}"),
            Subject::Pid(p) => write!(f, "pid {p}"),
            Subject::Fd(d) => write!(f, "fd {d}"),
            Subject::Path(p) => write!(f, "{p}"),
        }
    }
}

/// A failed system call, with what it was doing: enough to write
/// `UFFDIO_COPY at 0x7f00..: EINVAL (Invalid argument)` or
/// `PTRACE_SEIZE tid 1234: ESRCH (No such process)` without the caller's help.
#[derive(Debug, Clone)]
pub struct SysError {
    pub errno: i32,
    /// Syscall or ioctl name, as the user would look it up ("UFFDIO_COPY", "userfaultfd").
    pub op: &'static str,
    /// Whom the call was about, when that is not obvious from `op`.
    pub subject: Option<Subject>,
    pub addr: Option<u64>,
    /// Why we refused before asking the kernel, when we did.
    pub detail: Option<String>,
}

impl SysError {
    pub fn new(op: &'static str, errno: i32) -> Self {
        SysError { errno, op, subject: None, addr: None, detail: None }
    }
    pub fn last(op: &'static str) -> Self {
        Self::new(op, last_errno())
    }
    /// Names whom the call was about (`tid 1234`, `pid 1234`, `fd 7`, a path).
    pub fn about(mut self, subject: Subject) -> Self {
        self.subject = Some(subject);
        self
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
        if let Some(s) = &self.subject {
            write!(f, " {s}")?;
        }
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
