//! The binary's global allocator: glibc's malloc, or mimalloc for a
//! long-running server.
//!
//! Measured (BENCHMARKS.md, "Re-measured 2026-12-06"): mimalloc serves
//! `wasmlet serve` about a fifth more requests per second and takes 15% of
//! the instructions off an invocation, but as the allocator of a whole
//! process it makes every start slower (0.1-0.5 ms of CPU, about 110 more
//! page faults). A one-shot command, a sandbox worker or a compile child
//! pays a start for one invocation; a server pays it once. So the process
//! starts on glibc's malloc, and [`use_mimalloc`] (called first thing by
//! `serve`) sends every later allocation to mimalloc. Each block is freed
//! by the allocator that made it.
//!
//! Telling the two apart on every free: at the switch, one large range of
//! address space (reserved, not touched: [`ARENA_SIZE`]) is handed to
//! mimalloc as its first arena, so its blocks come from there until that
//! fills. A block inside the range is mimalloc's (two compares); any other
//! is looked up with `mi_is_in_heap_region`, as mimalloc's own `mi_cfree`
//! does (a walk of its arenas: measured about 50 instructions a free, 135
//! frees a `serve` request, 3% of its instructions).

use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// New allocations go to mimalloc. Set once, never cleared.
static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// The first arena's range, `[ARENA_START, ARENA_START + ARENA_LEN)`; empty
/// if it could not be reserved. Written once, before [`MIMALLOC`] is set.
static ARENA_START: AtomicUsize = AtomicUsize::new(0);
static ARENA_LEN: AtomicUsize = AtomicUsize::new(0);

/// Address space reserved for the first arena. Untouched pages cost
/// nothing; the mapping is `MAP_NORESERVE`, so it is not counted against
/// the commit limit under the kernel's default overcommit policy. A server
/// that outgrows it gets more arenas from mimalloc, found by the slow path.
pub const ARENA_SIZE: usize = 4 << 30;

/// mimalloc's segment alignment on 64-bit targets: an arena it manages
/// must start and end on it.
const SEGMENT_ALIGN: usize = 32 << 20;

/// Sends every allocation from now on to mimalloc.
pub fn use_mimalloc() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Some((start, len)) = reserve_arena() {
            ARENA_START.store(start, Ordering::Relaxed);
            ARENA_LEN.store(len, Ordering::Relaxed);
        }
        MIMALLOC.store(true, Ordering::Release);
    });
}

/// Maps [`ARENA_SIZE`] bytes and gives them to mimalloc as an arena;
/// `None` (and the slow path for every free) if either step fails.
fn reserve_arena() -> Option<(usize, usize)> {
    // SAFETY: a fresh anonymous mapping at an address the kernel picks
    // aliases nothing. It is never unmapped: mimalloc owns it for the life
    // of the process.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            ARENA_SIZE + SEGMENT_ALIGN,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }
    .ok()? as usize;
    let start = base.next_multiple_of(SEGMENT_ALIGN);
    let mut id: libmimalloc_sys::mi_arena_id_t = 0;
    // SAFETY: `[start, start + ARENA_SIZE)` lies inside the mapping above,
    // is readable, writable and zeroed, used by nothing else, and aligned
    // (start and size) as mimalloc requires.
    let ok = unsafe {
        libmimalloc_sys::mi_manage_os_memory_ex(
            start as *const _,
            ARENA_SIZE,
            true,
            false,
            true,
            -1,
            false,
            &mut id,
        )
    };
    ok.then_some((start, ARENA_SIZE))
}

/// glibc's malloc until [`use_mimalloc`], then mimalloc.
pub struct Switching;

/// Every mimalloc block is aligned to a word at least (its size classes
/// are whole words), so a layout asking no more takes mimalloc's plain
/// entry points: `mi_malloc_aligned`, which the `mimalloc` crate calls for
/// every layout, checks the alignment on each call and falls to its
/// generic path for blocks past 1 KiB (measured: about 20 instructions an
/// allocation, 3k a `serve` request).
const WORD: usize = std::mem::size_of::<usize>();

/// Whether `ptr` is a block of mimalloc's: only possible once the switch
/// was made. A thread freeing a block of mimalloc's got it, through some
/// synchronisation, from the thread that allocated it after seeing the
/// flag set, so its Acquire load sees the flag set too.
/// (The arena's range is written before that flag, so it is seen too.)
fn from_mimalloc(ptr: *mut u8) -> bool {
    if !MIMALLOC.load(Ordering::Acquire) {
        return false;
    }
    let offset = (ptr as usize).wrapping_sub(ARENA_START.load(Ordering::Relaxed));
    // SAFETY: mi_is_in_heap_region only looks the address up in
    // mimalloc's own arena list; any address may be passed.
    offset < ARENA_LEN.load(Ordering::Relaxed)
        || unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: every block is allocated by exactly one of two correct
// allocators and freed or resized by the same one (`from_mimalloc`);
// layouts are passed through unchanged.
unsafe impl GlobalAlloc for Switching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Acquire) {
            if layout.align() <= WORD {
                // SAFETY: mi_malloc returns a word-aligned block of at
                // least `size` bytes (or null), which is all `layout` asks.
                return unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() };
            }
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Acquire) {
            if layout.align() <= WORD {
                // SAFETY: as in `alloc`, zeroed.
                return unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() };
            }
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if from_mimalloc(ptr) {
            // SAFETY: mimalloc made this block, with this layout.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        } else {
            // SAFETY: glibc made this block, with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if from_mimalloc(ptr) {
            if layout.align() <= WORD {
                // SAFETY: mimalloc made this block; mi_realloc keeps (at
                // least) word alignment, all `layout` asks.
                return unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() };
            }
            // SAFETY: mimalloc made this block, with this layout.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: glibc made this block (it stays glibc's).
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}
