//! The fault loop, in one of two modes:
//!
//! - `Mode::Thread`: one native thread epolls any number of uffds plus an eventfd (stop),
//!   reads uffd_msgs in bulk and hands them to JS in batches through a thread-safe function.
//! - `Mode::EventLoop` (see `ev`): Node's own libuv loop polls the uffds (one `uv_poll_t`
//!   each); when one is readable the JS thread reads it and calls onBatch right away. No
//!   thread hop, and reading an event (which lets the target's madvise/munmap/mremap go
//!   on) and installing pages are serialized on one thread.
//!
//! Thread mode delivery:
//! Delivery keeps at most one thread-safe call in flight: messages accumulate in
//! `Pending` and the JS-side handler takes everything that arrived by the time it runs.
//! That bounds Node's queue to one entry, coalesces faults on the same page, and costs one
//! JS wake-up per batch rather than per fault. The JS thread never blocks on the loop
//! (it only takes a mutex the loop holds for a memcpy-sized moment).

mod ev;

use crate::napi::tsfn::{Handler, Tsfn};
use crate::napi::{Env, JsResult, Tagged, Value};
use crate::sys::uffd::{UFFD_MSG_SIZE, UffdMsg};
use crate::sys::{EventFd, SysError, SysResult, cvt, errno, page_size};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Faults waiting for JS beyond which the loop stops reading (each blocks a thread in the
/// kernel, so this is only reached with pathological thread counts).
const MAX_PENDING_FAULTS: usize = 1 << 16;
const READ_MSGS: usize = 128;
const WAKE_TOKEN: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub fd: RawFd,
    pub address: u64,
    pub flags: u64,
    pub tid: u32,
}

#[derive(Debug, Clone)]
pub enum LoopEvent {
    Fork { fd: RawFd, child_fd: RawFd },
    Remap { fd: RawFd, from: u64, to: u64, len: u64 },
    Remove { fd: RawFd, start: u64, end: u64 },
    Unmap { fd: RawFd, start: u64, end: u64 },
    /// The loop dropped this fd after an error (it is no longer watched).
    Error { fd: RawFd, error: SysError },
}

#[derive(Default)]
pub struct Pending {
    pub faults: Vec<Fault>,
    index: HashMap<(RawFd, u64), usize>,
    pub events: Vec<LoopEvent>,
    scheduled: bool,
}

impl Pending {
    fn push_fault(&mut self, f: Fault) {
        match self.index.get(&(f.fd, f.address)) {
            // Same page already waiting: one fault is enough; keep the strongest flags.
            Some(&i) => self.faults[i].flags |= f.flags,
            None => {
                self.index.insert((f.fd, f.address), self.faults.len());
                self.faults.push(f);
            }
        }
    }
    fn is_empty(&self) -> bool {
        self.faults.is_empty() && self.events.is_empty()
    }
}

struct StopState {
    finished: bool,
    waiters: Vec<Box<dyn FnOnce(Env) + Send>>,
}

pub struct Shared {
    epoll: OwnedFd,
    wake: EventFd,
    stop: AtomicBool,
    pending: Mutex<Pending>,
    drained: Condvar,
    /// Watched fds. Held while reading one, so `remove` returns only once the loop is
    /// done with that fd (the caller may close it right after).
    fds: Mutex<HashSet<RawFd>>,
    tsfn: Mutex<Option<Tsfn<()>>>,
    stop_state: Mutex<StopState>,
}

/// The JS-visible handle (an external). Dropping it (GC) stops the loop.
#[repr(C)]
pub struct FaultLoop {
    tag: u64,
    kind: Kind,
}

enum Kind {
    Thread(Arc<Shared>),
    EventLoop(Arc<ev::EvLoop>),
}

impl Tagged for FaultLoop {
    const TAG: u64 = 0x6c7a_6d69_675f_6c70; // "lzmig_lp"
}

impl Drop for FaultLoop {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Thread(shared) => {
                shared.stop.store(true, Ordering::SeqCst);
                shared.wake.signal();
            }
            // The external's finalizer runs on the JS thread, as shutdown requires.
            Kind::EventLoop(l) => l.shutdown(true),
        }
    }
}

/// The arguments of `onBatch(faults, events)`. Faults are a flat Float64Array
/// [fd, address, flags, tid]*n: one allocation per batch instead of one object per fault.
fn batch_to_js(env: Env, batch: &Pending) -> JsResult<[Value; 2]> {
    let mut flat = Vec::with_capacity(batch.faults.len() * 4);
    for f in &batch.faults {
        flat.extend_from_slice(&[f.fd as f64, f.address as f64, f.flags as f64, f.tid as f64]);
    }
    let faults = env.float64_array(&flat)?;
    let events = env.array_of(batch.events.iter().map(|e| event_to_js(env, e)))?;
    Ok([faults, events])
}

