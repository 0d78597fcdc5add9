//! Background installs on native threads, ordered with the reads of the uffd's events.
//!
//! Why: UFFDIO_COPY of a page the target has never had is the slowest step on the
//! destination (the kernel gets a fresh page, often one the hypervisor must back first).
//! Done on the JS thread, it keeps that thread from receiving the next data and from
//! reading faults. Here, worker threads install whole background replies while the JS
//! thread goes on receiving.
//!
//! The guarantee the event-loop FaultLoop gives must survive: no page is installed into a
//! range after a REMOVE/UNMAP/REMAP event about it was read, unless JS had seen that event
//! when it asked for the install. So every uffd watched by an event-loop FaultLoop has a
//! `Gate`: the JS thread holds it exclusively while it reads the uffd and counts the event
//! batches it read (`epoch`), noting the address ranges each one touched; a worker holds it
//! shared around each UFFDIO_COPY slice and first checks that no event read since the
//! moment JS submitted the job touched the slice's pages. A job that finds one did stops
//! ("stale"): JS decides again about the rest, now knowing the event. A REMOVE or UNMAP
//! elsewhere in the address space (a glibc free far away) leaves it alone; a REMAP or a
//! FORK touches everything (fault_loop/ev.rs says why). Installs made before the read either landed before the target's change (and
//! are dealt with by it) or failed with EAGAIN (the kernel's mmap_changing).
//!
//! A worker holds the gate for one slice (`SLICE_BYTES`) at a time, and does not start
//! another while the reader waits for the gate (`Gate::waiting`), so a fault read waits
//! behind at most one slice. The RwLock alone does not give that: when the last reader
//! leaves, std's lock hands the gate to nobody in particular, and the worker, already
//! running, took it again for its next slice long before the woken reader could; a reader
//! measured 30-80 ms waiting behind a deep queue of jobs into cold memory.

use crate::sys::{SysResult, futex, page_size};
use crate::uffd::{self, FillMode, Status};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::Duration;

/// Bytes installed per UFFDIO_COPY while holding a gate: 64 pages of 4 KiB, ~80-100 µs into
/// warm memory, which is what a fault read may wait behind. 16 pages cost the busy 1 GiB
/// transfer ~10% more destination CPU once the sender stopped pacing (with WAKE_EVERY of
/// page_receiver.rs; docs/PERFORMANCE.md, "Coarser installs, once the data comes in bulk").
const SLICE_BYTES: u64 = 256 << 10;

struct GateState {
    /// Batches with non-cooperative events read from the uffd so far.
    epoch: u64,
    /// A duplicate of the uffd: a job never issues an ioctl on an fd number JS has closed
    /// (and the kernel may have reused) meanwhile. None once the uffd left its FaultLoop:
    /// nothing may be installed through this gate any more, and the duplicate must not
    /// keep the uffd open (a process unmapping registered memory waits until someone
    /// reads the event, or until the uffd is closed for good), however long the gate lives.
    fd: Option<OwnedFd>,
    /// [start, end) ranges the latest event batches touched, with the epoch each batch
    /// ended: oldest first, at most TOUCHED_KEPT.
    touched: VecDeque<(u64, u64, u64)>,
    /// Every batch after this epoch has its ranges in `touched`; a job from before it
    /// cannot be checked and is stale.
    forgotten: u64,
}

/// Event ranges a gate remembers: a job older than all of them is stale.
const TOUCHED_KEPT: usize = 1024;

impl GateState {
    /// True when nothing an event read since `epoch` touched [start, end) (and the uffd is
    /// still in its loop).
    fn untouched_since(&self, epoch: u64, start: u64, end: u64) -> bool {
        if self.fd.is_none() || epoch < self.forgotten {
            return false;
        }
        self.touched.iter().rev().take_while(|t| t.0 > epoch).all(|&(_, s, e)| e <= start || end <= s)
    }
}

/// A connection whose replies install through a gate (page_receiver.rs): the gate's reader
/// asks it about each fault before JS hears of it.
///
/// Why: a workload that reads its memory faster than it arrives catches up with the
/// transfer and faults, again and again, on pages whose replies are being read or installed.
/// JS had nothing to decide for those (wait for the reply, or install the fault window from
/// the reply read whole), yet each one went through onBatch and the engine on the JS thread.
/// And a fault on a page installed without its wake (`Wake::Every`) must wait for that wake
/// here, where the install's progress is known (docs/PERFORMANCE.md, "Fewer wake-ups, and
/// faults taken without JS").
pub trait Arrivals: Send + Sync {
    /// True when this connection takes the missing-page fault at `addr` (page-aligned) on
    /// `gate`'s uffd: its page is in now, or a reply on its way will install it, and whoever
    /// ends that reply (installed or not) wakes the thread. `read_ns`: when it was read.
    fn take_fault(&self, gate: &Arc<Gate>, addr: u64, read_ns: u64) -> bool;
}

