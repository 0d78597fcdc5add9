//! A destination's background lane, served from the frozen processes on a native thread.
//!
//! Why: on the source, the page server's JS thread used to read every background reply
//! with process_vm_readv and hand it to the socket itself, with the JS work of each frame
//! in between (decoding the request, the WebSocket library's framing, callbacks). On a
//! machine with two CPUs that thread was the busiest of a transfer, and CPU time spent on
//! it showed up nearly one for one in the time until every page is in. Here one thread
//! per background connection does only the kernel's part: it reads a request, reads the
//! pages into a page-aligned buffer behind the frame headers, and writes the frame with one
//! send. A slow reader blocks that thread in send, which is the backpressure; the JS
//! thread stays free for fault requests on the other lane.
//!
//! JS keeps everything that is not the data path: the WebSocket handshake, the hello and
//! its token check, welcome/reject, `complete`, logging. The thread passes it every binary
//! frame it does not serve itself (a request is served here only once JS has called
//! `serve` with the ranges the dump recorded), and writes the frames JS queues, in order,
//! between replies. After passing a frame on it reads no further frame until JS says
//! `resume`: a client may send its requests right behind its hello, and whether they are
//! served depends on what JS makes of the hello.
//!
//! Only the WebSocket subset a page client speaks: unfragmented masked binary frames, ping,
//! pong, close. Anything else closes the connection (1002/1003/1009).

use crate::procmem::{self, Dir, Range};
use crate::sys::{EventFd, SysError, SysResult, page_size};
use crate::ws_wire::{FrameBuf, PAGES_HEADER, TAG_ERROR, TAG_PAGES, TAG_REQUEST, message_uints, send_all, take_socket, ws_header};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest client frame accepted (requests are ~30 bytes; the hello carries a token).
const MAX_CLIENT_PAYLOAD: usize = 64 << 10;

/// The lazy ranges a destination may read, by pid: sorted, merged [start, end) pairs.
pub struct LazyRanges {
    by_pid: HashMap<i32, Vec<(u64, u64)>>,
}

impl LazyRanges {
    /// From (pid, start, end) triples; adjacent ranges merge, so a request may span two.
    pub fn new(triples: &[(i32, u64, u64)]) -> LazyRanges {
        let mut by_pid: HashMap<i32, Vec<(u64, u64)>> = HashMap::new();
        for &(pid, s, e) in triples {
            by_pid.entry(pid).or_default().push((s, e));
        }
        for v in by_pid.values_mut() {
            v.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
            for &(s, e) in v.iter() {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            *v = merged;
        }
        LazyRanges { by_pid }
    }

    /// True when [addr, addr + len) lies wholly inside one range of pid.
    pub fn contains(&self, pid: i32, addr: u64, len: u64) -> bool {
        let Some(v) = self.by_pid.get(&pid) else { return false };
        let Some(end) = addr.checked_add(len) else { return false };
        let i = v.partition_point(|&(s, _)| s <= addr);
        i > 0 && len > 0 && end <= v[i - 1].1
    }
}

/// What the thread tells JS.
pub enum Event {
    /// A binary frame's payload the thread did not serve (hello, complete, a request before
    /// `serve`, anything it could not decode): JS handles it as it would on any connection.
    Message(Vec<u8>),
    /// The frame JS queued with this token has been handed to the socket.
    Sent(u64),
    /// A request outside the dumped lazy ranges (or too large) was refused with an error frame.
    Refused { pid: u64, address: u64, pages: u64 },
    /// Reading the pages failed; the peer got an error frame naming the cause.
    ReadFailed { pid: u64, address: u64, error: String },
    /// The connection is over; the thread has ended. None: closed cleanly by either side.
    Closed(Option<String>),
}

/// Counters JS reads for its logs and summaries.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub pages: AtomicU64,
    pub bytes: AtomicU64,
}

struct Serving {
    ranges: LazyRanges,
    max_pages: u64,
}

struct Shared {
    sock: OwnedFd,
    wake: EventFd,
    /// Whole frames (already framed) JS wants written, with the token reported once sent.
    outbox: Mutex<VecDeque<(Vec<u8>, u64)>>,
    serving: Mutex<Option<Arc<Serving>>>,
    /// Send a close frame with this code and reason after the outbox, then end.
    closing: Mutex<Option<(u16, String)>>,
    /// A frame went to JS, which has not said `resume` yet: parse nothing meanwhile.
    paused: AtomicBool,
    stopping: AtomicBool,
    stats: Stats,
}