/// Thread mode: runs on the JS thread (thread-safe function) and takes everything pending.
fn deliver(env: Env, cb: Option<Value>, shared: &Shared) -> JsResult<()> {
    let batch = {
        let mut p = shared.pending.lock().unwrap();
        p.scheduled = false;
        p.index.clear();
        Pending { faults: std::mem::take(&mut p.faults), events: std::mem::take(&mut p.events), ..Default::default() }
    };
    shared.drained.notify_all();
    let Some(cb) = cb else { return Ok(()) };
    if batch.is_empty() || shared.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    env.call(cb, &batch_to_js(env, &batch)?)?;
    Ok(())
}

fn event_to_js(env: Env, e: &LoopEvent) -> JsResult<Value> {
    let n = |x: u64| env.num(x);
    match e {
        LoopEvent::Fork { fd, child_fd } => env.object_with(&[(c"kind", env.str("fork")?), (c"fd", n(*fd as u64)?), (c"childFd", n(*child_fd as u64)?)]),
        LoopEvent::Remap { fd, from, to, len } => {
            env.object_with(&[(c"kind", env.str("remap")?), (c"fd", n(*fd as u64)?), (c"from", n(*from)?), (c"to", n(*to)?), (c"len", n(*len)?)])
        }
        LoopEvent::Remove { fd, start, end } => env.object_with(&[(c"kind", env.str("remove")?), (c"fd", n(*fd as u64)?), (c"start", n(*start)?), (c"end", n(*end)?)]),
        LoopEvent::Unmap { fd, start, end } => env.object_with(&[(c"kind", env.str("unmap")?), (c"fd", n(*fd as u64)?), (c"start", n(*start)?), (c"end", n(*end)?)]),
        LoopEvent::Error { fd, error } => env.object_with(&[
            (c"kind", env.str("error")?),
            (c"fd", n(*fd as u64)?),
            (c"code", env.str(error.code())?),
            (c"message", env.str(&error.to_string())?),
        ]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Thread,
    EventLoop,
}

pub struct LoopOptions {
    /// Thread mode only.
    pub cpu: Option<usize>,
    pub mode: Mode,
}

impl FaultLoop {
    /// Creates the loop (and in thread mode starts its thread). `on_batch` is called on
    /// the JS thread.
    pub fn start(env: Env, on_batch: Value, opts: LoopOptions) -> JsResult<Arc<FaultLoop>> {
        let kind = match opts.mode {
            Mode::Thread => Kind::Thread(Self::start_thread(env, on_batch, opts.cpu)?),
            Mode::EventLoop => Kind::EventLoop(ev::EvLoop::start(env, on_batch)?),
        };
        Ok(Arc::new(FaultLoop { tag: Self::TAG, kind }))
    }

    fn start_thread(env: Env, on_batch: Value, cpu: Option<usize>) -> JsResult<Arc<Shared>> {
        // SAFETY: epoll_create1 returns a new fd that we own.
        let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as libc::c_long, "epoll_create1")?;
        let epoll = unsafe { OwnedFd::from_raw_fd(ep as RawFd) };
        let wake = EventFd::new()?;
        epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, wake.raw(), WAKE_TOKEN)?;
        let shared = Arc::new(Shared {
            epoll,
            wake,
            stop: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            drained: Condvar::new(),
            fds: Mutex::new(HashSet::new()),
            tsfn: Mutex::new(None),
            stop_state: Mutex::new(StopState { finished: false, waiters: Vec::new() }),
        });
        let for_js = shared.clone();
        let handler: Handler<()> = Box::new(move |env, cb, ()| deliver(env, cb, &for_js));
        let for_fin = shared.clone();
        let on_finalize = Box::new(move |env: Env| {
            let waiters = {
                let mut s = for_fin.stop_state.lock().unwrap();
                s.finished = true;
                std::mem::take(&mut s.waiters)
            };
            for w in waiters {
                w(env);
            }
        });
        let tsfn = Tsfn::new(env, Some(on_batch), "lazymig-fault-loop", handler, Some(on_finalize))?;
        *shared.tsfn.lock().unwrap() = Some(tsfn);
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new().name("lazymig-faults".into()).spawn(move || {
            let s = thread_shared;
            if let Some(cpu) = cpu {
                let _ = crate::sys::pin_current_thread(&[cpu]);
            }
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&s)));
            // Release: Node may now exit, and the finalizer settles stop() promises.
            let t = s.tsfn.lock().unwrap().take();
            drop(t);
        });
        if let Err(e) = spawned {
            shared.tsfn.lock().unwrap().take();
            return Err(crate::napi::JsError::Plain(format!("cannot start the fault loop thread: {e}")));
        }
        Ok(shared)
    }

    /// Watches `fd`. It is switched to O_NONBLOCK (on its open file description, i.e. for
    /// every holder): the loop must never block in read. JS thread only (`env`).
    pub fn add(&self, _env: Env, fd: RawFd) -> SysResult<()> {
        set_nonblocking(fd)?;
        match &self.kind {
            Kind::Thread(shared) => {
                let mut fds = shared.fds.lock().unwrap();
                epoll_ctl(shared.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, fd as u64)?;
                fds.insert(fd);
                Ok(())
            }
            Kind::EventLoop(l) => l.add(fd),
        }
    }

    /// Stops watching `fd`. Returns once the loop no longer touches it, so it can be closed.
    pub fn remove(&self, _env: Env, fd: RawFd) -> SysResult<()> {
        match &self.kind {
            Kind::Thread(shared) => {
                let mut fds = shared.fds.lock().unwrap();
                let known = fds.remove(&fd);
                match epoll_ctl(shared.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0) {
                    Ok(()) => Ok(()),
                    // Already closed (epoll forgets closed files by itself): done either way.
                    Err(e) if known && (e.errno == libc::EBADF || e.errno == libc::ENOENT) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Kind::EventLoop(l) => l.remove(fd),
        }
    }

    /// Stops the loop; `on_stopped` runs on the JS thread once the loop thread has exited
    /// and released its thread-safe function (immediately if that already happened, and
    /// always immediately in event-loop mode: closing the poll handles is synchronous).
    pub fn stop(&self, env: Env, on_stopped: Box<dyn FnOnce(Env) + Send>) {
        match &self.kind {
            Kind::Thread(shared) => {
                shared.stop.store(true, Ordering::SeqCst);
                shared.wake.signal();
                shared.drained.notify_all();
                let mut s = shared.stop_state.lock().unwrap();
                if s.finished {
                    drop(s);
                    on_stopped(env);
                } else {
                    s.waiters.push(on_stopped);
                }
            }
            Kind::EventLoop(l) => {
                l.shutdown(true);
                on_stopped(env);
            }
        }
    }

    /// The gate that orders background installs into `fd` with this loop's reads:
    /// event-loop mode only (in thread mode the loop thread reads without JS knowing).
    pub fn gate(&self, fd: RawFd) -> Option<Arc<crate::background::Gate>> {
        match &self.kind {
            Kind::EventLoop(l) => l.gate(fd),
            Kind::Thread(_) => None,
        }
    }

    /// Faults the gates' connections took without JS (event-loop mode; None in thread mode,
    /// whose loop has no gates).
    pub fn near(&self) -> Option<Arc<crate::background::NearFaults>> {
        match &self.kind {
            Kind::EventLoop(l) => Some(l.near()),
            Kind::Thread(_) => None,
        }
    }

    /// Whether a running loop keeps Node's event loop alive (default: yes).
    pub fn set_ref(&self, env: Env, keep_alive: bool) -> JsResult<()> {
        match &self.kind {
            Kind::Thread(shared) => match &*shared.tsfn.lock().unwrap() {
                Some(t) => t.set_ref(env, keep_alive),
                None => Ok(()),
            },
            Kind::EventLoop(l) => {
                l.set_ref(keep_alive);
                Ok(())
            }
        }
    }
}

fn set_nonblocking(fd: RawFd) -> SysResult<()> {
    // SAFETY: fcntl on an fd number; a bad fd fails with EBADF.
    unsafe {
        let fl = cvt(libc::fcntl(fd, libc::F_GETFL) as libc::c_long, "fcntl")? as i32;
        if fl & libc::O_NONBLOCK == 0 {
            cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) as libc::c_long, "fcntl")?;
        }
    }
    Ok(())
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, token: u64) -> SysResult<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
    // SAFETY: ev is a valid epoll_event for the call.
    cvt(unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } as libc::c_long, "epoll_ctl").map(|_| ()).map_err(|e| e.because(format!("fd {fd}")))
}

