//! Syscall injection into a ptrace-stopped thread through a `syscall` instruction (0f 05)
//! that already exists in the target: set rip to it, run to the syscall-enter stop, then to
//! the syscall-exit stop, read rax. The thread never executes past the instruction, so the
//! target's memory is never written (a poked gadget would COW a text page, see
//! KERNEL-NOTES). orig_rax = -1 keeps the kernel's restart logic away from our registers.

use crate::sys::{Subject, SysError, SysResult};
use super::regs::Regs;
use super::wait::{StopState, wait_stop};
use super::{PTRACE_EVENT_STOP, get_regs, get_siginfo, interrupt, set_regs, syscall};
use std::time::{Duration, Instant};

/// Code that runs a list of syscalls in one stop-to-stop trip, for targets that have it
/// written somewhere executable (restore's control area). rbx points at the list: entries of
/// 8 words `[nr, a1..a6, go_on]`, ended by nr = -1. Each syscall's return value replaces
/// `go_on` in its entry; after a failure (-4095..-1) the list stops unless go_on was non-zero.
/// It ends on an int3 with rbx just past the last entry it ran. It touches no stack and no
/// register the caller relies on (the injector puts every register back).
///
///   0: mov rax,[rbx]; cmp rax,-1; je 3c; mov rdi,[rbx+8]; mov rsi,[rbx+16]; mov rdx,[rbx+24]
///      mov r10,[rbx+32]; mov r8,[rbx+40]; mov r9,[rbx+48]; syscall; mov rcx,[rbx+56]
///      mov [rbx+56],rax; add rbx,64; test rcx,rcx; jne 0; cmp rax,-4095; jb 0
///  3c: int3
pub const SYSCALL_RUNNER: [u8; 61] = [
    0x48, 0x8b, 0x03, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x33, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53,
    0x18, 0x4c, 0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30, 0x0f, 0x05, 0x48, 0x8b, 0x4b, 0x38, 0x48,
    0x89, 0x43, 0x38, 0x48, 0x83, 0xc3, 0x40, 0x48, 0x85, 0xc9, 0x75, 0xcc, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x72, 0xc4,
    0xcc,
];

/// One entry of a SYSCALL_RUNNER list: syscall number, six arguments, and whether the list
/// goes on when it fails.
#[derive(Clone, Copy, Debug)]
pub struct ListedCall {
    pub nr: u64,
    pub args: [u64; 6],
    pub go_on: bool,
}

/// -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK: kernel-internal
/// returns that mean "a signal interrupted this syscall, run it again".
pub fn is_restart_code(rax: u64) -> bool {
    matches!(rax as i64, -512 | -513 | -514 | -516)
}

/// Syscalls that overwrite the thread's restart block (current->restart_block): nanosleep and
/// clock_nanosleep at every entry; futex, poll, ppoll, restart_syscall and rt_sigreturn
/// when interrupted or always. After one of them, a frozen -ERESTART_RESTARTBLOCK can no
/// longer go through restart_syscall (it would run *our* restart, or fail with EINTR).
const CLOBBER_RESTART_BLOCK: [u64; 7] = [35, 230, 202, 7, 271, 219, 15];

/// How often one call re-runs its syscall after a signal interrupted it before giving up.
const MAX_RERUNS: u32 = 16;
/// How long a thread that timed out inside an injected syscall gets to leave it after
/// PTRACE_INTERRUPT.
const RECOVER: Duration = Duration::from_millis(1000);

pub struct Injector {
    pub tid: i32,
    pub gadget: u64,
    pub saved: Regs,
    pub count: u64,
    pub pending: Vec<i32>,
    pub timeout: Duration,
    /// Registers or the stop changed since construction (restore has work to do).
    moved: bool,
    /// The thread is inside an injected syscall we could not get it out of: unusable.
    broken: Option<String>,
    /// An injected syscall may have replaced the thread's restart block.
    restart_block_clobbered: bool,
    /// Left at a syscall-enter stop by a failed call: resuming would run that syscall.
    at_entry: bool,
    /// Where SYSCALL_RUNNER was found in the target (checked once).
    runner: Option<u64>,
}

