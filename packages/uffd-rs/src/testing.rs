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

/// A target process for fork tests, made like a lazily-migrated one: its memory is
/// registered with a uffd that *this* process reads. The target T (a child of this process)
/// creates a uffd with eventFork, maps `pages` pages, registers them (missing), sends the
/// uffd and the address over a socket (SCM_RIGHTS), then waits for one byte on the socket
/// ("go"). On it, T forks G: the fork is reported on T's uffd (the kernel holds T's fork
/// until that event is read) with G's uffd. G reads the first u64 of every page, writes
/// them to a pipe and exits; T reaps G, writes G's wait status, then reads page 1 itself
/// and writes that. Registered memory lives in T, not here, so Node's own forks
/// (child_process) duplicate nothing registered and cause no fork events.
pub struct ForkTarget {
    pub pid: i32,
    /// T's uffd, received here (owned by the caller from now on).
    pub uffd: i32,
    pub start: u64,
    /// Write one byte here to let T fork (owned by the caller).
    pub sock: i32,
    /// Where T and G report (read by `ForkTargetWait::run`).
    out: i32,
    pages: usize,
}

pub struct ForkTargetResult {
    /// What G read at the start of each page (fewer if it was killed).
    pub child_values: Vec<u64>,
    /// G's raw wait status, as seen by T.
    pub child_status: Option<u64>,
    /// What T read at page 1 after G had exited.
    pub target_value: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

/// T's and G's code: after fork, so raw syscalls only (no allocation, no panics: the
/// parent may have had other threads holding locks). Exit codes 10.. name the failed step.
unsafe fn fork_target_main(sock: i32, out: i32, pages: usize, ps: usize) -> ! {
    // SAFETY (whole body): syscalls on our own fds and memory, in a single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // Node's (libuv's) SIGCHLD handler was inherited: it would tell the parent's loop,
        // through the shared signal pipe, that one of *its* children changed state.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let uffd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) as i32;
        if uffd < 0 {
            libc::_exit(10);
        }
        let mut api = UffdioApi { api: UFFD_API, features: feature_bit("eventFork").unwrap_or(0), ioctls: 0 };
        if libc::ioctl(uffd, UFFDIO_API as libc::c_ulong, &mut api) != 0 {
            libc::_exit(11);
        }
        let len = pages * ps;
        let mem = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if mem == libc::MAP_FAILED {
            libc::_exit(12);
        }
        let mut reg = UffdioRegister { range: UffdioRange { start: mem as u64, len: len as u64 }, mode: UFFDIO_REGISTER_MODE_MISSING, ioctls: 0 };
        if libc::ioctl(uffd, UFFDIO_REGISTER as libc::c_ulong, &mut reg) != 0 {
            libc::_exit(13);
        }
        if send_fd(sock, uffd, mem as u64) != 0 {
            libc::_exit(14);
        }
        libc::close(uffd);
        let mut go = 0u8;
        if libc::read(sock, (&mut go as *mut u8).cast(), 1) != 1 {
            libc::_exit(15);
        }
        let g = libc::fork();
        if g < 0 {
            libc::_exit(16);
        }
        if g == 0 {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            for i in 0..pages {
                let v = std::ptr::read_volatile((mem as usize + i * ps) as *const u64);
                if write_u64_fd(out, v) != 0 {
                    libc::_exit(3);
                }
            }
            libc::_exit(0);
        }
        let mut st = 0;
        while libc::waitpid(g, &mut st, 0) < 0 {}
        if write_u64_fd(out, st as u32 as u64) != 0 {
            libc::_exit(17);
        }
        let v = std::ptr::read_volatile((mem as usize + ps) as *const u64);
        if write_u64_fd(out, v) != 0 {
            libc::_exit(18);
        }
        libc::_exit(0);
    }
}

unsafe fn write_u64_fd(fd: i32, v: u64) -> i32 {
    let b = v.to_ne_bytes();
    let mut off = 0usize;
    while off < 8 {
        // SAFETY: b is 8 readable bytes.
        let w = unsafe { libc::write(fd, b.as_ptr().add(off).cast(), 8 - off) };
        if w <= 0 {
            return -1;
        }
        off += w as usize;
    }
    0
}

/// sendmsg of `payload` with `fd` attached (SCM_RIGHTS). No allocation (runs after fork).
unsafe fn send_fd(sock: i32, fd: i32, payload: u64) -> i32 {
    // SAFETY: msghdr/cmsg built in local buffers sized with CMSG_SPACE.
    unsafe {
        let mut data = payload.to_ne_bytes();
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 8 };
        let mut cbuf = [0u64; 8]; // 64 bytes, aligned, >= CMSG_SPACE(4)
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        if libc::sendmsg(sock, &msg, 0) == 8 { 0 } else { -1 }
    }
}

