//! A page client's lane, received and installed on native threads.
//!
//! Why: on the destination, the JS thread used to read every background byte (a 2 MiB
//! reply took ~5 reads, each a trip through libuv and a JS callback), decode the reply and
//! hand it to an installer thread. Two threads touched every frame, and the JS thread's
//! part showed up in the time until every page is in. Here two threads per background
//! connection take turns at the socket: one reads a whole reply into its own page-aligned
//! buffer, lets the other read the next, and installs its pages with UFFDIO_COPY while the
//! other reads; JS hears once per reply. Each reply is installed by the thread that read it,
//! from memory still in that CPU's cache: with a reader thread handing buffers to an
//! installer thread, installing 1 GiB took ~515 ms of CPU (the copies read lines the other
//! CPU had just written), where this machine's plain-C floor, which reads and installs on
//! one thread, needs far less (see docs/PERFORMANCE.md).
//!
//! Installs stay ordered with the uffd's events exactly as the installer's jobs are: each
//! request is registered with a `Target` carrying the gate's epoch of the moment JS asked
//! for it. A reply installs nothing where an event read since then touched it ("stale"),
//! and JS decides again about those pages, now knowing the event.
//!
//! The fault lane has one thread of its own (`Lane::Fault`), not deferring to the JS
//! thread: each fault reply is a restored thread's whole wait, installed the moment it is
//! read. It took the fault replies' reading, decoding and installing off the JS thread
//! (destination CPU over a busy 1 GiB transfer: median 1029 → 952 ms, docs/PERFORMANCE.md).
//!
//! JS keeps what is not the data path: the handshake, hello and welcome (done before the
//! socket is handed over), writing requests (through `request`, on the JS thread, which
//! registers them first), and every frame that is not a reply to a registered request
//! (`error`, `bye`, `reject`), passed on whole. Only the subset a page server speaks:
//! unfragmented unmasked binary frames, ping, pong, close.

use crate::background::{Arrivals, End, Gate, Present, SrcBytes, Target, Wake, defer_to_js_thread, install_span};
use crate::sys::{SysError, SysResult, now_ns, page_size};
use crate::ws_wire::{FrameBuf, TAG_PAGES, message_uints, send_all, take_socket, ws_header};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Largest frame passed to JS whole (errors, bye, reject are a few hundred bytes).
const MAX_OTHER_PAYLOAD: u64 = 1 << 20;
/// Bytes read ahead for frame headers and the start of a message.
const READ_AHEAD: usize = 64 << 10;
/// Most bytes one recv copies. The kernel holds the socket's lock for the whole copy, and
/// JS's request on the same socket waits for it: with whole 2 MiB recvs a request took the
/// JS thread, which also reads the faults, ~100 µs on average (docs/PERFORMANCE.md, "A
/// request waits for the socket").
const RECV_MAX: usize = 256 << 10;
/// A reply's `pages` message prefix is at most this long: array, tag, four uints, bin32.
const PAGES_PREFIX_MAX: usize = 2 + 4 * 9 + 5;
/// Pages a fault on a reply read whole gets installed at once: the engine's largest fault
/// window (DEFAULT_MAX_WINDOW), which a workload reading in order reaches at once.
const NEAR_WINDOW_PAGES: u64 = 64;
/// A fault on a page of a background request waits for its reply only if at most this many
/// replies come before it (read whole, or still to read); further back it is JS's, which
/// asks for it on the fault lane. The engine's WAIT_BEHIND_REQUESTS, and why: a wait
/// behind more replies costs the thread more than a second copy costs the transfer, on a
/// slow link (docs/PERFORMANCE.md, "Faults on pages on their way").
const WAIT_BEHIND_REQUESTS: usize = 2;
/// A reply's pages are installed without waking the threads waiting on them, which are
/// woken once this many bytes more are in (background.rs, `Wake`): every other slice.
const WAKE_EVERY: u64 = 512 << 10;
/// How a connection's replies are taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Two threads, while one installs the reply it read the other reads the next; they
    /// defer to the JS thread (it serves faults).
    Background,
    /// One thread, at the JS thread's priority: a fault reply is a thread's whole wait, and
    /// each is installed the moment it is read.
    Fault,
}

impl Lane {
    fn threads(self) -> usize {
        match self {
            Lane::Background => 2,
            Lane::Fault => 1,
        }
    }
}

