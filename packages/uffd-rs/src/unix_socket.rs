//! Unix sockets with SCM_RIGHTS for the lazy-pages work-dir control socket.
//!
//! The sockets are SOCK_SEQPACKET: connection-oriented like a stream socket (connect,
//! accept, EOF when the peer closes) but every send is one message and every receive
//! returns one whole message with the fds sent along with it, so no framing layer is needed
//! and an fd can never be attached to the wrong message.
//!
//! A server runs on its own native thread (epoll over the listener, its connections and an
//! eventfd to stop it) and hands each message to JS through a threadsafe function.

use crate::sys::{Subject, SysError, SysResult};
use crate::sys::EventFd;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

/// Most fds one message may carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// Largest message the server thread accepts; larger ones close the connection.
pub const SERVER_MAX_MESSAGE: usize = 1 << 20;
/// How long send waits for room in the peer's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

fn path_subject(path: &str) -> Subject {
    Subject::Path(path.to_string())
}

fn sockaddr(path: &str) -> SysResult<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::path::Path::new(path).as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= sa.sun_path.len() || bytes.contains(&0) {
        return Err(SysError::new("socket path", libc::ENAMETOOLONG).about(path_subject(path))
            .because(format!("a unix socket path must have 1..{} bytes and no NUL", sa.sun_path.len() - 1)));
    }
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((sa, len as libc::socklen_t))
}

fn new_socket(path: &str, nonblocking: bool) -> SysResult<OwnedFd> {
    let flags = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(SysError::last("socket").about(path_subject(path)));
    }
    // SAFETY: fresh fd, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn try_connect(path: &str) -> SysResult<OwnedFd> {
    let (sa, len) = sockaddr(path)?;
    let s = new_socket(path, false)?;
    loop {
        // SAFETY: sa/len describe a valid sockaddr_un.
        let rc = unsafe { libc::connect(s.as_raw_fd(), &sa as *const libc::sockaddr_un as *const libc::sockaddr, len) };
        if rc == 0 {
            return Ok(s);
        }
        let e = SysError::last("connect").about(path_subject(path));
        if e.errno != libc::EINTR {
            return Err(e);
        }
    }
}

/// Connects to the server at `path`, retrying while it does not exist or does not accept
/// yet (ENOENT, ECONNREFUSED, EAGAIN) until `timeout`. Returns a blocking, CLOEXEC fd.
pub fn connect(path: &str, timeout: Duration) -> SysResult<RawFd> {
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(1);
    loop {
        match try_connect(path) {
            Ok(s) => return Ok(s.into_raw_fd()),
            Err(e) if matches!(e.errno, libc::ENOENT | libc::ECONNREFUSED | libc::EAGAIN) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(SysError::new("connect", libc::ETIMEDOUT).about(path_subject(path))
                        .because(format!("no server accepted within {} ms (last error {})", timeout.as_millis(), e.code())));
                }
                std::thread::sleep(sleep.min(deadline - now));
                sleep = (sleep * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// poll(2) for `events` until the deadline; false on timeout.
fn wait_ready(fd: RawFd, events: libc::c_short, deadline: Instant, op: &'static str) -> SysResult<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut p = libc::pollfd { fd, events, revents: 0 };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc > 0 {
            if p.revents & libc::POLLNVAL != 0 {
                return Err(SysError::new(op, libc::EBADF).about(Subject::Fd(fd)));
            }
            return Ok(true);
        }
        if rc == 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
        }
        let e = SysError::last("poll").about(Subject::Fd(fd));
        if e.errno != libc::EINTR {
            return Err(e);
        }
    }
}

