//! ptrace for a tracer living on the JS main thread: seize/interrupt/resume, registers
//! (GPRs, xstate), signal mask, rseq configuration, bounded waits, and syscall injection.
//! Every call names the thread it was about in its error.
//!
//! The kernel ties a tracee to the tracer *thread*: all calls must come from the thread
//! that seized (exports_ptrace.rs only calls these from the JS thread).

pub mod inject;
pub mod regs;
pub mod wait;

use crate::sys::{Subject, SysError, SysResult};
use regs::Regs;
use std::ffi::c_void;

pub const PTRACE_O_TRACESYSGOOD: u64 = 0x1;
pub const PTRACE_O_TRACEFORK: u64 = 0x2;
pub const PTRACE_O_TRACECLONE: u64 = 0x8;
pub const PTRACE_O_EXITKILL: u64 = 0x10_0000;

pub const PTRACE_EVENT_STOP: i32 = 128;

const PTRACE_CONT: u32 = 7;
const PTRACE_DETACH: u32 = 17;
const PTRACE_SYSCALL: u32 = 24;
const PTRACE_GETREGS: u32 = 12;
const PTRACE_SETREGS: u32 = 13;
const PTRACE_GETREGSET: u32 = 0x4204;
const PTRACE_SETREGSET: u32 = 0x4205;
const PTRACE_SEIZE: u32 = 0x4206;
const PTRACE_INTERRUPT: u32 = 0x4207;
const PTRACE_GETSIGINFO: u32 = 0x4202;
const PTRACE_GETSIGMASK: u32 = 0x420a;
const PTRACE_SETSIGMASK: u32 = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
const NT_X86_XSTATE: usize = 0x202;

/// Upper bound for the xstate buffer: the largest XSAVE area on current CPUs (AMX) is
/// ~11 KiB; the kernel writes what it has and shrinks iov_len to that.
const XSTATE_MAX: usize = 64 * 1024;

fn raw(req: u32, tid: i32, addr: usize, data: usize, op: &'static str) -> SysResult<libc::c_long> {
    // SAFETY: every caller passes addr/data as the kernel expects for `req` (pointers to
    // live, correctly sized buffers, or plain integers).
    let rc = unsafe { libc::ptrace(req as libc::c_uint, tid, addr as *mut c_void, data as *mut c_void) };
    if rc == -1 { Err(SysError::last(op).about(Subject::Tid(tid))) } else { Ok(rc) }
}

pub fn seize(tid: i32, exit_kill: bool, trace_clone: bool) -> SysResult<()> {
    let mut opts = PTRACE_O_TRACESYSGOOD;
    if exit_kill {
        opts |= PTRACE_O_EXITKILL;
    }
    if trace_clone {
        opts |= PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK;
    }
    raw(PTRACE_SEIZE, tid, 0, opts as usize, "PTRACE_SEIZE").map(|_| ())
}

pub fn interrupt(tid: i32) -> SysResult<()> {
    raw(PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT").map(|_| ())
}

pub fn cont(tid: i32, sig: i32) -> SysResult<()> {
    raw(PTRACE_CONT, tid, 0, sig as usize, "PTRACE_CONT").map(|_| ())
}

pub fn syscall(tid: i32, sig: i32) -> SysResult<()> {
    raw(PTRACE_SYSCALL, tid, 0, sig as usize, "PTRACE_SYSCALL").map(|_| ())
}

pub fn detach(tid: i32, sig: i32) -> SysResult<()> {
    raw(PTRACE_DETACH, tid, 0, sig as usize, "PTRACE_DETACH").map(|_| ())
}

pub fn get_regs(tid: i32) -> SysResult<Regs> {
    let mut r = Regs::default();
    raw(PTRACE_GETREGS, tid, 0, &mut r as *mut Regs as usize, "PTRACE_GETREGS")?;
    Ok(r)
}

pub fn set_regs(tid: i32, r: &Regs) -> SysResult<()> {
    raw(PTRACE_SETREGS, tid, 0, r as *const Regs as usize, "PTRACE_SETREGS").map(|_| ())
}

pub fn get_xstate(tid: i32) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    raw(PTRACE_GETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec as usize, "PTRACE_GETREGSET")
        .map_err(|e| e.because("NT_X86_XSTATE"))?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: i32, xs: &[u8]) -> SysResult<()> {
    // The kernel only reads through iov_base, but the struct wants a *mut.
    let mut iov = libc::iovec { iov_base: xs.as_ptr() as *mut c_void, iov_len: xs.len() };
    raw(PTRACE_SETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec as usize, "PTRACE_SETREGSET")
        .map_err(|e| e.because(format!("NT_X86_XSTATE, {} bytes", xs.len())))
        .map(|_| ())
}

pub fn get_sigmask(tid: i32) -> SysResult<u64> {
    let mut m: u64 = 0;
    raw(PTRACE_GETSIGMASK, tid, 8, &mut m as *mut u64 as usize, "PTRACE_GETSIGMASK")?;
    Ok(m)
}

pub fn set_sigmask(tid: i32, m: u64) -> SysResult<()> {
    raw(PTRACE_SETSIGMASK, tid, 8, &m as *const u64 as usize, "PTRACE_SETSIGMASK").map(|_| ())
}

/// struct ptrace_rseq_configuration (include/uapi/linux/ptrace.h).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct RseqConfig {
    pub ptr: u64,
    pub len: u32,
    pub sig: u32,
    pub flags: u32,
    pub pad: u32,
}

pub fn get_rseq_config(tid: i32) -> SysResult<Option<RseqConfig>> {
    let mut c = RseqConfig::default();
    raw(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RseqConfig>(),
        &mut c as *mut RseqConfig as usize,
        "PTRACE_GET_RSEQ_CONFIGURATION",
    )?;
    Ok(if c.ptr == 0 { None } else { Some(c) })
}

/// What PTRACE_GETSIGINFO says about the current stop.
pub fn get_siginfo(tid: i32) -> SysResult<libc::siginfo_t> {
    // SAFETY: siginfo_t is plain data.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    raw(PTRACE_GETSIGINFO, tid, 0, &mut si as *mut libc::siginfo_t as usize, "PTRACE_GETSIGINFO")?;
    Ok(si)
}