/// What the thread tells JS.
pub enum Event {
    /// The reply to request `id` is dealt with: `bytes` from its start are in (installed,
    /// or there already), and `end` says why it stopped if that is not all of them.
    Installed { id: u64, bytes: u64, end: End },
    /// The reply to request `id` does not match it (pid, address, length): nothing installed.
    BadReply { id: u64, why: String },
    /// Any other binary frame's payload (`error`, `bye`, `reject`), for JS's decoder.
    Message(Vec<u8>),
    /// The connection is over; the thread has ended. None: closed cleanly by either side.
    Closed(Option<String>),
}

#[derive(Default)]
pub struct Stats {
    pub replies: AtomicU64,
    pub pages: AtomicU64,
    pub bytes: AtomicU64,
}

struct Pending {
    pid: u64,
    address: u64,
    pages: u64,
    target: Target,
    /// Faults taken (`Arrivals`) that wait for this reply.
    waiters: Vec<Waiter>,
}

/// A fault a connection took: its page, and when the fault was read.
#[derive(Clone, Copy)]
struct Waiter {
    addr: u64,
    read_ns: u64,
}

impl Waiter {
    /// Whether its page is among the first `bytes` of `target`'s pages, which are in and
    /// woken: then it is counted as served (a wait for a reply on its way) and true.
    fn served_by(&self, target: &Target, bytes: u64) -> bool {
        let served = self.addr >= target.dst && self.addr - target.dst < bytes;
        if served {
            target.gate.near().served(self.read_ns, now_ns(), true);
        }
        served
    }

    /// The reply for `target` ended with `bytes` from its start in: the fault was served if
    /// its page is among them (the install woke its thread), else its thread is woken to
    /// fault again, for JS to serve.
    fn settle(self, target: &Target, bytes: u64) {
        if !self.served_by(target, bytes) {
            target.gate.wake(self.addr, page_size() as u64);
        }
    }
}

/// Masking keys for the frames a client sends (RFC 6455 wants them unpredictable), drawn
/// from the kernel 256 at a time.
struct Masks {
    pool: [u8; 1024],
    at: usize,
}

impl Masks {
    fn next(&mut self) -> [u8; 4] {
        if self.at + 4 > self.pool.len() {
            let mut got = 0;
            while got < self.pool.len() {
                // SAFETY: fills the live remainder of pool.
                let n = unsafe { libc::getrandom(self.pool[got..].as_mut_ptr().cast(), self.pool.len() - got, 0) };
                if n > 0 {
                    got += n as usize;
                }
            }
            self.at = 0;
        }
        let k = [self.pool[self.at], self.pool[self.at + 1], self.pool[self.at + 2], self.pool[self.at + 3]];
        self.at += 4;
        k
    }
}

/// A reply read whole and not yet wholly installed: where its pages are and where they go.
/// While it is listed its buffer is not reused (the thread that read it takes it out, under
/// the same lock, before it reads into that buffer again), so install_now may copy from it.
struct Received {
    src: SrcBytes,
    target: Target,
    /// Bytes from the start that are in (Wake::Every): their threads are woken next.
    progress: Arc<AtomicU64>,
    waiters: Vec<Waiter>,
}

/// How install_now went.
pub enum Now {
    /// The pages are in.
    Installed,
    /// The reply has not been read whole yet (or is wholly installed and gone).
    Absent,
    /// It stopped: an event about these pages was read since the request (stale), or the
    /// process is gone.
    Ended(End),
}

/// The connection's read side: the thread holding it reads the next frames.
struct ReadSide {
    r: Reader,
    /// Why the connection ended, once it has (None inside: cleanly, or on request).
    ended: Option<Stop>,
}

struct Shared {
    sock: OwnedFd,
    lane: Lane,
    /// Held while a frame is written: JS writes requests, the thread answers pings.
    writer: Mutex<Masks>,
    pending: Mutex<HashMap<u64, Pending>>,
    received: Mutex<HashMap<u64, Received>>,
    /// Spans of requests' pages JS installed itself: installs pass over them.
    present: Present,
    read_side: Mutex<ReadSide>,
    /// Threads still running: the last one out reports the end.
    running: AtomicUsize,
    /// Set (under `pending`) by the last thread out: no fault is taken any more.
    closed: AtomicBool,
    stopping: AtomicBool,
    /// now_ns() of the last bytes read.
    heard_ns: AtomicU64,
    stats: Stats,
    /// The largest reply's page data.
    max_bytes: usize,
}