/// Sends one message (payload + fds as SCM_RIGHTS). The fds stay open here: the receiver
/// gets its own copies.
pub fn send(fd: RawFd, payload: &[u8], fds: &[RawFd]) -> SysResult<()> {
    if fds.len() > MAX_FDS {
        return Err(SysError::new("sendmsg", libc::EINVAL).about(Subject::Fd(fd)).because(format!("{} fds, at most {MAX_FDS} per message", fds.len())));
    }
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut c_void, iov_len: payload.len() };
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = if fds.is_empty() { 0 } else { (unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) }) as usize };
    let mut cbuf = vec![0u64; space.div_ceil(8)]; // u64 for cmsghdr alignment
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points to `space` bytes, enough for one cmsghdr + fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
    }
    let deadline = Instant::now() + SEND_TIMEOUT;
    loop {
        // SAFETY: msg describes live buffers.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(());
        }
        let e = SysError::last("sendmsg").about(Subject::Fd(fd));
        match e.errno {
            libc::EINTR => continue,
            libc::EAGAIN => {
                if !wait_ready(fd, libc::POLLOUT, deadline, "sendmsg")? {
                    return Err(SysError::new("sendmsg", libc::ETIMEDOUT).about(Subject::Fd(fd))
                        .because(format!("the peer did not take the message within {} s", SEND_TIMEOUT.as_secs())));
                }
            }
            libc::EMSGSIZE => return Err(e.because(format!("{} bytes is more than the socket buffer holds", payload.len()))),
            _ => return Err(e),
        }
    }
}

pub enum Received {
    Message { payload: Vec<u8>, fds: Vec<OwnedFd> },
    Closed,
    /// Nothing there (non-blocking socket).
    Empty,
}

/// One recvmsg. Fds arrive CLOEXEC. A message longer than `max` is an EMSGSIZE (its fds
/// are closed, the message is gone: it was one message).
pub fn recv_once(fd: RawFd, max: usize, dontwait: bool) -> SysResult<Received> {
    let mut payload = vec![0u8; max];
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let flags = libc::MSG_CMSG_CLOEXEC | if dontwait { libc::MSG_DONTWAIT } else { 0 };
    let n = loop {
        // SAFETY: msg describes live buffers.
        let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = SysError::last("recvmsg").about(Subject::Fd(fd));
        match e.errno {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(Received::Empty),
            libc::ECONNRESET => return Ok(Received::Closed),
            _ => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the CMSG_* helpers.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(SysError::new("recvmsg", libc::EMSGSIZE).about(Subject::Fd(fd)).because("control data truncated (too many fds)"));
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(SysError::new("recvmsg", libc::EMSGSIZE).about(Subject::Fd(fd)).because(format!("message longer than maxBytes ({max})")));
    }
    if n == 0 && fds.is_empty() {
        // Empty messages are refused by send, so 0 bytes means the peer is gone.
        return Ok(Received::Closed);
    }
    payload.truncate(n);
    Ok(Received::Message { payload, fds })
}

/// One message, waiting up to `timeout`; None when the peer closed.
pub fn recv(fd: RawFd, max: usize, timeout: Duration) -> SysResult<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let deadline = Instant::now() + timeout;
    loop {
        if !wait_ready(fd, libc::POLLIN, deadline, "recvmsg")? {
            return Err(SysError::new("recvmsg", libc::ETIMEDOUT).about(Subject::Fd(fd)).because(format!("no message within {} ms", timeout.as_millis())));
        }
        match recv_once(fd, max, true)? {
            Received::Message { payload, fds } => return Ok(Some((payload, fds))),
            Received::Closed => return Ok(None),
            Received::Empty => continue,
        }
    }
}

// ---------------- server ----------------

pub enum Event {
    Message { conn: RawFd, payload: Vec<u8>, fds: Vec<OwnedFd> },
    /// The peer closed; the fd is closed once JS has seen this event.
    Closed { conn: OwnedFd },
    /// The thread ended (close() or a fatal error); the connections still open are closed
    /// on the JS thread after every earlier event was delivered.
    Stopped { conns: Vec<OwnedFd>, error: Option<SysError> },
}

pub struct Listener {
    pub fd: OwnedFd,
    pub path: String,
    /// Identity of the socket file we created, so stop never unlinks someone else's.
    dev_ino: (u64, u64),
}

fn lstat(path: &str) -> Option<libc::stat> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: plain data out-param, NUL-terminated path.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0).then_some(st)
}