/// Faults taken without JS (`Arrivals`), for the JS owner's counts: one set per FaultLoop,
/// shared by its gates.
#[derive(Default)]
pub struct NearFaults {
    /// Faults that waited for a reply on its way; its install woke them.
    pub waited: AtomicU64,
    /// Faults whose window was installed at once from a reply read whole.
    pub installed: AtomicU64,
    /// Pages those windows installed, faulting pages included.
    pub pages: AtomicU64,
    /// Service times (µs) of the `installed` faults, until JS takes them.
    pub service_us: Mutex<Vec<f64>>,
    /// Service times (µs) of the `waited` ones, until JS takes them.
    pub waited_us: Mutex<Vec<f64>>,
}

impl NearFaults {
    /// A fault read at `read_ns` had its page in at `in_ns`; `waited`: for a reply on its way.
    pub fn served(&self, read_ns: u64, in_ns: u64, waited: bool) {
        let us = in_ns.saturating_sub(read_ns) as f64 / 1e3;
        let times = if waited { &self.waited_us } else { &self.service_us };
        times.lock().unwrap_or_else(|p| p.into_inner()).push(us);
    }
}

/// The ordering point between the reader of one uffd and background installs into it.
pub struct Gate {
    state: RwLock<GateState>,
    /// Readers of the uffd waiting for `state`: workers start no slice while this is not 0.
    waiting: AtomicU32,
    /// Workers asleep until `waiting` drops to 0: the reader only wakes them when there are.
    sleepers: AtomicU32,
    /// Connections with replies for this uffd (weak: a connection ends on its own).
    arrivals: Mutex<Vec<Weak<dyn Arrivals>>>,
    near: Arc<NearFaults>,
    /// The page of the latest missing-page fault read, taken by a connection or not (0:
    /// none yet): where JS's background goes on from, as it did when it saw every fault.
    last_fault: AtomicU64,
}

impl Gate {
    pub fn new(uffd: RawFd, near: Arc<NearFaults>) -> SysResult<Arc<Gate>> {
        // SAFETY: F_DUPFD_CLOEXEC returns a new fd (or -1), which we then own.
        let dup = crate::sys::cvt(unsafe { libc::fcntl(uffd, libc::F_DUPFD_CLOEXEC, 0) } as libc::c_long, "fcntl(F_DUPFD_CLOEXEC)")?;
        // SAFETY: dup is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
        let state = GateState { epoch: 0, fd: Some(fd), touched: VecDeque::new(), forgotten: 0 };
        Ok(Arc::new(Gate {
            state: RwLock::new(state),
            waiting: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            arrivals: Mutex::new(Vec::new()),
            near,
            last_fault: AtomicU64::new(0),
        }))
    }

    /// `a` has replies on their way for this uffd: the reader asks it about faults.
    pub fn attach(&self, a: Weak<dyn Arrivals>) {
        let mut v = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        if !v.iter().any(|w| w.ptr_eq(&a)) {
            v.retain(|w| w.strong_count() > 0);
            v.push(a);
        }
    }

    /// For the reader, outside `exclusive` (a connection may install the fault's window
    /// under this gate): true when a connection took the fault (see `Arrivals`).
    pub fn take_fault(self: &Arc<Self>, addr: u64, read_ns: u64) -> bool {
        let v = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().filter_map(Weak::upgrade).any(|a| a.take_fault(self, addr, read_ns))
    }

    /// Wakes threads waiting on [addr, addr + len) (they fault again, and the reader sees
    /// it): for faults a connection took whose page its reply did not install.
    pub fn wake(&self, addr: u64, len: u64) {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = &st.fd {
            // ENOENT (unmapped meanwhile) leaves nobody waiting there.
            let _ = uffd::wake(fd.as_raw_fd(), addr, len);
        }
    }

    pub fn near(&self) -> &NearFaults {
        &self.near
    }

    /// For the reader: a missing-page fault at `addr` was read.
    pub fn note_fault(&self, addr: u64) {
        self.last_fault.store(addr, Ordering::Relaxed);
    }