impl Shared {
    fn write_frame(&self, opcode: u8, payload: &[u8]) -> SysResult<()> {
        let mut masks = self.writer.lock().unwrap();
        let mut f = ws_header(opcode, payload.len());
        f[1] |= 0x80;
        let key = masks.next();
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        send_all(self.sock.as_raw_fd(), &f)
    }

    /// An error that ends the thread: none to report if JS asked it to stop.
    fn ended(&self, why: String) -> Option<String> {
        if self.stopping.load(Ordering::SeqCst) { None } else { Some(why) }
    }

    /// Request `id` will install nothing (given up, or its reply does not match it): the
    /// faults waiting for it fault again.
    fn drop_request(&self, id: u64) {
        let Some(p) = self.pending.lock().unwrap().remove(&id) else { return };
        for w in p.waiters {
            w.settle(&p.target, 0);
        }
    }

    /// The connection is over (last thread out): nothing more is installed, every fault
    /// still waiting faults again, for JS, and none is taken from now on.
    fn release_waiters(&self) {
        let mut left: Vec<(Target, Vec<Waiter>)> = Vec::new();
        {
            let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            self.closed.store(true, Ordering::SeqCst);
            for (_, r) in received.drain() {
                // Only a thread that panicked mid-install leaves a reply here: its pages
                // may be in without their wake.
                r.target.gate.wake(r.target.dst, r.src.len);
                left.push((r.target, r.waiters));
            }
            left.extend(pending.drain().map(|(_, p)| (p.target, p.waiters)));
        }
        for (target, waiters) in left {
            for w in waiters {
                w.settle(&target, 0);
            }
        }
    }
}