impl Injector {
    pub fn new(tid: i32, gadget: u64, timeout: Duration) -> SysResult<Self> {
        let saved = get_regs(tid).map_err(|e| {
            if e.errno == libc::ESRCH { e.because("the thread is not a ptrace-stopped tracee of this thread") } else { e }
        })?;
        // Jumping to anything but `syscall` would run arbitrary target code: refuse.
        let mut insn = [0u8; 2];
        let read = crate::procmem::read_exact(tid, gadget, &mut insn).or_else(|_| {
            use std::os::unix::fs::FileExt;
            std::fs::File::open(format!("/proc/{tid}/mem"))
                .and_then(|f| f.read_exact_at(&mut insn, gadget))
                .map_err(|io| SysError::new("read gadget", io.raw_os_error().unwrap_or(libc::EFAULT)).about(Subject::Tid(tid)).at(gadget))
        });
        read?;
        if insn != [0x0f, 0x05] {
            return Err(SysError::new("SyscallInjector", libc::EINVAL).about(Subject::Tid(tid))
                .at(gadget)
                .because(format!("no `syscall` instruction (0f 05) at the gadget: found {:02x} {:02x}", insn[0], insn[1])));
        }
        let mut inj = Injector { tid, gadget, saved, count: 0, pending: Vec::new(), timeout, moved: false, broken: None, restart_block_clobbered: false, at_entry: false, runner: None };
        // At a signal-delivery stop the first resume (with signal 0) would discard the
        // signal: remember it like any signal that arrives during the calls.
        if let Ok(si) = get_siginfo(tid)
            && is_signal_delivery(&si)
        {
            inj.remember(si.si_signo);
        }
        Ok(inj)
    }

    fn remember(&mut self, sig: i32) {
        if sig > 0 && !self.pending.contains(&sig) {
            self.pending.push(sig);
        }
    }

    fn err(&self, errno: i32, detail: String) -> SysError {
        SysError::new("injected syscall", errno).about(Subject::Tid(self.tid)).because(detail)
    }