    /// The page of the latest missing-page fault read (0: none yet).
    pub fn last_fault(&self) -> u64 {
        self.last_fault.load(Ordering::Relaxed)
    }

    /// True when no event read since `epoch` touched [start, end) (and the uffd is still in
    /// its loop): an install asked for at `epoch` would still go in there.
    pub fn untouched_since(&self, epoch: u64, start: u64, end: u64) -> bool {
        self.state.read().unwrap_or_else(|p| p.into_inner()).untouched_since(epoch, start, end)
    }

    /// Runs `read` (the reader's read of the uffd) with no install in progress through
    /// this gate. `read` returns the [start, end) ranges the events it read touched; jobs
    /// submitted before that install into them are stale from now on.
    pub fn exclusive<R>(&self, read: impl FnOnce() -> (R, Vec<(u64, u64)>)) -> R {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        // A worker that goes to sleep after this sees 0 and does not (futex's value check).
        if self.waiting.fetch_sub(1, Ordering::SeqCst) == 1 && self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&self.waiting);
        }
        let (r, touched) = read();
        if !touched.is_empty() {
            st.epoch += 1;
            let epoch = st.epoch;
            for (s, e) in touched {
                if st.touched.len() == TOUCHED_KEPT
                    && let Some((old, _, _)) = st.touched.pop_front()
                {
                    st.forgotten = st.forgotten.max(old);
                }
                st.touched.push_back((epoch, s, e));
            }
        }
        r
    }

    /// The epoch a job submitted now carries (JS thread: JS has seen every event read).
    pub fn epoch(&self) -> u64 {
        self.state.read().unwrap_or_else(|p| p.into_inner()).epoch
    }

    /// One slice of a job, into [dst, dst + len): `f` runs holding the gate shared, unless
    /// the slice is stale (an event read since the job was submitted at `epoch` touched it,
    /// or the gate closed): then None.
    ///
    /// A reader waiting for the gate goes first. It was woken when the last slice ended;
    /// the worker sleeps until it has taken the gate. (It used to yield in a loop instead:
    /// with the restored process busy on a 2-CPU machine, the reader often waited for a CPU,
    /// and the loop cost the receiving threads 11% of their CPU time, measured with perf.)
    fn slice<R>(&self, epoch: u64, dst: u64, len: u64, stopping: &AtomicBool, f: impl FnOnce(RawFd) -> R) -> Option<R> {
        loop {
            let w = self.waiting.load(Ordering::SeqCst);
            if w == 0 || stopping.load(Ordering::Relaxed) {
                break;
            }
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            // Bounded: a stop is noticed within a millisecond.
            futex::wait(&self.waiting, w, Duration::from_millis(1));
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        match &st.fd {
            Some(fd) if st.untouched_since(epoch, dst, dst.saturating_add(len)) => Some(f(fd.as_raw_fd())),
            _ => None,
        }
    }

    /// No install through this gate from now on (the uffd leaves its loop); its duplicate
    /// of the uffd is closed now.
    pub fn close(&self) {
        self.state.write().unwrap_or_else(|p| p.into_inner()).fd = None;
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every page is in (installed here, or already there).
    Done,
    /// An event was read after the job was submitted (or the uffd left the loop, or the
    /// installer stopped): the rest was not installed.
    Stale,
    /// EAGAIN: an event is waiting to be read; the rest was not installed.
    Again,
    /// The mapping or the process is gone.
    Gone,
    /// Another error (errno).
    Failed(i32),
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Done => "done",
            End::Stale => "stale",
            End::Again => "again",
            End::Gone => "gone",
            End::Failed(_) => "failed",
        }
    }
}

/// Source bytes of a job: memory the submitter keeps alive and unmodified until the job's
/// completion is delivered (exports.rs holds a reference to the JS buffer for that long;
/// page_receiver.rs installs from its own buffer before it reads the next frame into it).
#[derive(Clone, Copy)]
pub struct SrcBytes {
    pub ptr: *const u8,
    pub len: u64,
}
// SAFETY: only the kernel reads through ptr (UFFDIO_COPY), while the owner keeps the memory
// alive (see the type's doc); no Rust reference to it is ever formed.
unsafe impl Send for SrcBytes {}

/// Where pages may go: an address in the process behind `gate`'s uffd, as long as no event
/// was read since `epoch` (the gate's epoch when the one who asked last knew what it wants).
#[derive(Clone)]
pub struct Target {
    pub gate: Arc<Gate>,
    pub epoch: u64,
    pub dst: u64,
}