impl Arrivals for Shared {
    /// A fault on a reply read whole gets its window installed now from that reply's
    /// buffer; one on a request whose reply is being read or comes soon waits for it.
    fn take_fault(&self, gate: &Arc<Gate>, addr: u64, read_ns: u64) -> bool {
        let ps = page_size() as u64;
        let covers = |t: &Target, len: u64| Arc::ptr_eq(&t.gate, gate) && addr >= t.dst && addr - t.dst < len;
        // An event about the page since the request: its reply will not install it there
        // (stale), and JS, which has seen the event, decides.
        let current = |t: &Target| gate.untouched_since(t.epoch, addr, addr + ps);
        // Lock order: received, then pending (a reply moves from one to the other under both).
        let mut received = self.received.lock().unwrap();
        if self.closed.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        if let Some((&id, r)) = received.iter_mut().find(|(_, r)| covers(&r.target, r.src.len)) {
            if !current(&r.target) {
                return false;
            }
            let from = addr - r.target.dst;
            if from < r.progress.load(Ordering::Acquire) {
                // In already, not woken yet: the install's next wake is near.
                r.waiters.push(Waiter { addr, read_ns });
                gate.near().waited.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            // Up to the window, or to pages installed here before.
            let to = match self.present.next(id, from, (NEAR_WINDOW_PAGES * ps).min(r.src.len - from)) {
                Ok(n) => from + n,
                // A second message about a page a window here installed (and woke) already.
                Err(_) => return true,
            };
            let install = |a: u64, b: u64| match install_span(id, &r.target, r.src, a, b, &self.stopping, &Present::default(), &Wake::EachSlice) {
                Ok(()) => b,
                Err((at, _)) => at,
            };
            // The faulting page first, so its thread goes on while the rest goes in.
            let mut done = install(from, from + ps);
            let in_ns = now_ns();
            if done == from + ps && done < to {
                done = install(done, to);
            }
            // The thread installing the reply passes over them rather than find each one present.
            self.present.add(id, from, done);
            if done < to {
                // An event since the request, or the process is gone: JS decides, knowing it.
                // (A page that did go in has woken its thread; JS finds it in.)
                return false;
            }
            let near = gate.near();
            near.installed.fetch_add(1, Ordering::Relaxed);
            near.pages.fetch_add((to - from) / ps, Ordering::Relaxed);
            near.served(read_ns, in_ns, false);
            return true;
        }
        let mut pending = self.pending.lock().unwrap();
        let Some(id) = pending.iter().find(|(_, p)| covers(&p.target, p.pages * ps) && current(&p.target)).map(|(&id, _)| id) else {
            return false;
        };
        // Replies come in the order of the requests, whose ids grow.
        if self.lane == Lane::Background && received.len() + pending.keys().filter(|&&k| k < id).count() > WAIT_BEHIND_REQUESTS {
            return false;
        }
        if let Some(p) = pending.get_mut(&id) {
            p.waiters.push(Waiter { addr, read_ns });
        }
        gate.near().waited.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The JS-side handle of one connection's thread.
pub struct PageReceiver {
    shared: Arc<Shared>,
}

impl PageReceiver {
    /// Takes over the connection on `fd` after the hello was welcomed (a duplicate is made:
    /// the caller closes its own, and must have stopped reading it). `head`: bytes already
    /// read from it. `max_bytes`: the largest reply expected, its buffer faulted in now.
    /// The thread reports through `emit` until it sends `Event::Closed`, its last event.
    pub fn start(fd: RawFd, head: Vec<u8>, max_bytes: usize, lane: Lane, emit: Arc<dyn Fn(Event) + Send + Sync>) -> SysResult<PageReceiver> {
        let sock = take_socket(fd)?;
        let max_bytes = max_bytes.max(page_size());
        let threads = lane.threads();
        let mut bufs = Vec::with_capacity(threads);
        for _ in 0..threads {
            bufs.push(FrameBuf::new(max_bytes)?);
        }
        let mut inbuf = vec![0u8; READ_AHEAD.max(head.len())];
        inbuf[..head.len()].copy_from_slice(&head);
        let reader = Reader { fd: sock.as_raw_fd(), buf: inbuf, lo: 0, hi: head.len() };
        let shared = Arc::new(Shared {
            sock,
            lane,
            writer: Mutex::new(Masks { pool: [0; 1024], at: 1024 }),
            pending: Mutex::new(HashMap::new()),
            received: Mutex::new(HashMap::new()),
            present: Present::default(),
            read_side: Mutex::new(ReadSide { r: reader, ended: None }),
            running: AtomicUsize::new(threads),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            heard_ns: AtomicU64::new(now_ns()),
            stats: Stats::default(),
            max_bytes,
        });
        for (i, buf) in bufs.into_iter().enumerate() {
            let (s, emit) = (shared.clone(), emit.clone());
            let name = if lane == Lane::Fault { "lazymig-fault".to_string() } else { format!("lazymig-recv{i}") };
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                if lane == Lane::Background {
                    defer_to_js_thread();
                }
                let run = std::panic::AssertUnwindSafe(|| Worker { s: &s, buf, emit: &*emit }.run());
                if let Err(p) = std::panic::catch_unwind(run) {
                    let why = format!("internal error in a page receiver thread: {}", crate::napi::error::panic_message(&*p));
                    s.read_side.lock().unwrap_or_else(|p| p.into_inner()).ended.get_or_insert(Some(why));
                    // The other thread may be waiting in recv: the connection ends with this one.
                    PageReceiver { shared: s.clone() }.terminate();
                }
                if s.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                    // SAFETY: shutdown on an fd we own: the server learns at once that nobody reads.
                    unsafe { libc::shutdown(s.sock.as_raw_fd(), libc::SHUT_RDWR) };
                    s.release_waiters();
                    let end = s.read_side.lock().unwrap_or_else(|p| p.into_inner()).ended.take().flatten();
                    emit(Event::Closed(end));
                }
            });
            if let Err(e) = spawned {
                // The threads already started end with the connection.
                shared.running.fetch_sub(threads - i, Ordering::SeqCst);
                PageReceiver { shared: shared.clone() }.terminate();
                return Err(SysError::new("pthread_create", e.raw_os_error().unwrap_or(libc::EAGAIN)).because(e.to_string()));
            }
        }
        Ok(PageReceiver { shared })
    }

    /// Registers request `id` (its reply's pages go to `target`) and sends `payload`, the
    /// request message, as a binary frame. Registered first: the reply may come at once.
    /// The target's gate learns of this connection: its reader asks it about faults.
    pub fn request(&self, id: u64, pid: u64, address: u64, pages: u64, target: Target, payload: &[u8]) -> SysResult<()> {
        let gate = target.gate.clone();
        self.shared.pending.lock().unwrap().insert(id, Pending { pid, address, pages, target, waiters: Vec::new() });
        let arrivals: Weak<dyn Arrivals> = Arc::downgrade(&self.shared) as Weak<Shared>;
        gate.attach(arrivals);
        self.shared.write_frame(0x2, payload)
    }

