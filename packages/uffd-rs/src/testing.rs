//! Helpers tests and benchmarks need and a real workload would not: mapping memory in
//! this process, touching it from a native thread (a fault blocks that thread, never the
//! JS one), and a pure-Rust fault handler as the latency floor.

use crate::sys::uffd::*;
use crate::sys::{SysError, SysResult, cvt, now_ns, page_size, pin_current_thread};
use crate::uffd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub fn map_anonymous(len: u64) -> SysResult<u64> {
    if len == 0 {
        return Err(SysError::new("mmap", libc::EINVAL).because("length is 0"));
    }
    // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing
    // cannot alias anything Rust owns.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return Err(SysError::last("mmap"));
    }
    Ok(p as u64)
}

/// munmap. The caller vouches that nothing Rust owns lives there (JS only ever passes
/// addresses it got from `map_anonymous`; a wrong address is the test's own bug, as in C).
pub fn unmap(addr: u64, len: u64) -> SysResult<()> {
    // SAFETY: see above.
    cvt(unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) } as libc::c_long, "munmap").map(|_| ()).map_err(|e| e.at(addr))
}

pub fn madvise(addr: u64, len: u64, advice: i32) -> SysResult<()> {
    // SAFETY: as unmap (DONTNEED/REMOVE drop page contents, which is the point).
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) } as libc::c_long, "madvise").map(|_| ()).map_err(|e| e.at(addr))
}

/// mremap with MREMAP_MAYMOVE (and MREMAP_FIXED when `new_addr` is given).
pub fn mremap(addr: u64, old_len: u64, new_len: u64, new_addr: Option<u64>) -> SysResult<u64> {
    let flags = libc::MREMAP_MAYMOVE | if new_addr.is_some() { libc::MREMAP_FIXED } else { 0 };
    // SAFETY: as unmap: the caller owns the mapping being moved.
    let p = unsafe { libc::mremap(addr as *mut libc::c_void, old_len as usize, new_len as usize, flags, new_addr.unwrap_or(0) as *mut libc::c_void) };
    if p == libc::MAP_FAILED {
        return Err(SysError::last("mremap").at(addr));
    }
    Ok(p as u64)
}

/// Whether the page containing `addr` is mapped (mincore fails with ENOMEM otherwise).
/// Checked before touching, so a wrong address in a test is an error, not a SIGSEGV.
pub fn is_mapped(addr: u64) -> bool {
    let ps = page_size() as u64;
    let mut v = 0u8;
    // SAFETY: mincore only inspects page tables; v receives one byte.
    unsafe { libc::mincore((addr & !(ps - 1)) as *mut libc::c_void, ps as usize, &mut v) == 0 }
}

fn check_mapped(op: &'static str, addrs: impl Iterator<Item = u64>) -> SysResult<()> {
    let ps = page_size() as u64;
    let mut last = u64::MAX;
    for a in addrs {
        if a % 8 != 0 {
            return Err(SysError::new(op, libc::EINVAL).at(a).because("address is not 8-byte aligned"));
        }
        let page = a & !(ps - 1);
        if page != last && !is_mapped(a) {
            return Err(SysError::new(op, libc::EFAULT).at(a).because("address is not mapped"));
        }
        last = page;
    }
    Ok(())
}

/// Reads a u64 on the calling thread: only for memory that cannot fault into a uffd.
pub fn read_u64(addr: u64) -> SysResult<u64> {
    check_mapped("readU64", std::iter::once(addr))?;
    // SAFETY: mapped (checked) and 8-byte aligned; a volatile read because other threads
    // and the kernel (UFFDIO_COPY) write this memory behind the compiler's back.
    Ok(unsafe { std::ptr::read_volatile(addr as *const u64) })
}

pub fn write_u64(addr: u64, v: u64) -> SysResult<()> {
    check_mapped("writeU64", std::iter::once(addr))?;
    // SAFETY: as read_u64.
    unsafe { std::ptr::write_volatile(addr as *mut u64, v) };
    Ok(())
}

/// Fills [addr, addr+len) with a repeated u64 pattern (len multiple of 8).
pub fn fill(addr: u64, len: u64, pattern: u64) -> SysResult<()> {
    let ps = page_size() as u64;
    if !len.is_multiple_of(8) {
        return Err(SysError::new("fill", libc::EINVAL).because("length must be a multiple of 8"));
    }
    check_mapped("fill", (addr..addr + len).step_by(ps as usize).chain(std::iter::once(addr + len.saturating_sub(8))))?;
    for off in (0..len).step_by(8) {
        // SAFETY: mapped (checked per page) and aligned.
        unsafe { std::ptr::write_volatile((addr + off) as *mut u64, pattern) };
    }
    Ok(())
}

pub struct TouchPlan {
    pub addresses: Vec<u64>,
    pub write: bool,
    pub value: u64,
    pub cpu: Option<usize>,
}

