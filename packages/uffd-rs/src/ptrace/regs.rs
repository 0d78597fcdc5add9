//! x86-64 `struct user_regs_struct`, as an array in kernel order so it converts to and
//! from a JS object field by field with one name table.

/// Field names of `struct user_regs_struct` (arch/x86/include/asm/user_64.h), in order.
pub const REG_NAMES: [&std::ffi::CStr; 27] = [
    c"r15", c"r14", c"r13", c"r12", c"rbp", c"rbx", c"r11", c"r10", c"r9", c"r8", c"rax", c"rcx", c"rdx", c"rsi", c"rdi",
    c"orig_rax", c"rip", c"cs", c"eflags", c"rsp", c"ss", c"fs_base", c"gs_base", c"ds", c"es", c"fs", c"gs",
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs(pub [u64; 27]);

const _: () = assert!(std::mem::size_of::<Regs>() == std::mem::size_of::<libc::user_regs_struct>());

macro_rules! reg {
    ($get:ident, $set:ident, $i:expr) => {
        #[allow(dead_code)]
        pub fn $get(&self) -> u64 {
            self.0[$i]
        }
        #[allow(dead_code)]
        pub fn $set(&mut self, v: u64) {
            self.0[$i] = v;
        }
    };
}

impl Regs {
    reg!(rbx, set_rbx, 5);
    reg!(r10, set_r10, 7);
    reg!(r9, set_r9, 8);
    reg!(r8, set_r8, 9);
    reg!(rax, set_rax, 10);
    reg!(rdx, set_rdx, 12);
    reg!(rsi, set_rsi, 13);
    reg!(rdi, set_rdi, 14);
    reg!(orig_rax, set_orig_rax, 15);
    reg!(rip, set_rip, 16);
    reg!(rsp, set_rsp, 19);

    /// Syscall argument registers in ABI order: rdi rsi rdx r10 r8 r9.
    pub const ARG_INDEX: [usize; 6] = [14, 13, 12, 7, 9, 8];
}