/// The receiving side of `send_fd`, waiting at most `timeout_ms`.
fn recv_fd(sock: i32, timeout_ms: i32) -> SysResult<(i32, u64)> {
    let mut pfd = libc::pollfd { fd: sock, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if r <= 0 {
        return Err(SysError::new("recvmsg", libc::ETIMEDOUT).because("the fork target did not send its uffd"));
    }
    // SAFETY: as send_fd.
    unsafe {
        let mut data = [0u8; 8];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 8 };
        let mut cbuf = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n != 8 {
            return Err(if n < 0 { SysError::last("recvmsg") } else { SysError::new("recvmsg", libc::EPROTO).because("the fork target exited before sending its uffd") });
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS {
            return Err(SysError::new("recvmsg", libc::EPROTO).because("no fd received"));
        }
        Ok((std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()), u64::from_ne_bytes(data)))
    }
}

fn close_quietly(fd: i32) {
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

fn reap(pid: i32) -> SysResult<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waits for exactly our child (never -1: Node's child_process reaps its own).
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        if r < 0 && crate::sys::errno::last_errno() != libc::EINTR {
            return Err(SysError::last("waitpid"));
        }
    }
}

/// Forks T (see `ForkTarget`) and waits (at most a few seconds) for its uffd. Runs on the
/// JS thread: nothing registered with eventFork lives in this process, so the fork does not
/// wait for anyone.
pub fn fork_target(pages: usize) -> SysResult<ForkTarget> {
    let ps = page_size();
    let mut sp = [0i32; 2];
    let mut pp = [0i32; 2];
    // SAFETY: out-arrays of two fds.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, sp.as_mut_ptr()) } as libc::c_long, "socketpair")?;
    // SAFETY: as above.
    if let Err(e) = cvt(unsafe { libc::pipe2(pp.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long, "pipe2") {
        close_quietly(sp[0]);
        close_quietly(sp[1]);
        return Err(e);
    }
    // SAFETY: the child runs fork_target_main only (raw syscalls, then _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: child side, our fds.
        unsafe {
            libc::close(sp[0]);
            libc::close(pp[0]);
            fork_target_main(sp[1], pp[1], pages, ps);
        }
    }
    close_quietly(sp[1]);
    close_quietly(pp[1]);
    if pid < 0 {
        let e = SysError::last("fork");
        close_quietly(sp[0]);
        close_quietly(pp[0]);
        return Err(e);
    }
    match recv_fd(sp[0], 5000) {
        Ok((uffd, start)) => Ok(ForkTarget { pid, uffd, start, sock: sp[0], out: pp[0], pages }),
        Err(e) => {
            // SAFETY: our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = reap(pid);
            close_quietly(sp[0]);
            close_quietly(pp[0]);
            Err(e)
        }
    }
}

impl ForkTarget {
    /// The part that waits (on a native thread): reads what T and G report until T is
    /// done, killing T (and so G, by PDEATHSIG) after `timeout_ms`, then reaps T.
    pub fn waiter(&self, timeout_ms: u64) -> ForkTargetWait {
        ForkTargetWait { pid: self.pid, out: self.out, pages: self.pages, timeout_ms }
    }
}

pub struct ForkTargetWait {
    pid: i32,
    out: i32,
    pages: usize,
    timeout_ms: u64,
}

impl ForkTargetWait {
    pub fn run(self) -> SysResult<ForkTargetResult> {
        let mut buf = vec![0u8; (self.pages + 2) * 8];
        let deadline = now_ns() + self.timeout_ms * 1_000_000;
        let mut got = 0usize;
        let mut timed_out = false;
        while got < buf.len() {
            let now = now_ns();
            if now >= deadline {
                timed_out = true;
                break;
            }
            let mut pfd = libc::pollfd { fd: self.out, events: libc::POLLIN, revents: 0 };
            let ms = ((deadline - now) / 1_000_000).clamp(1, i32::MAX as u64) as i32;
            // SAFETY: one pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 && crate::sys::errno::last_errno() == libc::EINTR || r == 0 {
                continue;
            }
            if r < 0 {
                break;
            }
            // SAFETY: buf[got..] is writable.
            let k = unsafe { libc::read(self.out, buf.as_mut_ptr().add(got).cast(), buf.len() - got) };
            if k < 0 && crate::sys::errno::last_errno() == libc::EINTR {
                continue;
            }
            if k <= 0 {
                break; // EOF: T (and G) are gone
            }
            got += k as usize;
        }
        if timed_out {
            // SAFETY: our own unreaped child (its pid cannot have been reused).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        close_quietly(self.out);
        let status = reap(self.pid)?;
        let words: Vec<u64> = buf[..got / 8 * 8].chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
        let n = self.pages.min(words.len());
        let (exit_code, signal) =
            if libc::WIFEXITED(status) { (Some(libc::WEXITSTATUS(status)), None) } else { (None, Some(libc::WTERMSIG(status))) };
        Ok(ForkTargetResult {
            child_values: words[..n].to_vec(),
            child_status: words.get(self.pages).copied(),
            target_value: words.get(self.pages + 1).copied(),
            exit_code,
            signal,
            timed_out,
        })
    }
}