impl Listener {
    /// bind + listen. A stale socket file (nobody accepting) is replaced; a live server or
    /// a file that is not a socket is an EADDRINUSE.
    pub fn bind(path: &str) -> SysResult<Listener> {
        let (sa, len) = sockaddr(path)?;
        let s = new_socket(path, true)?;
        let do_bind = || {
            // SAFETY: valid sockaddr_un.
            unsafe { libc::bind(s.as_raw_fd(), &sa as *const libc::sockaddr_un as *const libc::sockaddr, len) }
        };
        if do_bind() != 0 {
            let e = SysError::last("bind").about(path_subject(path));
            if e.errno != libc::EADDRINUSE {
                return Err(e);
            }
            let is_sock = lstat(path).is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
            if !is_sock {
                return Err(e.because("the path exists and is not a socket"));
            }
            match try_connect(path) {
                Ok(_) => return Err(e.because("another server is listening there")),
                Err(c) if c.errno == libc::ECONNREFUSED => {
                    let cpath = std::ffi::CString::new(path).unwrap();
                    // SAFETY: NUL-terminated path.
                    unsafe { libc::unlink(cpath.as_ptr()) };
                    if do_bind() != 0 {
                        return Err(SysError::last("bind").about(path_subject(path)));
                    }
                }
                Err(_) => return Err(e),
            }
        }
        // SAFETY: bound socket.
        if unsafe { libc::listen(s.as_raw_fd(), 128) } != 0 {
            return Err(SysError::last("listen").about(path_subject(path)));
        }
        let st = lstat(path).ok_or_else(|| SysError::last("lstat").about(path_subject(path)))?;
        Ok(Listener { fd: s, path: path.to_string(), dev_ino: (st.st_dev, st.st_ino) })
    }

    fn unlink(&self) {
        if lstat(&self.path).is_some_and(|st| (st.st_dev, st.st_ino) == self.dev_ino) {
            let cpath = std::ffi::CString::new(self.path.as_str()).unwrap();
            // SAFETY: NUL-terminated path.
            unsafe { libc::unlink(cpath.as_ptr()) };
        }
    }
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd) -> SysResult<()> {
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: fd as u64 };
    // SAFETY: valid epoll fd and event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 { Err(SysError::last("epoll_ctl").about(Subject::Fd(fd))) } else { Ok(()) }
}

/// A connection of the server thread; `announced` once JS has seen its fd number (in a
/// message): only those get a closed event, the others are closed right here.
pub struct Conn {
    pub fd: OwnedFd,
    pub announced: bool,
}

/// The server thread's body: runs until `stop` is signalled or a fatal error. `conns` holds
/// the connections still open when it returns (also when it panics).
pub fn serve(listener: &Listener, stop: &EventFd, conns: &mut Vec<Conn>, emit: &dyn Fn(Event) -> bool) -> SysResult<()> {
    // SAFETY: plain syscall; owned right away.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(SysError::last("epoll_create1").about(path_subject(&listener.path)));
    }
    // SAFETY: fresh fd.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let lfd = listener.fd.as_raw_fd();
    epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, lfd)?;
    epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, stop.raw())?;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: events has room for 64 entries.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = SysError::last("epoll_wait").about(path_subject(&listener.path));
            if e.errno == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == stop.raw() {
                return Ok(());
            }
            if fd == lfd {
                loop {
                    // SAFETY: accept4 on our listener; null addr is allowed.
                    let c = unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) };
                    if c < 0 {
                        let e = SysError::last("accept4").about(path_subject(&listener.path));
                        match e.errno {
                            libc::EAGAIN => break,
                            libc::EINTR | libc::ECONNABORTED => continue,
                            // Out of fds: try again on the next readiness.
                            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => break,
                            _ => return Err(e),
                        }
                    }
                    // SAFETY: fresh fd from accept4.
                    let owned = unsafe { OwnedFd::from_raw_fd(c) };
                    epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, c)?;
                    conns.push(Conn { fd: owned, announced: false });
                }
                continue;
            }
            // A connection: drain its messages; EOF or an error closes it.
            loop {
                let r = recv_once(fd, SERVER_MAX_MESSAGE, true);
                match r {
                    Ok(Received::Message { payload, fds }) => {
                        if let Some(c) = conns.iter_mut().find(|c| c.fd.as_raw_fd() == fd) {
                            c.announced = true;
                        }
                        emit(Event::Message { conn: fd, payload, fds });
                    }
                    Ok(Received::Empty) => break,
                    Ok(Received::Closed) | Err(_) => {
                        let _ = epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_DEL, fd);
                        if let Some(i) = conns.iter().position(|c| c.fd.as_raw_fd() == fd) {
                            let conn = conns.swap_remove(i);
                            if conn.announced {
                                emit(Event::Closed { conn: conn.fd });
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
}

pub fn finish(listener: Listener) {
    listener.unlink();
    drop(listener);
}