/// The JS-side handle of one connection's thread.
pub struct PageStream {
    shared: Arc<Shared>,
}

impl PageStream {
    /// Takes over the connection on `fd` (a duplicate is made: the caller closes its own,
    /// and must have stopped reading it). `head`: bytes already read from it; `greeting`:
    /// bytes written first, as they are (the handshake's response). The thread reports
    /// through `emit` until it sends `Event::Closed`, its last event.
    pub fn start(fd: RawFd, head: Vec<u8>, greeting: Vec<u8>, buffer_bytes: usize, emit: Box<dyn FnMut(Event) + Send>) -> SysResult<PageStream> {
        // The thread blocks in send while the peer is slow (that is the backpressure) and
        // polls before every read.
        let sock = take_socket(fd)?;
        let shared = Arc::new(Shared {
            sock,
            wake: EventFd::new()?,
            outbox: Mutex::new(VecDeque::from([(greeting, 0)])),
            serving: Mutex::new(None),
            closing: Mutex::new(None),
            paused: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stats: Stats::default(),
        });
        let buf = FrameBuf::new(buffer_bytes.max(page_size()))?;
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("lazymig-stream".into())
            .spawn(move || {
                let mut emit = emit;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Conn { s: &for_thread, inbuf: head, buf, emit: &mut emit }.run()));
                let end = match r {
                    Ok(end) => end,
                    Err(p) => Some(format!("internal error in the page stream thread: {}", crate::napi::error::panic_message(&*p))),
                };
                // Whatever ended it, the peer must not wait on a connection nobody serves.
                // SAFETY: shutdown on an fd we own.
                unsafe { libc::shutdown(for_thread.sock.as_raw_fd(), libc::SHUT_RDWR) };
                emit(Event::Closed(end));
            })
            .map_err(|e| SysError::new("pthread_create", e.raw_os_error().unwrap_or(libc::EAGAIN)).because(e.to_string()))?;
        Ok(PageStream { shared })
    }

    /// From now on requests inside `ranges` (and at most `max_pages` long) are served here.
    pub fn serve(&self, ranges: LazyRanges, max_pages: u64) {
        *self.shared.serving.lock().unwrap() = Some(Arc::new(Serving { ranges, max_pages }));
    }

    /// JS has dealt with the last frame passed to it: go on reading.
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.wake.signal();
    }

    /// Queues a binary frame carrying `payload`; `Event::Sent(token)` once it is written.
    pub fn send(&self, payload: &[u8], token: u64) {
        let mut frame = Vec::with_capacity(payload.len() + 10);
        frame.extend_from_slice(&ws_header(0x2, payload.len()));
        frame.extend_from_slice(payload);
        self.shared.outbox.lock().unwrap().push_back((frame, token));
        self.shared.wake.signal();
    }

    /// Ends the connection with a close frame once the queued frames are out.
    pub fn close(&self, code: u16, reason: &str) {
        *self.shared.closing.lock().unwrap() = Some((code, reason.chars().take(120).collect()));
        self.shared.wake.signal();
    }

    /// Ends the connection now (a thread blocked in send is woken by the shutdown).
    pub fn terminate(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on an fd the shared state owns; the fd stays open until the
        // last Arc goes, so the number cannot have been reused.
        unsafe { libc::shutdown(self.shared.sock.as_raw_fd(), libc::SHUT_RDWR) };
        self.shared.wake.signal();
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

/// An `error` message: [19, id, reason], as encodeServer writes it.
fn error_message(id: u64, reason: &str) -> Vec<u8> {
    let r = &reason.as_bytes()[..reason.len().min(4000)];
    let mut m = vec![0x93, TAG_ERROR, 0xcf];
    m.extend_from_slice(&id.to_be_bytes());
    match r.len() {
        n if n < 32 => m.push(0xa0 | n as u8),
        n if n < 256 => m.extend_from_slice(&[0xd9, n as u8]),
        n => {
            m.push(0xda);
            m.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    m.extend_from_slice(r);
    m
}

struct Request {
    id: u64,
    pid: u64,
    address: u64,
    pages: u64,
}

/// A `request` message [2, id, pid, address, pages, priority] with every field in range for
/// a reply header; None sends the frame to JS, whose decoder says what is wrong with it.
fn decode_request(b: &[u8]) -> Option<Request> {
    let ([id, pid, address, pages, priority], at) = message_uints::<5>(b, 6, TAG_REQUEST)?;
    let fits = id <= u32::MAX as u64 && pid <= i32::MAX as u64 && pages <= u32::MAX as u64 && priority <= 1;
    (at == b.len() && fits).then_some(Request { id, pid, address, pages })
}

/// How a frame read from the peer ends the loop, if it does.
enum Flow {
    Go,
    End(Option<String>),
}

struct Conn<'a> {
    s: &'a Shared,
    /// Bytes read and not yet parsed.
    inbuf: Vec<u8>,
    buf: FrameBuf,
    emit: &'a mut Box<dyn FnMut(Event) + Send>,
}

impl Conn<'_> {
    fn run(&mut self) -> Option<String> {
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            if let Err(e) = self.flush_outbox() {
                return self.ended(e);
            }
            if self.s.stopping.load(Ordering::SeqCst) {
                return None;
            }
            if let Some((code, reason)) = self.s.closing.lock().unwrap().take() {
                self.close_frame(code, &reason);
                return None;
            }
            if self.s.paused.load(Ordering::SeqCst) {
                if let Err(e) = self.wait(false) {
                    return self.ended(e);
                }
                continue;
            }
            // One whole frame already read at a time: queued frames (a welcome, say) and a
            // stop go before the next reply.
            match self.next_frame() {
                Ok(Some((opcode, payload))) => match self.on_frame(opcode, payload) {
                    Flow::Go => continue,
                    Flow::End(e) => return e,
                },
                Ok(None) => {}
                Err((code, why)) => {
                    self.close_frame(code, &why);
                    return Some(why);
                }
            }
            match self.wait(true) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => return self.ended(e),
            }
            // SAFETY: reads into a live buffer of chunk.len() bytes.
            let n = unsafe { libc::read(self.s.sock.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            if n < 0 {
                let e = SysError::last("read");
                if e.errno == libc::EINTR || e.errno == libc::EAGAIN {
                    continue;
                }
                return self.ended(e);
            }
            if n == 0 {
                return if self.s.stopping.load(Ordering::SeqCst) { None } else { Some("connection closed by the peer".into()) };
            }
            self.inbuf.extend_from_slice(&chunk[..n as usize]);
        }
    }

    /// An error that ends the loop: none to report if JS asked to stop (the shutdown caused it).
    fn ended(&self, e: SysError) -> Option<String> {
        if self.s.stopping.load(Ordering::SeqCst) { None } else { Some(e.to_string()) }
    }

    /// Waits for JS (and for bytes from the peer, if `socket`): true when the socket has some.
    fn wait(&self, socket: bool) -> SysResult<bool> {
        let mut fds = [
            libc::pollfd { fd: self.s.wake.raw(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.s.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let nfds = if socket { 2 } else { 1 };
        loop {
            // SAFETY: fds is a live array of at least nfds pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, -1) };
            if n < 0 {
                let e = SysError::last("poll");
                if e.errno == libc::EINTR {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents != 0 {
                self.s.wake.drain();
            }
            return Ok(socket && fds[1].revents != 0);
        }
    }

    /// The next whole frame in inbuf (unmasked), or None until more bytes come.
    fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, (u16, String)> {
        let b = &self.inbuf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (b[0], b[1]);
        if b0 & 0x70 != 0 {
            return Err((1002, "RSV bits set".into()));
        }
        if b1 & 0x80 == 0 {
            return Err((1002, "client frames must be masked".into()));
        }
        let opcode = b0 & 0x0f;
        if b0 & 0x80 == 0 || opcode == 0 {
            return Err((1003, "fragmented frames are not supported".into()));
        }
        let (len, hdr) = match b1 & 0x7f {
            126 if b.len() < 4 => return Ok(None),
            126 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
            127 if b.len() < 10 => return Ok(None),
            127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
            n => (n as u64, 2),
        };
        if len > MAX_CLIENT_PAYLOAD as u64 {
            return Err((1009, format!("frame of {len} bytes exceeds {MAX_CLIENT_PAYLOAD}")));
        }
        let end = hdr + 4 + len as usize;
        if b.len() < end {
            return Ok(None);
        }
        let mask = [b[hdr], b[hdr + 1], b[hdr + 2], b[hdr + 3]];
        let payload: Vec<u8> = b[hdr + 4..end].iter().enumerate().map(|(i, x)| x ^ mask[i & 3]).collect();
        self.inbuf.drain(..end);
        Ok(Some((opcode, payload)))
    }

    fn on_frame(&mut self, opcode: u8, payload: Vec<u8>) -> Flow {
        match opcode {
            0x2 => {
                let serving = self.s.serving.lock().unwrap().clone();
                match (serving, decode_request(&payload)) {
                    (Some(sv), Some(r)) => match self.serve(&sv, r) {
                        Ok(()) => Flow::Go,
                        Err(e) => Flow::End(self.ended(e)),
                    },
                    _ => {
                        self.s.paused.store(true, Ordering::SeqCst);
                        (self.emit)(Event::Message(payload));
                        Flow::Go
                    }
                }
            }
            0x8 => {
                // Echo the peer's code, as RFC 6455 asks, and end.
                let code = if payload.len() >= 2 { &payload[..2] } else { &[0x03, 0xe8][..] };
                let _ = self.write_frame(0x8, code);
                Flow::End(None)
            }
            0x9 => match self.write_frame(0xa, &payload) {
                Ok(()) => Flow::Go,
                Err(e) => Flow::End(self.ended(e)),
            },
            0xa => Flow::Go,
            0x1 => {
                self.close_frame(1003, "frames must be binary");
                Flow::End(Some("text frame: frames must be binary".into()))
            }
            _ => {
                self.close_frame(1002, "unknown opcode");
                Flow::End(Some(format!("unknown opcode {opcode}")))
            }
        }
    }

    fn serve(&mut self, sv: &Serving, r: Request) -> SysResult<()> {
        self.s.stats.requests.fetch_add(1, Ordering::Relaxed);
        let ps = page_size() as u64;
        let bytes = r.pages.saturating_mul(ps);
        if r.pages > sv.max_pages || !r.address.is_multiple_of(ps) || !sv.ranges.contains(r.pid as i32, r.address, bytes) {
            let reason = format!("pid {} 0x{:x}+{} pages is not a lazy range of the dump", r.pid, r.address, r.pages);
            self.write_frame(0x2, &error_message(r.id, &reason))?;
            (self.emit)(Event::Refused { pid: r.pid, address: r.address, pages: r.pages });
            return Ok(());
        }
        let bytes = bytes as usize;
        if bytes > self.buf.data_capacity() {
            self.buf = FrameBuf::new(bytes)?;
        }
        let data = ps as usize;
        let range = [Range { addr: r.address, len: bytes as u64 }];
        // SAFETY: [data, data + bytes) lies inside the mapping (data_capacity >= bytes).
        let read = unsafe { procmem::transfer(r.pid as i32, Dir::Read, &range, self.buf.ptr.add(data), bytes) };
        if let Err(e) = read {
            let error = e.to_string();
            self.write_frame(0x2, &error_message(r.id, &format!("reading pid {} at 0x{:x}: {error}", r.pid, r.address)))?;
            (self.emit)(Event::ReadFailed { pid: r.pid, address: r.address, error });
            return Ok(());
        }
        // [ws header][pages header][data]: the headers written just before the data.
        let mut mp = [0u8; PAGES_HEADER];
        mp[0] = 0x96;
        mp[1] = TAG_PAGES;
        mp[2] = 0xce;
        mp[3..7].copy_from_slice(&(r.id as u32).to_be_bytes());
        mp[7] = 0xce;
        mp[8..12].copy_from_slice(&(r.pid as u32).to_be_bytes());
        mp[12] = 0xcf;
        mp[13..21].copy_from_slice(&r.address.to_be_bytes());
        mp[21] = 0xce;
        mp[22..26].copy_from_slice(&(r.pages as u32).to_be_bytes());
        mp[26] = 0xc6;
        mp[27..31].copy_from_slice(&(bytes as u32).to_be_bytes());
        let ws = ws_header(0x2, PAGES_HEADER + bytes);
        let start = data - PAGES_HEADER - ws.len();
        // SAFETY: [start, data) lies in the mapping's first page (headers < 64 bytes), and
        // nothing else refers to the mapping while this thread writes it.
        let frame = unsafe {
            std::ptr::copy_nonoverlapping(ws.as_ptr(), self.buf.ptr.add(start), ws.len());
            std::ptr::copy_nonoverlapping(mp.as_ptr(), self.buf.ptr.add(data - PAGES_HEADER), PAGES_HEADER);
            std::slice::from_raw_parts(self.buf.ptr.add(start), data + bytes - start)
        };
        send_all(self.s.sock.as_raw_fd(), frame)?;
        self.s.stats.pages.fetch_add(r.pages, Ordering::Relaxed);
        self.s.stats.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn flush_outbox(&mut self) -> SysResult<()> {
        loop {
            let Some((frame, token)) = self.s.outbox.lock().unwrap().pop_front() else { return Ok(()) };
            send_all(self.s.sock.as_raw_fd(), &frame)?;
            (self.emit)(Event::Sent(token));
        }
    }

    /// A close frame with `code` and `reason`: best effort, the connection ends either way.
    fn close_frame(&self, code: u16, reason: &str) {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(reason.as_bytes());
        let _ = self.write_frame(0x8, &body);
    }

    fn write_frame(&self, opcode: u8, payload: &[u8]) -> SysResult<()> {
        let mut f = ws_header(opcode, payload.len());
        f.extend_from_slice(payload);
        send_all(self.s.sock.as_raw_fd(), &f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_contain() {
        let r = LazyRanges::new(&[(7, 0x3000, 0x5000), (7, 0x1000, 0x3000), (8, 0x1000, 0x2000)]);
        assert!(r.contains(7, 0x1000, 0x4000));
        assert!(!r.contains(7, 0x1000, 0x5000));
        assert!(!r.contains(7, 0x0, 0x1000));
        assert!(!r.contains(9, 0x1000, 0x1000));
        assert!(!r.contains(7, 0x4000, 0));
        assert!(!r.contains(7, u64::MAX - 0xfff, 0x2000));
    }

    #[test]
    fn requests_decode_only_when_whole_and_in_range() {
        // [2, 1, 300, 0x7f0000000000, 512, 1]
        let mut b = vec![0x96, 2, 1, 0xcd, 0x01, 0x2c, 0xcf];
        b.extend_from_slice(&0x7f00_0000_0000u64.to_be_bytes());
        b.extend_from_slice(&[0xcd, 0x02, 0x00, 1]);
        let r = decode_request(&b).unwrap();
        assert_eq!((r.id, r.pid, r.address, r.pages), (1, 300, 0x7f00_0000_0000, 512));
        assert!(decode_request(&b[..b.len() - 1]).is_none());
        let mut extra = b.clone();
        extra.push(0);
        assert!(decode_request(&extra).is_none());
        let mut neg = b.clone();
        neg[2] = 0xff; // a negative fixint id
        assert!(decode_request(&neg).is_none());
        // The address as msgpackr writes a JS number above 2^32: a float64.
        let mut f = vec![0x96, 2, 1, 0xcd, 0x01, 0x2c, 0xcb];
        f.extend_from_slice(&(0x7f00_0000_0000u64 as f64).to_be_bytes());
        f.extend_from_slice(&[0xcd, 0x02, 0x00, 1]);
        assert_eq!(decode_request(&f).unwrap().address, 0x7f00_0000_0000);
        let at = f.len() - 12;
        f[at..at + 8].copy_from_slice(&0.5f64.to_be_bytes());
        assert!(decode_request(&f).is_none());
    }

    #[test]
    fn error_message_is_msgpack() {
        let m = error_message(5, "nope");
        assert_eq!(m, [0x93, 19, 0xcf, 0, 0, 0, 0, 0, 0, 0, 5, 0xa4, b'n', b'o', b'p', b'e']);
        assert_eq!(&error_message(1, &"x".repeat(40))[11..13], &[0xd9, 40]);
    }
}