fn run(s: &Shared) {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = vec![[0u8; UFFD_MSG_SIZE]; READ_MSGS];
    let mut faults: Vec<Fault> = Vec::with_capacity(READ_MSGS);
    let mut events: Vec<LoopEvent> = Vec::new();
    let page_mask = !(page_size() as u64 - 1);
    while !s.stop.load(Ordering::SeqCst) {
        {
            // Backpressure: JS is far behind; wait for it rather than buffer without bound.
            let mut p = s.pending.lock().unwrap();
            while p.faults.len() >= MAX_PENDING_FAULTS && !s.stop.load(Ordering::SeqCst) {
                p = s.drained.wait_timeout(p, Duration::from_millis(100)).unwrap().0;
            }
        }
        // SAFETY: evs has room for its length of events.
        let n = unsafe { libc::epoll_wait(s.epoll.as_raw_fd(), evs.as_mut_ptr(), evs.len() as i32, -1) };
        if n < 0 {
            if errno::last_errno() == libc::EINTR {
                continue;
            }
            break;
        }
        for ev in &evs[..n as usize] {
            let (token, revents) = (ev.u64, ev.events);
            if token == WAKE_TOKEN {
                s.wake.drain();
                continue;
            }
            let fd = token as RawFd;
            let fds = s.fds.lock().unwrap();
            if !fds.contains(&fd) {
                continue;
            }
            let (got_any, mut failed) = match read_pending(fd, &mut buf, page_mask, &mut faults, &mut events) {
                Ok(got) => (got, None),
                Err(e) => (false, Some(e)),
            };
            if failed.is_none() && !got_any && revents & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                failed = Some(error_condition("epoll_wait", fd));
            }
            drop(fds);
            if let Some(error) = failed {
                // Stop watching it, or level-triggered epoll would spin on it.
                let mut fds = s.fds.lock().unwrap();
                fds.remove(&fd);
                let _ = epoll_ctl(s.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0);
                events.push(LoopEvent::Error { fd, error });
            }
        }
        if faults.is_empty() && events.is_empty() {
            continue;
        }
        let schedule = {
            let mut p = s.pending.lock().unwrap();
            for f in faults.drain(..) {
                p.push_fault(f);
            }
            p.events.append(&mut events);
            !std::mem::replace(&mut p.scheduled, true)
        };
        if schedule {
            let ok = s.tsfn.lock().unwrap().as_ref().map(|t| t.call(())).unwrap_or(false);
            if !ok {
                // Node is shutting down the function: nobody to deliver to.
                break;
            }
        }
    }
}