pub struct Job<K: Send> {
    /// The submitter's id for it: what `Installer::present` names.
    pub id: u64,
    pub target: Target,
    pub src: SrcBytes,
    /// Handed back with the completion (the JS side's id and buffer reference).
    pub keep: K,
}

pub struct Completion<K: Send> {
    pub keep: K,
    /// Bytes from the start of the job that are in (installed or already present).
    pub bytes: u64,
    pub end: End,
}

/// Spans of queued or running jobs whose pages are already in: the submitter installed them
/// itself from the same buffer (a fault on a page of a job not reached yet). Without them a
/// worker learns it page by page, and UFFDIO_COPY only finds a page present after it has
/// allocated and filled a new one: each such page cost as much as installing it.
#[derive(Default)]
pub struct Present {
    /// (job id, from, to): byte offsets into the job's data.
    spans: Mutex<Vec<(u64, u64, u64)>>,
    /// spans.len(), read without the lock by every slice.
    count: AtomicUsize,
}

/// Spans kept at most: a span whose job had already ended when it came is never taken out
/// by that job, so the oldest go.
const MAX_PRESENT_SPANS: usize = 1024;

impl Present {
    pub fn add(&self, id: u64, from: u64, to: u64) {
        let mut v = self.spans.lock().unwrap();
        if v.len() >= MAX_PRESENT_SPANS {
            v.remove(0);
        }
        v.push((id, from, to));
        self.count.store(v.len(), Ordering::Release);
    }

    /// For the slice [at, at + n) of job `id`: `Err(to)` when the bytes at `at` are in up to
    /// `to` (skip them), else `Ok(m)`, the bytes from `at` to install before the next span.
    pub fn next(&self, id: u64, at: u64, n: u64) -> Result<u64, u64> {
        if self.count.load(Ordering::Acquire) == 0 {
            return Ok(n);
        }
        let v = self.spans.lock().unwrap();
        let mut m = n;
        for &(_, from, to) in v.iter().filter(|s| s.0 == id) {
            if from <= at && at < to {
                return Err(to);
            }
            if at < from && from < at + m {
                m = from - at;
            }
        }
        Ok(m)
    }

    pub fn forget(&self, id: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut v = self.spans.lock().unwrap();
        v.retain(|s| s.0 != id);
        self.count.store(v.len(), Ordering::Release);
    }
}

struct Queue<K: Send> {
    jobs: VecDeque<Job<K>>,
    stop: bool,
}

/// Worker threads taking jobs from one queue; completions go to `deliver` (which hands
/// them to the JS thread).
pub struct Installer<K: Send + 'static> {
    queue: Arc<(Mutex<Queue<K>>, Condvar)>,
    present: Arc<Present>,
    stopping: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl<K: Send + 'static> Installer<K> {
    pub fn start(threads: usize, deliver: Arc<dyn Fn(Completion<K>) + Send + Sync>) -> std::io::Result<Installer<K>> {
        let queue = Arc::new((Mutex::new(Queue { jobs: VecDeque::new(), stop: false }), Condvar::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let present = Arc::new(Present::default());
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let q = queue.clone();
            let s = stopping.clone();
            let p = present.clone();
            let d = deliver.clone();
            handles.push(std::thread::Builder::new().name(format!("lazymig-inst{i}")).spawn(move || worker(&q, &s, &p, &*d))?);
        }
        Ok(Installer { queue, present, stopping, threads: Mutex::new(handles) })
    }

    /// Bytes [from, to) of job `id`'s data are in the process already (the caller installed
    /// them, or they were there): the job passes over them. Only what is truly present may be
    /// named: a page passed over is reported in like the others.
    pub fn present(&self, id: u64, from: u64, to: u64) {
        if from < to {
            self.present.add(id, from, to);
        }
    }

    pub fn submit(&self, job: Job<K>) {
        let (m, cv) = &*self.queue;
        m.lock().unwrap().jobs.push_back(job);
        cv.notify_one();
    }

    /// Stops the workers (a job in progress ends stale after its current slice) and returns
    /// the jobs never started. Idempotent.
    pub fn stop(&self) -> Vec<Job<K>> {
        self.stopping.store(true, Ordering::SeqCst);
        let (m, cv) = &*self.queue;
        let left: Vec<Job<K>> = {
            let mut q = m.lock().unwrap();
            q.stop = true;
            q.jobs.drain(..).collect()
        };
        cv.notify_all();
        for h in self.threads.lock().unwrap().drain(..) {
            let _ = h.join();
        }
        left
    }
}

