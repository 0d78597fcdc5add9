//! userfaultfd UAPI (include/uapi/linux/userfaultfd.h as of Linux 6.18), defined here
//! because libc 0.2.139 has none of it and the installed headers (6.1) predate
//! WP_UNPOPULATED / POISON / WP_ASYNC / MOVE.
#![allow(dead_code)]

use super::ioc::{io, ior, iowr};

pub const UFFD_API: u64 = 0xAA;
/// Flag for userfaultfd(2) and USERFAULTFD_IOC_NEW: only faults from user mode are
/// handled, which is all lazymig needs and what an unprivileged caller may ask for.
pub const UFFD_USER_MODE_ONLY: i32 = 1;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// Feature bits, with the names the JS API uses. Order = bit number.
pub const FEATURES: &[(&str, u64)] = &[
    ("pagefaultFlagWp", 1 << 0),
    ("eventFork", 1 << 1),
    ("eventRemap", 1 << 2),
    ("eventRemove", 1 << 3),
    ("missingHugetlbfs", 1 << 4),
    ("missingShmem", 1 << 5),
    ("eventUnmap", 1 << 6),
    ("sigbus", 1 << 7),
    ("threadId", 1 << 8),
    ("minorHugetlbfs", 1 << 9),
    ("minorShmem", 1 << 10),
    ("exactAddress", 1 << 11),
    ("wpHugetlbfsShmem", 1 << 12),
    ("wpUnpopulated", 1 << 13),
    ("poison", 1 << 14),
    ("wpAsync", 1 << 15),
    ("move", 1 << 16),
];
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

const UFFDIO: u32 = 0xAA;
pub const _UFFDIO_REGISTER: u32 = 0x00;
pub const _UFFDIO_UNREGISTER: u32 = 0x01;
pub const _UFFDIO_WAKE: u32 = 0x02;
pub const _UFFDIO_COPY: u32 = 0x03;
pub const _UFFDIO_ZEROPAGE: u32 = 0x04;
pub const _UFFDIO_MOVE: u32 = 0x05;
pub const _UFFDIO_WRITEPROTECT: u32 = 0x06;
pub const _UFFDIO_CONTINUE: u32 = 0x07;
pub const _UFFDIO_POISON: u32 = 0x08;
pub const _UFFDIO_API: u32 = 0x3F;

/// ioctl bits reported by UFFDIO_API / UFFDIO_REGISTER, with their JS names.
pub const IOCTLS: &[(&str, u32)] = &[
    ("register", _UFFDIO_REGISTER),
    ("unregister", _UFFDIO_UNREGISTER),
    ("wake", _UFFDIO_WAKE),
    ("copy", _UFFDIO_COPY),
    ("zeropage", _UFFDIO_ZEROPAGE),
    ("move", _UFFDIO_MOVE),
    ("writeprotect", _UFFDIO_WRITEPROTECT),
    ("continue", _UFFDIO_CONTINUE),
    ("poison", _UFFDIO_POISON),
    ("api", _UFFDIO_API),
];

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Written by the kernel: bytes copied, or -errno when nothing was.
    pub copy: i64,
}

pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    /// Written by the kernel: bytes zero-mapped, or -errno when none were.
    pub zeropage: i64,
}

pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

pub const UFFDIO_API: u32 = iowr::<UffdioApi>(UFFDIO, _UFFDIO_API);
pub const UFFDIO_REGISTER: u32 = iowr::<UffdioRegister>(UFFDIO, _UFFDIO_REGISTER);
// The kernel defines these two as _IOR (see the header's comment): keep its numbers.
pub const UFFDIO_UNREGISTER: u32 = ior::<UffdioRange>(UFFDIO, _UFFDIO_UNREGISTER);
pub const UFFDIO_WAKE: u32 = ior::<UffdioRange>(UFFDIO, _UFFDIO_WAKE);
pub const UFFDIO_COPY: u32 = iowr::<UffdioCopy>(UFFDIO, _UFFDIO_COPY);
pub const UFFDIO_ZEROPAGE: u32 = iowr::<UffdioZeropage>(UFFDIO, _UFFDIO_ZEROPAGE);
pub const UFFDIO_WRITEPROTECT: u32 = iowr::<UffdioWriteprotect>(UFFDIO, _UFFDIO_WRITEPROTECT);
/// ioctl on /dev/userfaultfd returning a new uffd (Linux 6.1+).
pub const USERFAULTFD_IOC_NEW: u32 = io(UFFDIO, 0x00);

// Numbers as the C headers compute them: a wrong struct size would silently pick a
// different ioctl.
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_AA01);
const _: () = assert!(UFFDIO_WAKE == 0x8010_AA02);
const _: () = assert!(UFFDIO_COPY == 0xC028_AA03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xC020_AA04);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xC018_AA06);

/// `struct uffd_msg` is 32 packed bytes; fields are read at fixed offsets rather than
/// through a packed Rust struct (references to packed fields are UB-prone).
pub const UFFD_MSG_SIZE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdMsg {
    PageFault { flags: u64, address: u64, tid: u32 },
    Fork { child_fd: u32 },
    Remap { from: u64, to: u64, len: u64 },
    Remove { start: u64, end: u64 },
    Unmap { start: u64, end: u64 },
    Unknown { event: u8 },
}

impl UffdMsg {
    pub fn parse(m: &[u8; UFFD_MSG_SIZE]) -> UffdMsg {
        let u64_at = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
        match m[0] {
            UFFD_EVENT_PAGEFAULT => UffdMsg::PageFault { flags: u64_at(8), address: u64_at(16), tid: u32_at(24) },
            UFFD_EVENT_FORK => UffdMsg::Fork { child_fd: u32_at(8) },
            UFFD_EVENT_REMAP => UffdMsg::Remap { from: u64_at(8), to: u64_at(16), len: u64_at(24) },
            UFFD_EVENT_REMOVE => UffdMsg::Remove { start: u64_at(8), end: u64_at(16) },
            UFFD_EVENT_UNMAP => UffdMsg::Unmap { start: u64_at(8), end: u64_at(16) },
            event => UffdMsg::Unknown { event },
        }
    }
}

pub fn feature_names(bits: u64) -> Vec<&'static str> {
    FEATURES.iter().filter(|(_, b)| bits & b != 0).map(|(n, _)| *n).collect()
}

pub fn feature_bit(name: &str) -> Option<u64> {
    FEATURES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

pub fn ioctl_names(bits: u64) -> Vec<&'static str> {
    IOCTLS.iter().filter(|(_, nr)| bits & (1u64 << nr) != 0).map(|(n, _)| *n).collect()
}