    /// Request `id` is given up (the server answered it with an error): a late reply is
    /// read and dropped.
    pub fn cancel(&self, id: u64) {
        self.shared.drop_request(id);
        self.shared.present.forget(id);
    }

    /// Bytes [from, to) of request `id`'s pages are in the process already: its reply
    /// passes over them. Only what is truly present may be named.
    pub fn present(&self, id: u64, from: u64, to: u64) {
        if from < to {
            self.shared.present.add(id, from, to);
        }
    }

    /// Installs bytes [from, to) of request `id`'s pages now, on the calling thread, from
    /// the buffer its reply was read into: a fault on a page that has arrived need not
    /// wait for the installer to reach it. The epoch check of the request holds here too.
    pub fn install_now(&self, id: u64, from: u64, to: u64) -> Now {
        let received = self.shared.received.lock().unwrap();
        let Some(r) = received.get(&id) else { return Now::Absent };
        if from < r.progress.load(Ordering::Acquire) {
            // The reply's own install put the first page in without a wake (Wake::Every):
            // its thread may wait on it, and the copy below finds it present, waking nobody.
            r.target.gate.wake(r.target.dst + from, page_size() as u64);
        }
        match install_span(id, &r.target, r.src, from, to, &self.shared.stopping, &Present::default(), &Wake::EachSlice) {
            Ok(()) => {
                // The thread installing the reply passes over them rather than find each one present.
                self.shared.present.add(id, from, to);
                Now::Installed
            }
            Err((_, end)) => Now::Ended(end),
        }
    }

    pub fn send(&self, payload: &[u8]) -> SysResult<()> {
        self.shared.write_frame(0x2, payload)
    }

    pub fn ping(&self) -> SysResult<()> {
        self.shared.write_frame(0x9, &[])
    }

    /// Holds the frames written from now on in the socket (TCP_CORK) until `hold(false)`,
    /// which sends them together. Over loopback each send runs the receiving side's
    /// processing and its thread's wake-up on the sender's CPU: a burst of requests held and
    /// sent as one costs that once.
    pub fn hold(&self, on: bool) -> SysResult<()> {
        crate::sys::tcp::set_cork(self.shared.sock.as_raw_fd(), on)
    }

