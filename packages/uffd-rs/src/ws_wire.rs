//! The wire shared by both ends' native page-protocol threads (page_stream.rs at the
//! source, page_receiver.rs at the destination): the WebSocket framing they speak, the
//! msgpack integers of the page protocol, and the buffer page data moves through.

use crate::sys::{SysError, SysResult, cvt, page_size};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Message tags of the page protocol (pageserver/src/protocol/messages.ts).
pub const TAG_REQUEST: u8 = 2;
pub const TAG_PAGES: u8 = 18;
pub const TAG_ERROR: u8 = 19;
/// Bytes of a `pages` message before its data, as both page servers write it
/// (PAGES_HEADER_SIZE in messages.ts).
pub const PAGES_HEADER: usize = 31;

/// Number.MAX_SAFE_INTEGER: the largest whole number a float64 holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;
/// linux/mman.h (5.14); the libc crate Debian ships does not have it yet.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// A page-aligned mapping whose data area starts one page in: the frame headers go just
/// before it, so header and pages leave with one send, and process_vm_readv copies into a
/// page-aligned destination (see docs/PERFORMANCE.md, "4K aliasing").
pub struct FrameBuf {
    pub ptr: *mut u8,
    len: usize,
}

impl FrameBuf {
    /// Room for `data` bytes of pages, faulted in now rather than on the first reply.
    pub fn new(data: usize) -> SysResult<FrameBuf> {
        let ps = page_size();
        let len = ps + data.div_ceil(ps) * ps;
        // SAFETY: a fresh anonymous private mapping; checked for MAP_FAILED below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(SysError::last("mmap").because(format!("{len} bytes for page frames")));
        }
        // Best effort: a kernel without MADV_POPULATE_WRITE faults the pages in on first use.
        // SAFETY: advice on our own fresh mapping.
        unsafe { libc::madvise(ptr, len, MADV_POPULATE_WRITE) };
        Ok(FrameBuf { ptr: ptr.cast(), len })
    }

    pub fn data_capacity(&self) -> usize {
        self.len - page_size()
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: the mapping is owned by the FrameBuf and only touched by the thread that owns it.
unsafe impl Send for FrameBuf {}

/// A WebSocket frame header for an unmasked server frame of `len` payload bytes.
pub fn ws_header(opcode: u8, len: usize) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    if len < 126 {
        h.push(len as u8);
    } else if len < 65536 {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// A msgpack unsigned integer at `b[*at..]`; None for any other type. A float64 holding a
/// whole number below 2^53 counts: msgpackr writes JS numbers above 2^32 (addresses) so.
pub fn mp_uint(b: &[u8], at: &mut usize) -> Option<u64> {
    let t = *b.get(*at)?;
    let (n, v) = match t {
        0x00..=0x7f => (1, t as u64),
        0xcc => (2, *b.get(*at + 1)? as u64),
        0xcd => (3, u16::from_be_bytes(b.get(*at + 1..*at + 3)?.try_into().ok()?) as u64),
        0xce => (5, u32::from_be_bytes(b.get(*at + 1..*at + 5)?.try_into().ok()?) as u64),
        0xcf => (9, u64::from_be_bytes(b.get(*at + 1..*at + 9)?.try_into().ok()?)),
        0xcb => {
            let f = f64::from_be_bytes(b.get(*at + 1..*at + 9)?.try_into().ok()?);
            if !((0.0..=MAX_SAFE_INTEGER).contains(&f) && f.fract() == 0.0) {
                return None;
            }
            (9, f as u64)
        }
        _ => return None,
    };
    *at += n;
    Some(v)
}

/// The start of a page-protocol message: a msgpack array of `fields` elements whose first
/// is `tag`, then N unsigned integers. Returns them and where the next element starts.
pub fn message_uints<const N: usize>(b: &[u8], fields: u8, tag: u8) -> Option<([u64; N], usize)> {
    if b.len() < 2 || b[0] != 0x90 | fields || b[1] != tag {
        return None;
    }
    let mut at = 2;
    let mut v = [0u64; N];
    for x in v.iter_mut() {
        *x = mp_uint(b, &mut at)?;
    }
    Some((v, at))
}

/// send(2) until every byte is out. MSG_NOSIGNAL: a peer gone away is EPIPE, not SIGPIPE.
pub fn send_all(fd: RawFd, mut b: &[u8]) -> SysResult<()> {
    while !b.is_empty() {
        // SAFETY: sends from a live slice.
        let n = unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = SysError::last("send");
            if e.errno == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        b = &b[n as usize..];
    }
    Ok(())
}

/// A duplicate of the connected socket `fd`, made blocking, for a thread that takes the
/// connection over: the caller closes its own fd and must have stopped reading it.
/// O_NONBLOCK belongs to the open file, shared with the caller's fd, which no longer reads.
pub fn take_socket(fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd (or -1), which we then own.
    let dup = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) } as libc::c_long, "fcntl(F_DUPFD_CLOEXEC)")?;
    // SAFETY: dup is a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
    // SAFETY: F_GETFL/F_SETFL on an fd we own.
    unsafe {
        let fl = cvt(libc::fcntl(dup as RawFd, libc::F_GETFL) as libc::c_long, "fcntl(F_GETFL)")?;
        cvt(libc::fcntl(dup as RawFd, libc::F_SETFL, fl as libc::c_int & !libc::O_NONBLOCK) as libc::c_long, "fcntl(F_SETFL)")?;
    }
    Ok(sock)
}