/// Reads the uffd_msgs pending on `fd` (non-blocking, so until EAGAIN) into `faults` and
/// `events`. At most a few buffers per call keep one busy uffd from starving the others:
/// both epoll and libuv are level-triggered and come back for the rest. Returns whether
/// anything was read; an error other than EAGAIN/EINTR means the fd must be dropped.
fn read_pending(fd: RawFd, buf: &mut [[u8; UFFD_MSG_SIZE]], page_mask: u64, faults: &mut Vec<Fault>, events: &mut Vec<LoopEvent>) -> Result<bool, SysError> {
    let mut got_any = false;
    for _ in 0..4 {
        // SAFETY: buf is buf.len() * UFFD_MSG_SIZE writable bytes.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len() * UFFD_MSG_SIZE) };
        if r < 0 {
            let e = errno::last_errno();
            if e != libc::EAGAIN && e != libc::EINTR {
                return Err(SysError::new("read", e).because(format!("uffd {fd}")));
            }
            break;
        }
        let count = r as usize / UFFD_MSG_SIZE;
        got_any |= count > 0;
        for m in &buf[..count] {
            match UffdMsg::parse(m) {
                UffdMsg::PageFault { flags, address, tid } => faults.push(Fault { fd, address: address & page_mask, flags, tid }),
                UffdMsg::Fork { child_fd } => events.push(LoopEvent::Fork { fd, child_fd: child_fd as RawFd }),
                UffdMsg::Remap { from, to, len } => events.push(LoopEvent::Remap { fd, from, to, len }),
                UffdMsg::Remove { start, end } => events.push(LoopEvent::Remove { fd, start, end }),
                UffdMsg::Unmap { start, end } => events.push(LoopEvent::Unmap { fd, start, end }),
                UffdMsg::Unknown { event } => events.push(LoopEvent::Error {
                    fd,
                    error: SysError::new("read", libc::EPROTO).because(format!("unknown uffd event {event:#x}")),
                }),
            }
        }
        if count < buf.len() {
            break;
        }
    }
    Ok(got_any)
}

/// A uffd polled as in error (EPOLLERR) with nothing to read.
fn error_condition(op: &'static str, fd: RawFd) -> SysError {
    SysError::new(op, libc::EIO).because(format!("uffd {fd} reported an error condition (not initialized with handshake()?)"))
}
