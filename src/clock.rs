//! Wall-clock timing of device work: CUDA runs kernels asynchronously, so a clock read without
//! waiting for the device times their launch, not their work.

use std::time::Instant;

use tch::Device;

/// Waits for the work queued on `device`.
pub fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Runs `f` and returns its result and its wall time, the device's queued work included.
pub fn timed<T>(device: Device, f: impl FnOnce() -> T) -> (T, f64) {
    synchronize(device);
    let start = Instant::now();
    let out = f();
    synchronize(device);
    (out, start.elapsed().as_secs_f64())
}