/// Nice value of the worker threads: when a worker and the JS thread both want the CPU
/// (2-vCPU machines, with the restored process and maybe the source running too), the JS
/// thread, which reads faults and serves them, goes first.
const WORKER_NICE: libc::c_int = 5;

/// Makes the calling thread defer to the JS thread (WORKER_NICE): for threads that install
/// pages while the JS thread serves faults.
pub fn defer_to_js_thread() {
    // SAFETY: gettid and setpriority on this very thread; failure only leaves it at nice 0.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, WORKER_NICE);
    }
}

fn worker<K: Send>(queue: &(Mutex<Queue<K>>, Condvar), stopping: &AtomicBool, present: &Present, deliver: &(dyn Fn(Completion<K>) + Send + Sync)) {
    defer_to_js_thread();
    let (m, cv) = queue;
    loop {
        let job = {
            let mut q = m.lock().unwrap();
            loop {
                if q.stop {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                q = cv.wait(q).unwrap();
            }
        };
        let (bytes, end) = run_job(&job, stopping, present);
        present.forget(job.id);
        deliver(Completion { keep: job.keep, bytes, end });
    }
}

/// Installs a job a slice at a time, each under the gate; returns the bytes dealt with
/// from the start of the job, and how it ended.
fn run_job<K: Send>(job: &Job<K>, stopping: &AtomicBool, present: &Present) -> (u64, End) {
    match install_span(job.id, &job.target, job.src, 0, job.src.len, stopping, present, &Wake::EachSlice) {
        Ok(()) => (job.src.len, End::Done),
        Err(stopped) => stopped,
    }
}

/// How an install wakes the threads waiting on its pages.
pub enum Wake<'a> {
    /// As each slice goes in (UFFDIO_COPY's own wake).
    EachSlice,
    /// With UFFDIO_WAKE once `every` bytes more are in, and at the end; `progress` follows
    /// the bytes from the start that are in, and `woke(bytes)` runs after each wake.
    ///
    /// Why: a workload that reads its memory as fast as it arrives waits at the install's
    /// front. Woken by every slice, it ran 16 pages, faulted and slept again, 16,000 times
    /// a GiB, on the CPUs the transfer needs (docs/PERFORMANCE.md, "Fewer wake-ups, and faults
    /// taken without JS").
    Every { every: u64, progress: &'a AtomicU64, woke: &'a dyn Fn(u64) },
}

