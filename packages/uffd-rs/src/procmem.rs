//! Another process's memory: process_vm_readv/writev in batches of IOV_MAX remote iovecs,
//! and the search for a `syscall` instruction to inject through.

use crate::sys::{Subject, SysError, SysResult};
use std::ffi::c_void;

pub const IOV_MAX: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub struct Range {
    pub addr: u64,
    pub len: u64,
}

#[derive(Clone, Copy)]
pub enum Dir {
    Read,
    Write,
}

impl Dir {
    fn op(self) -> &'static str {
        match self {
            Dir::Read => "process_vm_readv",
            Dir::Write => "process_vm_writev",
        }
    }
}

/// Moves sum(len) bytes between `local` (back to back) and the remote ranges. Returns the
/// byte count; a short transfer is an EFAULT at the first address not transferred.
///
/// SAFETY: `local` must be valid for reads (Write) or writes (Read) of `len` bytes.
pub unsafe fn transfer(pid: i32, dir: Dir, ranges: &[Range], local: *mut u8, local_len: usize) -> SysResult<u64> {
    let total: u64 = ranges.iter().map(|r| r.len).sum();
    debug_assert!(total <= local_len as u64);
    let mut done: u64 = 0;
    let mut remote: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX.min(ranges.len()));
    let mut i = 0;
    while i < ranges.len() {
        // One call: up to IOV_MAX remote iovecs (zero-length ranges skipped) and one local one.
        remote.clear();
        let mut batch: u64 = 0;
        while i < ranges.len() && remote.len() < IOV_MAX {
            let r = ranges[i];
            i += 1;
            if r.len == 0 {
                continue;
            }
            remote.push(libc::iovec { iov_base: r.addr as *mut c_void, iov_len: r.len as usize });
            batch += r.len;
        }
        if remote.is_empty() {
            continue;
        }
        let mut got: u64 = 0;
        while got < batch {
            // Resume a partial transfer where it stopped: skip whole iovecs, trim the first.
            let mut skip = got;
            let mut k = 0;
            while skip >= remote[k].iov_len as u64 {
                skip -= remote[k].iov_len as u64;
                k += 1;
            }
            let mut rem: Vec<libc::iovec> = remote[k..].to_vec();
            rem[0].iov_base = (rem[0].iov_base as u64 + skip) as *mut c_void;
            rem[0].iov_len -= skip as usize;
            let loc = libc::iovec {
                // SAFETY: done + got <= total <= local_len (caller contract).
                iov_base: unsafe { local.add((done + got) as usize) }.cast(),
                iov_len: (batch - got) as usize,
            };
            // SAFETY: iovec arrays are live and sized; local memory per the caller contract.
            let n = unsafe {
                match dir {
                    Dir::Read => libc::process_vm_readv(pid, &loc, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0),
                    Dir::Write => libc::process_vm_writev(pid, &loc, 1, rem.as_ptr(), rem.len() as libc::c_ulong, 0),
                }
            };
            let at = rem[0].iov_base as u64;
            if n < 0 {
                let e = SysError::last(dir.op()).about(Subject::Pid(pid));
                if e.errno == libc::EINTR {
                    continue;
                }
                // EFAULT/ENOMEM: the address that failed; others (ESRCH, EPERM) are about the pid.
                return Err(if matches!(e.errno, libc::EFAULT | libc::ENOMEM) { e.at(at) } else { e });
            }
            if n == 0 {
                return Err(SysError::new(dir.op(), libc::EFAULT).about(Subject::Pid(pid))
                    .at(at)
                    .because(format!("{} of {total} bytes transferred; {at:#x} is not mapped or not accessible", done + got)));
            }
            got += n as u64;
        }
        done += batch;
    }
    Ok(done)
}

pub fn read_exact(pid: i32, addr: u64, buf: &mut [u8]) -> SysResult<()> {
    let r = [Range { addr, len: buf.len() as u64 }];
    // SAFETY: buf is writable for its length.
    unsafe { transfer(pid, Dir::Read, &r, buf.as_mut_ptr(), buf.len()) }.map(|_| ())
}

pub fn write_all(pid: i32, addr: u64, buf: &[u8]) -> SysResult<()> {
    let r = [Range { addr, len: buf.len() as u64 }];
    // SAFETY: process_vm_writev only reads from buf, which is readable for its length.
    unsafe { transfer(pid, Dir::Write, &r, buf.as_ptr() as *mut u8, buf.len()) }.map(|_| ())
}

/// Address of the first `0f 05` in [start, start+len) of pid's memory. Reads through
/// process_vm_readv, falling back to /proc/PID/mem (which can read execute-only pages).
pub fn find_syscall_gadget(pid: i32, start: u64, len: u64) -> SysResult<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize + 1];
    let mut off = 0u64;
    let mut mem: Option<std::fs::File> = None;
    while off < len {
        // Overlap one byte so an instruction straddling two chunks is found.
        let n = (len - off).min(CHUNK + 1);
        let slice = &mut buf[..n as usize];
        if let Err(e) = read_exact(pid, start + off, slice) {
            if e.errno != libc::EFAULT {
                return Err(e);
            }
            use std::os::unix::fs::FileExt;
            if mem.is_none() {
                mem = Some(std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|io| {
                    SysError::new("open /proc/PID/mem", io.raw_os_error().unwrap_or(libc::EIO)).about(Subject::Pid(pid))
                })?);
            }
            let f = mem.as_ref().unwrap();
            f.read_exact_at(slice, start + off).map_err(|io| {
                SysError::new("pread /proc/PID/mem", io.raw_os_error().unwrap_or(libc::EFAULT)).about(Subject::Pid(pid)).at(start + off)
            })?;
        }
        if let Some(p) = slice.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Ok(Some(start + off + p as u64));
        }
        off += CHUNK;
    }
    Ok(None)
}