pub struct TouchResult {
    /// First 8 bytes read at each address (after the write, when writing).
    pub values: Vec<u64>,
    pub latency_ns: Vec<f64>,
}

impl TouchPlan {
    pub fn validate(&self) -> SysResult<()> {
        check_mapped("touch", self.addresses.iter().copied())
    }

    /// Runs on a native thread: each access may block in a uffd fault until JS serves it.
    pub fn run(&self) -> SysResult<TouchResult> {
        if let Some(cpu) = self.cpu {
            pin_current_thread(&[cpu])?;
        }
        let mut values = Vec::with_capacity(self.addresses.len());
        let mut latency_ns = Vec::with_capacity(self.addresses.len());
        for &a in &self.addresses {
            let t0 = now_ns();
            // SAFETY: validated mapped and aligned before the thread started; tests own the
            // mapping and unmap it only after the touch promise settled.
            let v = unsafe {
                if self.write {
                    std::ptr::write_volatile(a as *mut u64, self.value);
                }
                std::ptr::read_volatile(a as *const u64)
            };
            latency_ns.push((now_ns() - t0) as f64);
            values.push(v);
        }
        Ok(TouchResult { values, latency_ns })
    }
}

pub struct BenchPlan {
    pub pages: usize,
    pub handler_cpu: Option<usize>,
    pub toucher_cpu: Option<usize>,
}

pub struct BenchResult {
    pub latency_ns: Vec<f64>,
    /// Pages whose content did not match what the handler installed (must be 0).
    pub mismatches: u64,
    pub total_ns: u64,
}

/// The floor for fault latency: a handler in Rust alone (poll, read, UFFDIO_COPY) and a
/// toucher thread, in this process, with no JS anywhere.
pub fn bench_rust_handler(plan: BenchPlan) -> SysResult<BenchResult> {
    let ps = page_size() as u64;
    let len = plan.pages as u64 * ps;
    let region = map_anonymous(len)?;
    let fd = match uffd::open(true) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = unmap(region, len);
            return Err(e);
        }
    };
    let result = (|| {
        uffd::api(fd, 0)?;
        uffd::register(fd, region, len, UFFDIO_REGISTER_MODE_MISSING)?;
        let stop = Arc::new(AtomicBool::new(false));
        let wake = crate::sys::EventFd::new()?;
        let wake_fd = wake.raw();
        let handler_stop = stop.clone();
        let handler_cpu = plan.handler_cpu;
        let handler = std::thread::spawn(move || -> SysResult<()> {
            if let Some(cpu) = handler_cpu {
                pin_current_thread(&[cpu])?;
            }
            let mut page = vec![0u8; ps as usize];
            let mut buf = [[0u8; UFFD_MSG_SIZE]; 16];
            let mut pfds = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 }];
            while !handler_stop.load(Ordering::SeqCst) {
                // SAFETY: pfds is a valid array of 2 pollfds.
                if unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) } < 0 {
                    continue;
                }
                // SAFETY: buf has room for 16 messages.
                let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), std::mem::size_of_val(&buf)) };
                if r <= 0 {
                    continue;
                }
                for m in &buf[..r as usize / UFFD_MSG_SIZE] {
                    if let UffdMsg::PageFault { address, .. } = UffdMsg::parse(m) {
                        let at = address & !(ps - 1);
                        page[..8].copy_from_slice(&at.to_ne_bytes());
                        if let Err(e) = uffd::copy(fd, at, &page, uffd::FillMode::default()) {
                            // Unregistering wakes the toucher (it then reads zeros and
                            // counts mismatches) instead of leaving it blocked forever.
                            let _ = uffd::unregister(fd, region, len);
                            return Err(e);
                        }
                    }
                }
            }
            Ok(())
        });
        let toucher = TouchPlan { addresses: (0..plan.pages as u64).map(|i| region + i * ps).collect(), write: false, value: 0, cpu: plan.toucher_cpu };
        let t0 = now_ns();
        let touched = toucher.run();
        let total_ns = now_ns() - t0;
        stop.store(true, Ordering::SeqCst);
        wake.signal();
        let handled = handler.join().map_err(|_| SysError::new("bench handler", libc::EIO).because("handler thread panicked"))?;
        handled?;
        let touched = touched?;
        let mismatches = touched.values.iter().zip(&toucher.addresses).filter(|(v, a)| *v != *a).count() as u64;
        Ok(BenchResult { latency_ns: touched.latency_ns, mismatches, total_ns })
    })();
    let _ = crate::sys::close_fd(fd);
    let _ = unmap(region, len);
    result
}

/// A memory-map change run on a new native thread (`onThread` in JS): with uffd events
/// enabled, the thread doing madvise/munmap/mremap on a registered range blocks until the
/// event is read, and in event-loop mode the reader is the JS thread, so it must not be
/// the one doing it.
pub enum MmOp {
    Madvise { addr: u64, len: u64, advice: i32 },
    Unmap { addr: u64, len: u64 },
    Mremap { addr: u64, old_len: u64, new_len: u64, new_addr: Option<u64> },
}

