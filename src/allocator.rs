//! The process-wide allocator: jemalloc, for Rust and (through symbol interposition) libtorch.
//!
//! libtorch's CPU tensors come from `posix_memalign`. glibc serves every block above its mmap
//! threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on free, so each batch's
//! activations ([1000, 64, 28, 28] floats in evaluation are 200 MB) were page-faulted in and
//! zeroed by the kernel again: about 400,000 faults per second, ~45% of evaluation's CPU time
//! was system time. jemalloc keeps freed pages and hands them back to the next tensor of that
//! size. With its default 10 s decay it still purged pages fast enough to fault more than glibc,
//! so dirty pages are never purged: the resident set stays at its peak, which is what a meta-step
//! needs again on the next step anyway.
//!
//! Kept pages only help if later allocations can reuse them. By default jemalloc splits a free
//! extent only for requests at least 1/64 of its size, and maps fresh memory for smaller ones:
//! with long unrolls the resident set then grew well past what was live (base_fc at T = 96: 11.0
//! GB resident for 6.6 GB live; at T = 128 13.7 GB, and each fresh page faulted in and zeroed).
//! Up to 1/1024 (`lg_extent_max_active_fit:10`): T = 96 7.5 GB, T = 128 9.4 GB and 20 s a
//! meta-step instead of 27 s; T = 32 unchanged (2.72 GB).

use tikv_jemallocator::Jemalloc;

#[global_allocator]
static GLOBAL: Jemalloc = Jemalloc;

/// Read by jemalloc at its first allocation (before `main`), hence a static, not a call.
#[allow(non_upper_case_globals)]
#[no_mangle]
static malloc_conf: Option<&'static u8> =
    Some(&b"dirty_decay_ms:-1,muzzy_decay_ms:-1,lg_extent_max_active_fit:10\0"[0]);

/// Bytes this thread has allocated and not yet freed (jemalloc's per-thread counters), to test
/// what a graph keeps alive.
#[cfg(test)]
pub(crate) fn live_bytes_on_this_thread() -> i64 {
    let allocated: u64 = tests::mallctl(c"thread.allocated");
    let deallocated: u64 = tests::mallctl(c"thread.deallocated");
    allocated as i64 - deallocated as i64
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_void, CStr};

    use tch::{Kind, Tensor};

    /// Reads a jemalloc control value of type `T`.
    pub(super) fn mallctl<T: Default>(name: &CStr) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` is a valid `T` of `len` bytes, the type the named control holds.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                &mut value as *mut T as *mut c_void,
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0, "mallctl {name:?} failed");
        value
    }

    #[test]
    fn libtorch_tensors_come_from_jemalloc() {
        let before: u64 = mallctl(c"thread.allocated");
        let t = Tensor::ones([16 << 20], (Kind::Float, tch::Device::Cpu));
        let after: u64 = mallctl(c"thread.allocated");
        assert!(
            after - before >= 64 << 20,
            "a 64 MiB tensor moved jemalloc's count by {} bytes: libtorch bypasses jemalloc",
            after - before
        );
        assert_eq!(t.sum(Kind::Float).double_value(&[]), (16 << 20) as f64);
    }

    #[test]
    fn freed_pages_are_kept_and_reused() {
        let decay: isize = mallctl(c"opt.dirty_decay_ms");
        assert_eq!(decay, -1);
        let fit: usize = mallctl(c"opt.lg_extent_max_active_fit");
        assert_eq!(fit, 10);
    }
}