    /// Resumes with PTRACE_SYSCALL until the next syscall stop, absorbing signal-delivery
    /// stops (remembered, suppressed) and event stops (left behind by PTRACE_INTERRUPT).
    fn run_to_syscall_stop(&mut self, nr: u64, deadline: Instant, what: &str) -> SysResult<()> {
        syscall(self.tid, 0)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_stop(self.tid, left) {
                Ok(StopState::Syscall { .. }) => return Ok(()),
                Ok(StopState::Stopped { signal, event, .. }) => {
                    if event == 0 {
                        self.remember(signal);
                    }
                    syscall(self.tid, 0)?;
                }
                Ok(StopState::Exited { code }) => {
                    self.broken = Some(format!("thread exited with code {code}"));
                    return Err(self.err(libc::ESRCH, format!("thread exited (code {code}) at the {what} of syscall {nr}")));
                }
                Ok(StopState::Killed { signal }) => {
                    self.broken = Some(format!("thread killed by signal {signal}"));
                    return Err(self.err(libc::ESRCH, format!("thread killed by signal {signal} at the {what} of syscall {nr}")));
                }
                Err(e) if e.errno == libc::ETIMEDOUT => return Err(self.timed_out(nr, what)),
                Err(e) => return Err(e),
            }
        }
    }

    /// The syscall did not reach the stop in time (it blocks): PTRACE_INTERRUPT makes an
    /// interruptible sleep return, so the thread comes back to a syscall-exit stop and the
    /// injector stays usable; the call itself fails with ETIMEDOUT.
    fn timed_out(&mut self, nr: u64, what: &str) -> SysError {
        let msg = format!("syscall {nr} did not reach its {what} stop within {} ms", self.timeout.as_millis());
        let recovered = interrupt(self.tid).is_ok() && {
            let deadline = Instant::now() + RECOVER;
            let mut ok = false;
            while let Ok(s) = wait_stop(self.tid, deadline.saturating_duration_since(Instant::now())) {
                match s {
                    StopState::Syscall { .. } => {
                        ok = true;
                        break;
                    }
                    StopState::Stopped { signal, event, .. } => {
                        if event == 0 {
                            self.remember(signal);
                        }
                        if syscall(self.tid, 0).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            ok
        };
        if recovered {
            // Interrupted on its way to the entry stop, it is there now; from the exit wait,
            // it has left the syscall.
            self.at_entry = what == "entry";
        } else {
            self.broken = Some(format!("thread stuck in injected syscall {nr}"));
        }
        self.err(libc::ETIMEDOUT, if recovered { format!("{msg}; interrupted it") } else { format!("{msg}; the thread could not be stopped again") })
    }

    /// Stopped at a syscall entry (a call failed half-way): the kernel would run whatever
    /// orig_rax says on resume. orig_rax = -1 skips it; go on to its exit stop.
    fn leave_entry(&mut self) -> SysResult<()> {
        if self.at_entry {
            let mut r = get_regs(self.tid)?;
            r.set_orig_rax(u64::MAX);
            set_regs(self.tid, &r)?;
            let deadline = Instant::now() + self.timeout;
            self.run_to_syscall_stop(u64::MAX, deadline, "exit")?;
            self.at_entry = false;
        }
        Ok(())
    }

    /// Runs syscall `nr` with up to 6 arguments; returns the raw rax (negative errno on failure).
    pub fn call(&mut self, nr: u64, args: &[u64]) -> SysResult<i64> {
        if let Some(why) = &self.broken {
            return Err(self.err(libc::ESRCH, format!("injector unusable: {why}")));
        }
        let mut r = self.saved;
        r.set_rip(self.gadget);
        r.set_rax(nr);
        r.set_orig_rax(u64::MAX);
        for (i, &idx) in Regs::ARG_INDEX.iter().enumerate() {
            r.0[idx] = args.get(i).copied().unwrap_or(0);
        }
        self.leave_entry()?;
        if CLOBBER_RESTART_BLOCK.contains(&nr) {
            self.restart_block_clobbered = true;
        }
        let deadline = Instant::now() + self.timeout;
        for _ in 0..MAX_RERUNS {
            set_regs(self.tid, &r).map_err(|e| {
                if e.errno == libc::ESRCH { e.because("the thread is no longer a stopped tracee (running, exited or detached)") } else { e }
            })?;
            self.moved = true;
            self.run_to_syscall_stop(nr, deadline, "entry")?;
            self.at_entry = true;
            let at = get_regs(self.tid)?;
            if at.orig_rax() != nr || at.rip() != self.gadget.wrapping_add(2) {
                self.broken = Some("thread left the gadget".into());
                return Err(self.err(
                    libc::EFAULT,
                    format!(
                        "expected the entry of syscall {nr} at {:#x}, stopped with orig_rax {} at rip {:#x} (is {:#x} a `syscall` instruction?)",
                        self.gadget + 2,
                        at.orig_rax() as i64,
                        at.rip(),
                        self.gadget
                    ),
                ));
            }
            self.run_to_syscall_stop(nr, deadline, "exit")?;
            self.at_entry = false;
            let rax = get_regs(self.tid)?.rax();
            if is_restart_code(rax) {
                // A signal interrupted it; the next resume delivers (and we absorb) the
                // signal, then the syscall runs again from the start.
                continue;
            }
            self.count += 1;
            return Ok(rax as i64);
        }
        Err(self.err(libc::EINTR, format!("syscall {nr} kept being interrupted by signals ({MAX_RERUNS} tries)")))
    }

    /// Runs `calls` in one trip through SYSCALL_RUNNER at `runner` in the target, with the list
    /// written at `list` (8 words an entry, plus one for the end). Returns the raw return
    /// values of the calls that ran: fewer than `calls` when one failed without go_on (its
    /// value is the last). None of the calls may block, fork or clone (signals that arrive
    /// are remembered like in `call`; an interrupted syscall is restarted by the kernel).
    pub fn run_list(&mut self, runner: u64, list: u64, calls: &[ListedCall]) -> SysResult<Vec<i64>> {
        if let Some(why) = &self.broken {
            return Err(self.err(libc::ESRCH, format!("injector unusable: {why}")));
        }
        if self.runner != Some(runner) {
            // As with the gadget: never jump to code that is not ours.
            let mut code = [0u8; SYSCALL_RUNNER.len()];
            crate::procmem::read_exact(self.tid, runner, &mut code)?;
            if code != SYSCALL_RUNNER {
                return Err(self.err(libc::EINVAL, format!("no syscall runner at {runner:#x}")));
            }
            self.runner = Some(runner);
        }
        let mut words = Vec::with_capacity((calls.len() + 1) * 8);
        for c in calls {
            words.push(c.nr);
            words.extend_from_slice(&c.args);
            words.push(c.go_on as u64);
        }
        words.extend_from_slice(&[u64::MAX; 8]);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        crate::procmem::write_all(self.tid, list, &bytes)?;
        self.leave_entry()?;
        let mut r = self.saved;
        r.set_rip(runner);
        r.set_rbx(list);
        r.set_orig_rax(u64::MAX);
        set_regs(self.tid, &r)?;
        self.moved = true;
        let trap = runner + SYSCALL_RUNNER.len() as u64;
        let deadline = Instant::now() + self.timeout;
        super::cont(self.tid, 0)?;
        let end = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_stop(self.tid, left) {
                Ok(StopState::Stopped { signal, event, .. }) => {
                    if signal == libc::SIGTRAP && event == 0 {
                        let at = get_regs(self.tid)?;
                        if at.rip() == trap {
                            break at.rbx();
                        }
                    }
                    if event == 0 {
                        self.remember(signal);
                    }
                    super::cont(self.tid, 0)?;
                }
                Ok(StopState::Syscall { .. }) => super::cont(self.tid, 0)?,
                Ok(StopState::Exited { code }) => {
                    self.broken = Some(format!("thread exited with code {code}"));
                    return Err(self.err(libc::ESRCH, format!("thread exited (code {code}) running a list of {} syscalls", calls.len())));
                }
                Ok(StopState::Killed { signal }) => {
                    self.broken = Some(format!("thread killed by signal {signal}"));
                    return Err(self.err(libc::ESRCH, format!("thread killed by signal {signal} running a list of {} syscalls", calls.len())));
                }
                Err(e) if e.errno == libc::ETIMEDOUT => {
                    // Somewhere in the list, in a call that blocks: no way back to a known state.
                    let _ = interrupt(self.tid);
                    self.broken = Some("a listed syscall did not return".into());
                    return Err(self.err(libc::ETIMEDOUT, format!("a list of {} syscalls did not finish within {} ms", calls.len(), self.timeout.as_millis())));
                }
                Err(e) => return Err(e),
            }
        };
        let ran = (end.wrapping_sub(list) / 64) as usize;
        if end < list || ran > calls.len() || (end - list) % 64 != 0 {
            self.broken = Some("the syscall runner stopped at an unexpected place".into());
            return Err(self.err(libc::EFAULT, format!("the syscall runner stopped with rbx {end:#x} (list at {list:#x})")));
        }
        let mut back = vec![0u8; ran * 64];
        crate::procmem::read_exact(self.tid, list, &mut back)?;
        self.count += ran as u64;
        Ok((0..ran).map(|i| i64::from_ne_bytes(back[i * 64 + 56..i * 64 + 64].try_into().unwrap())).collect())
    }

    /// Puts the saved registers back; the thread stays stopped. When the thread had been
    /// stopped inside a syscall that must restart (rax = -ERESTART*), it is parked in a
    /// PTRACE_EVENT_STOP again, as after PTRACE_INTERRUPT: registers set at a syscall-exit
    /// stop get no restart fix-up, but leaving a PTRACE_EVENT_STOP runs the kernel's own.
    pub fn restore(&mut self) -> SysResult<()> {
        if !self.moved {
            return Ok(());
        }
        self.leave_entry()?;
        let in_syscall = self.saved.orig_rax() as i64 >= 0;
        if in_syscall && self.saved.rax() as i64 == -516 && self.restart_block_clobbered {
            // restart_syscall would find our restart block: re-run the frozen syscall with
            // its own arguments instead (rip back onto `syscall`, rax = its number), as
            // the kernel does for the other restart codes. A relative sleep starts over.
            let mut r = self.saved;
            r.set_rip(r.rip().wrapping_sub(2));
            r.set_rax(r.orig_rax());
            set_regs(self.tid, &r)?;
            self.moved = false;
            return Ok(());
        }
        set_regs(self.tid, &self.saved)?;
        if in_syscall && is_restart_code(self.saved.rax()) {
            interrupt(self.tid)?;
            super::cont(self.tid, 0)?;
            let deadline = Instant::now() + self.timeout.max(Duration::from_millis(1000));
            loop {
                match wait_stop(self.tid, deadline.saturating_duration_since(Instant::now()))? {
                    StopState::Stopped { event: PTRACE_EVENT_STOP, .. } => break,
                    StopState::Stopped { signal, .. } => {
                        self.remember(signal);
                        super::cont(self.tid, 0)?;
                    }
                    StopState::Syscall { .. } => super::cont(self.tid, 0)?,
                    StopState::Exited { code } => return Err(self.err(libc::ESRCH, format!("thread exited (code {code}) during restore"))),
                    StopState::Killed { signal } => return Err(self.err(libc::ESRCH, format!("thread killed by signal {signal} during restore"))),
                }
            }
            let now = get_regs(self.tid)?;
            if now != self.saved {
                set_regs(self.tid, &self.saved)?;
            }
        }
        self.moved = false;
        Ok(())
    }
}

/// A signal-delivery stop, as opposed to a syscall stop or a PTRACE_EVENT_* stop (whose
/// si_code is SIGTRAP|0x80, or signal | event << 8).
pub fn is_signal_delivery(si: &libc::siginfo_t) -> bool {
    let code = si.si_code;
    if si.si_signo == libc::SIGTRAP && code == (libc::SIGTRAP | 0x80) {
        return false;
    }
    !(code > 0 && (code >> 8) != 0 && (code & 0xff) == si.si_signo)
}
