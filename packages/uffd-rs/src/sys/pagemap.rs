//! PAGEMAP_SCAN (Linux 6.7+, include/uapi/linux/fs.h), defined here because the installed
//! headers and libc predate it.
#![allow(dead_code)]

use super::ioc::iowr;

/// Page categories, with their JS names. Order = bit number.
pub const CATEGORIES: &[(&str, u64)] = &[
    ("wpAllowed", 1 << 0),
    ("written", 1 << 1),
    ("file", 1 << 2),
    ("present", 1 << 3),
    ("swapped", 1 << 4),
    ("pfnZero", 1 << 5),
    ("huge", 1 << 6),
    ("softDirty", 1 << 7),
    ("guard", 1 << 8),
];
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const ALL_CATEGORIES: u64 = 0xff;

/// Write-protect the pages that matched (atomically with reporting them).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (EPERM) on a page without async write-protect instead of skipping it.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    /// Written by the kernel: where the walk stopped (== end when complete).
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

pub const PAGEMAP_SCAN: u32 = iowr::<PmScanArg>(b'f' as u32, 16);
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);
const _: () = assert!(PAGEMAP_SCAN == 0xC060_6610);

pub fn category_names(bits: u64) -> Vec<&'static str> {
    CATEGORIES.iter().filter(|(_, b)| bits & b != 0).map(|(n, _)| *n).collect()
}

pub fn category_bit(name: &str) -> Option<u64> {
    CATEGORIES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
