//! Bounded waits for ptrace stops. waitpid(2) has no timeout and ptrace stops do not make a
//! pidfd readable, so: WNOHANG polls, first yielding the CPU for a short while (an injected
//! syscall round trip is ~10-60 us, and a sleeping tracer would add a wake-up to each),
//! then sleeping with exponential backoff up to 2 ms. CPU use stays small for long waits,
//! and no wait outlives its deadline by more than one sleep step.

use super::PTRACE_EVENT_STOP;
use crate::sys::{Subject, SysError, SysResult};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopState {
    /// Signal-delivery stop (event 0), PTRACE_EVENT_* stop, or group-stop (SEIZE reports
    /// group-stops as PTRACE_EVENT_STOP with the stopping signal).
    Stopped { signal: i32, event: i32, group_stop: bool },
    /// Syscall-enter or -exit stop (PTRACE_O_TRACESYSGOOD: WSTOPSIG = SIGTRAP | 0x80).
    Syscall { signal: i32 },
    Exited { code: i32 },
    Killed { signal: i32 },
}

const SPIN: Duration = Duration::from_micros(300);
const FIRST_SLEEP: Duration = Duration::from_micros(50);
const MAX_SLEEP: Duration = Duration::from_millis(2);
/// Short sleeps for this long: an injected syscall on a busy machine can wait a few ms for
/// a CPU, and a stop noticed up to 2 ms late (the longest sleep) was most of that in a
/// restore's downtime. Waits longer than this are blocked syscalls: back off.
const SHORT_SLEEPS_FOR: Duration = Duration::from_millis(20);

pub fn decode(status: i32) -> StopState {
    if libc::WIFEXITED(status) {
        return StopState::Exited { code: libc::WEXITSTATUS(status) };
    }
    if libc::WIFSIGNALED(status) {
        return StopState::Killed { signal: libc::WTERMSIG(status) };
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xff;
    if sig == (libc::SIGTRAP | 0x80) {
        return StopState::Syscall { signal: libc::SIGTRAP };
    }
    let group_stop = event == PTRACE_EVENT_STOP && matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
    StopState::Stopped { signal: sig, event, group_stop }
}

/// Polls once: Some(state) when `tid` has a state change to report.
pub fn poll(tid: i32) -> SysResult<Option<StopState>> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if rc == tid {
            return Ok(Some(decode(status)));
        }
        if rc == 0 {
            return Ok(None);
        }
        let e = SysError::last("waitpid").about(Subject::Tid(tid));
        if e.errno == libc::EINTR {
            continue;
        }
        return Err(if e.errno == libc::ECHILD { e.because("not a child or tracee of this thread") } else { e });
    }
}

/// waitpid(tid, __WALL) bounded by `timeout`: ETIMEDOUT naming the tid when nothing came.
pub fn wait_stop(tid: i32, timeout: Duration) -> SysResult<StopState> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut sleep = FIRST_SLEEP;
    loop {
        if let Some(s) = poll(tid)? {
            return Ok(s);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(SysError::new("waitpid", libc::ETIMEDOUT).about(Subject::Tid(tid))
                .because(format!("no ptrace stop within {} ms", timeout.as_millis())));
        }
        if now - start < SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(sleep.min(deadline - now));
            if now - start >= SHORT_SLEEPS_FOR {
                sleep = (sleep * 2).min(MAX_SLEEP);
            }
        }
    }
}