/// Installs bytes [from, to) of `src`, page data for `target.dst` onwards, a slice at a
/// time, each under the target's gate, passing over what `present` names for `id`. Err:
/// where it stopped (bytes from the start of `src` that are in) and why.
#[allow(clippy::too_many_arguments)]
pub fn install_span(id: u64, target: &Target, src: SrcBytes, from: u64, to: u64, stopping: &AtomicBool, present: &Present, wake: &Wake) -> Result<(), (u64, End)> {
    let mut woken = from;
    let r = install_slices(id, target, src, from, to, stopping, present, wake, &mut woken);
    if let Wake::Every { woke, progress, .. } = wake {
        let reached = match r {
            Ok(()) => to.min(src.len),
            Err((at, _)) => at,
        };
        progress.store(reached, Ordering::Release);
        if reached > woken {
            target.gate.wake(target.dst + woken, reached - woken);
        }
        woke(reached);
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn install_slices(id: u64, target: &Target, src: SrcBytes, from: u64, to: u64, stopping: &AtomicBool, present: &Present, wake: &Wake, woken: &mut u64) -> Result<(), (u64, End)> {
    let ps = page_size() as u64;
    let to = to.min(src.len);
    let mut at = from;
    while at < to {
        if stopping.load(Ordering::Relaxed) {
            return Err((at, End::Stale));
        }
        if let Wake::Every { every, progress, woke } = wake {
            progress.store(at, Ordering::Release);
            if at - *woken >= *every {
                target.gate.wake(target.dst + *woken, at - *woken);
                *woken = at;
                woke(at);
            }
        }
        let n = match present.next(id, at, SLICE_BYTES.min(to - at)) {
            Ok(n) => n,
            Err(end) => {
                at = end.min(to);
                continue;
            }
        };
        // With wake (the kernel only wakes when someone waits, so it costs ~nothing): a
        // thread may be waiting for one of these pages whose fault JS has already served by
        // asking the source for it; when that reply comes, the page is in and JS skips it.
        // SAFETY: at + n <= src.len, and the source bytes stay alive and unmodified while
        // they are installed (SrcBytes).
        let mode = FillMode { dont_wake: matches!(wake, Wake::Every { .. }), wp: false };
        let copy = |fd| unsafe { uffd::copy_from_raw(fd, target.dst + at, src.ptr.add(at as usize), n, mode) };
        let Some(out) = target.gate.slice(target.epoch, target.dst + at, n, stopping, copy) else {
            return Err((at, End::Stale));
        };
        match out {
            Ok(o) => match o.status {
                Status::Ok => at += n,
                // Pages already there (a fault got them first): skip one and go on.
                Status::Exists => at += o.bytes + ps,
                Status::Again => return Err((at + o.bytes, End::Again)),
                Status::Gone => return Err((at + o.bytes, End::Gone)),
                // The range was unmapped or moved and the event said so, or soon will: as
                // for any event since the pages were asked for, they are decided again.
                Status::Unmapped => return Err((at + o.bytes, End::Stale)),
            },
            Err(e) => return Err((at, End::Failed(e.errno))),
        }
    }
    Ok(())
}

/// For the spec: a worker takes slices of ~20 µs under a gate back to back while this
/// thread takes the gate exclusively `rounds` times; returns the most slices the worker
/// began while this thread waited for it (0, or 1 when the worker had already looked as
/// the reader announced itself, if the reader goes first).
pub fn gate_turns(rounds: u32) -> SysResult<u64> {
    let null = std::fs::File::open("/dev/null").map_err(|e| crate::sys::SysError::new("open", e.raw_os_error().unwrap_or(libc::EIO)))?;
    let gate = Gate::new(null.as_raw_fd(), Arc::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let overtaking = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let worker = {
        let (gate, stop, overtaking) = (gate.clone(), stop.clone(), overtaking.clone());
        std::thread::spawn(move || {
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                gate.slice(0, 0, 1, &stop, |_| {
                    if gate.waiting.load(Ordering::SeqCst) > 0 {
                        overtaking.fetch_add(1, Ordering::SeqCst);
                    }
                    let t = std::time::Instant::now();
                    while t.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                });
            }
        })
    };
    let _ = rx.recv();
    let mut worst = 0;
    for _ in 0..rounds {
        let before = overtaking.load(Ordering::SeqCst);
        gate.exclusive(|| {
            worst = worst.max(overtaking.load(Ordering::SeqCst) - before);
            ((), Vec::new())
        });
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn null_gate() -> Arc<Gate> {
        let null = std::fs::File::open("/dev/null").unwrap();
        Gate::new(null.as_raw_fd(), Arc::default()).unwrap()
    }

    fn untouched(g: &Gate, epoch: u64, start: u64, end: u64) -> bool {
        g.state.read().unwrap().untouched_since(epoch, start, end)
    }

    #[test]
    fn events_stale_only_the_pages_they_touched() {
        let g = null_gate();
        let e0 = g.epoch();
        g.exclusive(|| ((), vec![(0x2000, 0x3000)]));
        assert!(untouched(&g, e0, 0x3000, 0x5000), "after the range");
        assert!(untouched(&g, e0, 0x0, 0x2000), "before it");
        assert!(!untouched(&g, e0, 0x1000, 0x2001), "overlapping its first byte");
        assert!(untouched(&g, g.epoch(), 0x2000, 0x3000), "a job that knew of the event");
        g.exclusive(|| ((), Vec::new()));
        assert_eq!(g.epoch(), e0 + 1, "a batch without events moves nothing");
    }

    #[test]
    fn a_job_older_than_the_ranges_kept_is_stale() {
        let g = null_gate();
        let e0 = g.epoch();
        for i in 0..=TOUCHED_KEPT as u64 {
            g.exclusive(|| ((), vec![(i << 20, (i << 20) + 0x1000)]));
        }
        assert!(!untouched(&g, e0, 0x7fff_0000_0000, 0x7fff_0000_1000), "its events are forgotten: cannot tell");
        assert!(untouched(&g, e0 + 2, 0x7fff_0000_0000, 0x7fff_0000_1000), "a later job can still be checked");
        g.close();
        assert!(!untouched(&g, g.epoch(), 0, 0x1000), "a closed gate admits nothing");
    }
}
