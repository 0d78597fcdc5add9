//! TCP socket options: a connection's congestion control (TCP_CONGESTION), chosen per
//! socket, and holding its small writes back (TCP_CORK).
//!
//! Why the congestion control per socket: the page server's background lane moves a whole address space as fast
//! as the CPUs allow, and a machine's default may be an algorithm that paces its sending
//! (BBR, which without an fq qdisc paces with a timer in TCP itself). On a link faster
//! than the two ends' CPUs that timer costs the sender CPU and paces nothing useful
//! (docs/PERFORMANCE.md, "The sender's congestion control").

use super::{Subject, SysError, SysResult, cvt};
use std::os::fd::RawFd;

/// Longest algorithm name the kernel knows (TCP_CA_NAME_MAX, with its NUL).
const TCP_CA_NAME_MAX: usize = 16;

/// setsockopt(TCP_CONGESTION, name) on socket `fd`. ENOENT: the kernel has no such
/// algorithm (nor a module to load for it); EPERM: not allowed to this process.
pub fn set_congestion(fd: RawFd, name: &str) -> SysResult<()> {
    if name.is_empty() || name.len() >= TCP_CA_NAME_MAX || name.bytes().any(|b| b == 0) {
        return Err(SysError::new("setsockopt(TCP_CONGESTION)", libc::EINVAL).about(Subject::Fd(fd)).because(format!("not an algorithm name: {name:?}")));
    }
    // SAFETY: name is a live byte buffer of name.len() bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_ptr().cast(), name.len() as libc::socklen_t)
    };
    cvt(rc as libc::c_long, "setsockopt(TCP_CONGESTION)").map_err(|e| e.about(Subject::Fd(fd)).because(format!("algorithm {name}")))?;
    Ok(())
}

/// getsockopt(TCP_CONGESTION) on socket `fd`: the algorithm it sends with.
pub fn congestion(fd: RawFd) -> SysResult<String> {
    let mut buf = [0u8; TCP_CA_NAME_MAX];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf and len are live out-parameters; len holds buf's size.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, buf.as_mut_ptr().cast(), &mut len) };
    cvt(rc as libc::c_long, "getsockopt(TCP_CONGESTION)").map_err(|e| e.about(Subject::Fd(fd)))?;
    let got = &buf[..(len as usize).min(buf.len())];
    let end = got.iter().position(|&b| b == 0).unwrap_or(got.len());
    Ok(String::from_utf8_lossy(&got[..end]).into_owned())
}

/// setsockopt(TCP_CORK, on) on socket `fd`: while on, the kernel holds partial segments
/// back; turning it off sends what is held at once.
pub fn set_cork(fd: RawFd, on: bool) -> SysResult<()> {
    let v: libc::c_int = on.into();
    // SAFETY: a pointer to a live c_int and its size.
    let rc = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CORK, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
    cvt(rc as libc::c_long, "setsockopt(TCP_CORK)").map_err(|e| e.about(Subject::Fd(fd)))?;
    Ok(())
}