impl MmOp {
    /// Returns the new address for mremap, 0 otherwise.
    pub fn run(&self) -> SysResult<u64> {
        match *self {
            MmOp::Madvise { addr, len, advice } => madvise(addr, len, advice).map(|_| 0),
            MmOp::Unmap { addr, len } => unmap(addr, len).map(|_| 0),
            MmOp::Mremap { addr, old_len, new_len, new_addr } => mremap(addr, old_len, new_len, new_addr),
        }
    }
}

pub struct ForkTouchPlan {
    pub addresses: Vec<u64>,
    /// The child is killed (SIGKILL) if it has not finished by then.
    pub timeout_ms: u64,
}

pub struct ForkTouchResult {
    pub pid: i32,
    /// What the child read at each address (fewer if it was killed).
    pub values: Vec<u64>,
    /// exit status, or None if killed by a signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

/// Forks this process from the calling (native) thread; the child reads the first 8 bytes
/// at each address (a registered-missing page faults into the *child's* uffd, which the
/// parent receives in a UFFD_EVENT_FORK), writes them to a pipe and `_exit`s. The parent
/// side reads the pipe and reaps exactly that pid (waitpid(pid), never -1, so Node's
/// child_process, which waits for its own pids only, is unaffected and cannot steal ours).
///
/// With eventFork enabled on a uffd of this process, fork() itself blocks until the fork
/// event is read: never call this on the JS thread (it isn't: it runs from spawn_promise).
pub fn fork_touch(plan: &ForkTouchPlan) -> SysResult<ForkTouchResult> {
    check_mapped("forkTouch", plan.addresses.iter().copied())?;
    let mut p = [0 as libc::c_int; 2];
    // SAFETY: p has room for two fds.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long, "pipe2")?;
    let (rd, wr) = (p[0], p[1]);
    // Everything the child needs is allocated before fork: after it, only
    // async-signal-safe calls (another thread may have held the allocator's lock).
    let mut out = vec![0u8; plan.addresses.len() * 8];
    let addrs = plan.addresses.as_ptr();
    let n = plan.addresses.len();
    // SAFETY: fork; the child only does volatile reads of mapped memory, write(2) and
    // _exit(2).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = SysError::last("fork");
        // SAFETY: our fds.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY (child): see above; addresses were checked mapped before the fork.
        unsafe {
            libc::close(rd);
            let buf = out.as_mut_ptr();
            for i in 0..n {
                let v = std::ptr::read_volatile(*addrs.add(i) as *const u64);
                std::ptr::copy_nonoverlapping(v.to_ne_bytes().as_ptr(), buf.add(i * 8), 8);
                // One write per value, so a parent that times out knows how far we got.
                let mut off = 0usize;
                while off < 8 {
                    let w = libc::write(wr, buf.add(i * 8 + off).cast(), 8 - off);
                    if w <= 0 {
                        libc::_exit(3);
                    }
                    off += w as usize;
                }
            }
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end.
    unsafe { libc::close(wr) };
    let deadline = now_ns() + plan.timeout_ms * 1_000_000;
    let mut got = 0usize;
    let mut timed_out = false;
    loop {
        let now = now_ns();
        if now >= deadline {
            timed_out = true;
            break;
        }
        let mut pfd = libc::pollfd { fd: rd, events: libc::POLLIN, revents: 0 };
        let ms = ((deadline - now) / 1_000_000).clamp(1, i32::MAX as u64) as i32;
        // SAFETY: one pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            if crate::sys::errno::last_errno() == libc::EINTR {
                continue;
            }
            break;
        }
        if r == 0 {
            continue;
        }
        if got == out.len() {
            break;
        }
        // SAFETY: out[got..] is writable.
        let k = unsafe { libc::read(rd, out.as_mut_ptr().add(got).cast(), out.len() - got) };
        if k < 0 && crate::sys::errno::last_errno() == libc::EINTR {
            continue;
        }
        if k <= 0 {
            break; // EOF: the child is done (or died)
        }
        got += k as usize;
    }
    if timed_out {
        // SAFETY: our own child, not yet reaped (so the pid cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // SAFETY: our fd.
    unsafe { libc::close(rd) };
    let mut status = 0;
    loop {
        // SAFETY: waits for exactly our child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && crate::sys::errno::last_errno() != libc::EINTR {
            return Err(SysError::last("waitpid"));
        }
    }
    let values = out[..got / 8 * 8].chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
    let (exit_code, signal) =
        if libc::WIFEXITED(status) { (Some(libc::WEXITSTATUS(status)), None) } else { (None, Some(libc::WTERMSIG(status))) };
    Ok(ForkTouchResult { pid, values, exit_code, signal, timed_out })
}