    /// Sends a close frame; the thread ends when the server answers it (or on terminate).
    pub fn close(&self, code: u16) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if self.shared.write_frame(0x8, &code.to_be_bytes()).is_err() {
            self.terminate();
        }
    }

    /// Ends the connection now (the thread, blocked in recv, is woken by the shutdown).
    pub fn terminate(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on an fd the shared state owns; it stays open until the last
        // Arc goes, so the number cannot have been reused.
        unsafe { libc::shutdown(self.shared.sock.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Milliseconds since the last bytes came from the server.
    pub fn silent_ms(&self) -> u64 {
        now_ns().saturating_sub(self.shared.heard_ns.load(Ordering::Relaxed)) / 1_000_000
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

/// Why the thread stops: None when JS asked for it or the server closed cleanly.
type Stop = Option<String>;

/// Reads the socket: headers through a read-ahead buffer, page data straight to its place.
struct Reader {
    fd: RawFd,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
}

impl Reader {
    fn available(&self) -> usize {
        self.hi - self.lo
    }

    /// One recv into [ptr, ptr + len): how many bytes came.
    fn recv(&self, s: &Shared, ptr: *mut u8, len: usize) -> Result<usize, Stop> {
        loop {
            // SAFETY: the caller passes a live, writable region of len bytes.
            let n = unsafe { libc::recv(self.fd, ptr.cast(), len, 0) };
            if n > 0 {
                s.heard_ns.store(now_ns(), Ordering::Relaxed);
                return Ok(n as usize);
            }
            if n == 0 {
                return Err(s.ended("connection closed by the page server".into()));
            }
            let e = SysError::last("recv");
            if e.errno != libc::EINTR {
                return Err(s.ended(e.to_string()));
            }
        }
    }

    /// At least `n` bytes (n <= READ_AHEAD) buffered.
    fn fill(&mut self, s: &Shared, n: usize) -> Result<(), Stop> {
        if self.lo + n > self.buf.len() {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
        }
        while self.available() < n {
            let (at, room) = (self.buf[self.hi..].as_mut_ptr(), self.buf.len() - self.hi);
            let got = self.recv(s, at, room)?;
            self.hi += got;
        }
        Ok(())
    }

    fn peek(&self, n: usize) -> &[u8] {
        &self.buf[self.lo..self.lo + n]
    }

    fn consume(&mut self, n: usize) {
        self.lo += n;
        if self.lo == self.hi {
            self.lo = 0;
            self.hi = 0;
        }
    }

    /// Exactly `len` bytes into [ptr, ptr + len): buffered bytes first, the rest straight
    /// from the socket, never past the end.
    fn read_exact(&mut self, s: &Shared, ptr: *mut u8, len: usize) -> Result<(), Stop> {
        let first = self.available().min(len);
        // SAFETY: ptr has room for len >= first bytes; the source is our own buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.buf[self.lo..].as_ptr(), ptr, first) };
        self.consume(first);
        let mut filled = first;
        while filled < len {
            // SAFETY: [ptr + filled, ptr + len) is inside the caller's region.
            filled += self.recv(s, unsafe { ptr.add(filled) }, (len - filled).min(RECV_MAX))?;
        }
        Ok(())
    }
}

/// The start of a `pages` message: (id, pid, address, pages, data length, prefix length).
fn decode_pages_prefix(b: &[u8]) -> Option<(u64, u64, u64, u64, u64, usize)> {
    let ([id, pid, address, pages], at) = message_uints::<4>(b, 6, TAG_PAGES)?;
    let (len, n) = match *b.get(at)? {
        0xc4 => (*b.get(at + 1)? as u64, 2),
        0xc5 => (u16::from_be_bytes(b.get(at + 1..at + 3)?.try_into().ok()?) as u64, 3),
        0xc6 => (u32::from_be_bytes(b.get(at + 1..at + 5)?.try_into().ok()?) as u64, 5),
        _ => return None,
    };
    Some((id, pid, address, pages, len, at + n))
}

/// A reply read into a thread's buffer, to be installed.
struct Reply {
    id: u64,
    target: Target,
    src: SrcBytes,
    progress: Arc<AtomicU64>,
}

/// One of a connection's threads: reads a reply (holding the read side), installs it.
struct Worker<'a> {
    s: &'a Shared,
    buf: FrameBuf,
    emit: &'a (dyn Fn(Event) + Send + Sync),
}

impl Worker<'_> {
    fn run(&mut self) {
        loop {
            let reply = {
                let mut side = self.s.read_side.lock().unwrap();
                if side.ended.is_some() {
                    return;
                }
                match (Conn { s: self.s, r: &mut side.r, emit: self.emit }).next_reply(&self.buf) {
                    Ok(reply) => reply,
                    Err(stop) => {
                        side.ended = Some(stop);
                        return;
                    }
                }
            };
            self.install(reply);
        }
    }

    fn install(&self, Reply { id, target, src, progress }: Reply) {
        // Faults waiting on pages now in and woken are served.
        let woke = |bytes: u64| {
            if let Some(r) = self.s.received.lock().unwrap().get_mut(&id) {
                r.waiters.retain(|w| !w.served_by(&target, bytes));
            }
        };
        // A fault lane's reply is a thread's whole wait: woken slice by slice.
        let every = if self.s.lane == Lane::Fault { 0 } else { WAKE_EVERY };
        let wake = Wake::Every { every, progress: &progress, woke: &woke };
        let (bytes, end) = match install_span(id, &target, src, 0, src.len, &self.s.stopping, &self.s.present, &wake) {
            Ok(()) => (src.len, End::Done),
            Err(stopped) => stopped,
        };
        // Unlisted before the buffer takes the next reply: install_now copies under this lock.
        let waiters = self.s.received.lock().unwrap().remove(&id).map(|r| r.waiters).unwrap_or_default();
        for w in waiters {
            w.settle(&target, bytes);
        }
        self.s.present.forget(id);
        self.s.stats.pages.fetch_add(bytes / page_size() as u64, Ordering::Relaxed);
        (self.emit)(Event::Installed { id, bytes, end });
    }
}

/// Reading the connection, for the thread that holds its read side.
struct Conn<'a> {
    s: &'a Shared,
    r: &'a mut Reader,
    emit: &'a (dyn Fn(Event) + Send + Sync),
}

impl Conn<'_> {
    /// Reads frames until a reply to a registered request has been read into `buf`; deals
    /// with every other frame on the way (pings, errors and the like for JS, replies to
    /// requests given up). Err: the connection is over.
    fn next_reply(&mut self, buf: &FrameBuf) -> Result<Reply, Stop> {
        loop {
            let (opcode, len) = self.header()?;
            match opcode {
                0x2 => {
                    if let Some(reply) = self.binary(len, buf)? {
                        return Ok(reply);
                    }
                }
                0x9 => {
                    let p = self.small(len)?;
                    self.s.write_frame(0xa, &p).map_err(|e| self.s.ended(e.to_string()))?;
                }
                0xa => {
                    self.small(len)?;
                }
                0x8 => return Err(self.closed_by_server(len)),
                _ => unreachable!("header() admits no other opcode"),
            }
        }
    }

    /// The server's close frame: echoed (unless we closed first), then the end.
    fn closed_by_server(&mut self, len: u64) -> Stop {
        let body = self.small(len).unwrap_or_default();
        if self.s.stopping.swap(true, Ordering::SeqCst) {
            return None;
        }
        // The server closed first: echo its code, as RFC 6455 asks.
        let code = if body.len() >= 2 { body[..2].to_vec() } else { vec![0x03, 0xe8] };
        let _ = self.s.write_frame(0x8, &code);
        let code = if body.len() >= 2 { u16::from_be_bytes([body[0], body[1]]) } else { 1005 };
        if code == 1000 || code == 1005 {
            return None;
        }
        let reason = String::from_utf8_lossy(body.get(2..).unwrap_or_default());
        Some(format!("closed by the page server ({code}{}{reason})", if reason.is_empty() { "" } else { ": " }))
    }

    /// A protocol error: close with `code` and stop, naming `why`.
    fn violation(&self, code: u16, why: String) -> Stop {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(why.as_bytes());
        let _ = self.s.write_frame(0x8, &body);
        Some(why)
    }

    /// The next frame's opcode and payload length.
    fn header(&mut self) -> Result<(u8, u64), Stop> {
        self.r.fill(self.s, 2)?;
        let [b0, b1] = [self.r.peek(2)[0], self.r.peek(2)[1]];
        if b0 & 0x70 != 0 {
            return Err(self.violation(1002, "RSV bits set".into()));
        }
        if b1 & 0x80 != 0 {
            return Err(self.violation(1002, "server frames must not be masked".into()));
        }
        let opcode = b0 & 0x0f;
        if b0 & 0x80 == 0 || opcode == 0 {
            return Err(self.violation(1003, "fragmented frames are not supported".into()));
        }
        if !matches!(opcode, 0x2 | 0x8 | 0x9 | 0xa) {
            return Err(self.violation(1003, format!("unsupported opcode {opcode}")));
        }
        let hdr = match b1 & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        self.r.fill(self.s, hdr)?;
        let h = self.r.peek(hdr);
        let len = match hdr {
            4 => u16::from_be_bytes([h[2], h[3]]) as u64,
            10 => u64::from_be_bytes(h[2..10].try_into().unwrap()),
            _ => (b1 & 0x7f) as u64,
        };
        if opcode >= 0x8 && len > 125 {
            return Err(self.violation(1002, "control frame too long".into()));
        }
        let max = (self.s.max_bytes + PAGES_PREFIX_MAX) as u64;
        if len > max.max(MAX_OTHER_PAYLOAD) {
            return Err(self.violation(1009, format!("frame of {len} bytes exceeds {}", max.max(MAX_OTHER_PAYLOAD))));
        }
        self.r.consume(hdr);
        Ok((opcode, len))
    }

    /// A payload of at most MAX_OTHER_PAYLOAD bytes, whole.
    fn small(&mut self, len: u64) -> Result<Vec<u8>, Stop> {
        let mut v = vec![0u8; len as usize];
        self.r.read_exact(self.s, v.as_mut_ptr(), v.len())?;
        Ok(v)
    }

    /// A binary frame: a reply read into `buf` (Some), or anything else dealt with (None).
    fn binary(&mut self, len: u64, buf: &FrameBuf) -> Result<Option<Reply>, Stop> {
        let head = (len as usize).min(PAGES_PREFIX_MAX);
        self.r.fill(self.s, head)?;
        if let Some((id, pid, address, pages, data_len, k)) = decode_pages_prefix(self.r.peek(head))
            && k as u64 + data_len == len
        {
            self.r.consume(k);
            // Listed until read whole: faults on its pages wait for it meanwhile.
            let pending = self.s.pending.lock().unwrap().get(&id).map(|p| (p.pid, p.address, p.pages, p.target.clone()));
            let Some((p_pid, p_address, p_pages, target)) = pending else {
                // A request given up meanwhile: its reply is read and dropped.
                self.discard(data_len)?;
                return Ok(None);
            };
            let ps = page_size() as u64;
            let mismatch = if p_pid != pid || p_address != address || p_pages != pages {
                Some(format!("reply {id} is pid {pid} 0x{address:x}+{pages} pages, the request pid {p_pid} 0x{p_address:x}+{p_pages} pages"))
            } else if data_len != pages * ps {
                Some(format!("reply {id} carries {data_len} bytes for {pages} pages"))
            } else {
                None
            };
            if let Some(why) = mismatch {
                self.s.drop_request(id);
                self.discard(data_len)?;
                (self.emit)(Event::BadReply { id, why });
                return Ok(None);
            }
            return self.read_reply(id, target, data_len, buf).map(Some);
        }
        if len > MAX_OTHER_PAYLOAD {
            return Err(self.violation(1009, format!("a {len}-byte frame that is not a reply to a request")));
        }
        let v = self.small(len)?;
        (self.emit)(Event::Message(v));
        Ok(None)
    }

    /// Reads `len` bytes of page data into `buf`, listed for install_now once whole.
    fn read_reply(&mut self, id: u64, target: Target, len: u64, buf: &FrameBuf) -> Result<Reply, Stop> {
        // The data area starts one page into the mapping: page-aligned, like the target.
        // SAFETY: the mapping is one page plus data_capacity() >= len bytes (header()
        // refuses longer frames).
        let data = unsafe { buf.ptr.add(page_size()) };
        self.r.read_exact(self.s, data, len as usize)?;
        self.s.stats.replies.fetch_add(1, Ordering::Relaxed);
        self.s.stats.bytes.fetch_add(len, Ordering::Relaxed);
        // The bytes stay as read until the reply is installed and unlisted: the thread that
        // owns buf reads nothing else into it before (SrcBytes).
        let src = SrcBytes { ptr: data, len };
        let progress = Arc::new(AtomicU64::new(0));
        {
            // Under both locks: a fault finds the reply in one of the two (take_fault).
            let mut received = self.s.received.lock().unwrap();
            // Given up while it was read (cancel): installed all the same, as before.
            let waiters = self.s.pending.lock().unwrap().remove(&id).map(|p| p.waiters).unwrap_or_default();
            received.insert(id, Received { src, target: target.clone(), progress: progress.clone(), waiters });
        }
        Ok(Reply { id, target, src, progress })
    }

    /// Reads and drops `len` bytes.
    fn discard(&mut self, mut len: u64) -> Result<(), Stop> {
        let mut sink = vec![0u8; READ_AHEAD];
        while len > 0 {
            let n = len.min(sink.len() as u64) as usize;
            self.r.read_exact(self.s, sink.as_mut_ptr(), n)?;
            len -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_prefix_decodes_both_servers_headers() {
        // As writePagesHeader and page_stream.rs write it: fixed widths, bin32.
        let mut b = vec![0x96, TAG_PAGES, 0xce, 0, 0, 0, 7, 0xce, 0, 0, 1, 0x2c, 0xcf];
        b.extend_from_slice(&0x7f00_0000_0000u64.to_be_bytes());
        b.extend_from_slice(&[0xce, 0, 0, 2, 0, 0xc6, 0, 0x20, 0, 0]);
        assert_eq!(decode_pages_prefix(&b), Some((7, 300, 0x7f00_0000_0000, 512, 512 * 4096, 31)));
        // As msgpackr packs it (encodeServer): smallest widths, a float64 address, bin16.
        let mut m = vec![0x96, TAG_PAGES, 7, 0xcd, 1, 0x2c, 0xcb];
        m.extend_from_slice(&(0x7f00_0000_0000u64 as f64).to_be_bytes());
        m.extend_from_slice(&[1, 0xc5, 0x10, 0]);
        assert_eq!(decode_pages_prefix(&m), Some((7, 300, 0x7f00_0000_0000, 1, 4096, m.len())));
        assert_eq!(decode_pages_prefix(&m[..m.len() - 1]), None);
        assert_eq!(decode_pages_prefix(&[0x93, 19, 1]), None);
    }
}
