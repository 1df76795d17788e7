//! Meta-step benchmark: seconds per meta-iteration (median and spread after a warm-up), the split
//! between generator, unroll and meta-backward, peak memory, and achieved GFLOP/s against this
//! machine's own measured matrix-multiply rate.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::clock::timed;
use crate::config::Config;
use crate::learner::{Arch, BnEval, CIFAR_STRIDES};
use crate::meta::{self, Trainer};
use crate::profile::{self, OpTime};
use crate::teacher::TeacherKind;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// `cpu`, or `cuda:N`.
    pub device: String,
    pub threads: i32,
    pub dataset: String,
    pub teacher: String,
    pub learner: String,
    pub inner_steps: usize,
    pub batch_size: usize,
    pub curriculum: String,
    /// The unroll's checkpoint spacing: 0 where the whole unroll is kept (asked for as 0, or as
    /// a block no shorter than the unroll).
    pub checkpoint_every: usize,
    /// Real images in the meta-loss batch.
    pub meta_batch: usize,
    pub bn_eval: BnEval,
    /// Whether the learner's convolutions and the generator's widest layer took Winograd's
    /// forms (`--no-winograd`: libtorch's plain ones).
    pub winograd: bool,
    pub meta_iters: usize,
    pub seconds_per_meta_step_median: f64,
    pub seconds_per_meta_step_min: f64,
    pub seconds_per_meta_step_max: f64,
    /// Forward pass of the generator over all T batches, without a graph (measured on its own,
    /// on one more meta-iteration's draws).
    pub generator_forward_seconds: f64,
    /// Forward unroll including the generator, and the meta-backward (full unroll only; the same
    /// extra draws).
    pub unroll_forward_seconds: Option<f64>,
    pub meta_backward_seconds: Option<f64>,
    /// Peak resident memory over the timed meta-steps (data included; since the process
    /// started where the kernel cannot reset the peak, see `peak_since_start`).
    pub peak_rss_mib: f64,
    /// Whether `peak_rss_mib` is the whole process's peak, the kernel's counter not resettable.
    pub peak_since_start: bool,
    /// Resident memory before the first meta-step: libtorch, the data, the teacher.
    pub baseline_rss_mib: f64,
    /// Mean over the timed meta-steps' learners (random learners differ from step to step).
    pub estimated_gflop_per_meta_step: f64,
    /// All timed steps' estimated FLOPs over their total time (a mean rate, where the time
    /// column is a median).
    pub achieved_gflops: f64,
    pub matmul_gflops: f64,
    pub fraction_of_matmul_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileReport>,
}

/// One more meta-step under libtorch's profiler.
#[derive(Debug, Serialize)]
pub struct ProfileReport {
    /// The own times of all its ops together.
    pub op_seconds: f64,
    /// The costliest ops by own time, longest first.
    pub top_ops: Vec<OpTime>,
}

/// Ops listed in a report's profile.
const PROFILE_TOP: usize = 25;

impl BenchReport {
    pub fn table(&self) -> String {
        let opt = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let profile = self.profile.as_ref().map_or(String::new(), |p| {
            format!(
                "\n\nOne profiled meta-step ({:.2} s in ops), by own time:\n\n{}",
                p.op_seconds,
                profile::table(&p.top_ops, PROFILE_TOP, p.op_seconds)
            )
        });
        let summary = format!(
            "| configuration | s / meta-step (median, min-max) | generator fwd s (alone, no graph) | unroll fwd s (generator included) | meta-backward s | peak RSS MiB | GFLOP/s (est.) | matmul GFLOP/s | % of matmul |\n\
             |---|---|---|---|---|---|---|---|---|\n\
             | {} {} {} T={} B={} {} ckpt={} meta batch {}{}{} on {} ({}) | {:.2} ({:.2}-{:.2}) | {:.2} | {} | {} | {:.0}{} | {:.1} | {:.1} | {:.0}% |",
            self.dataset,
            self.teacher,
            self.learner,
            self.inner_steps,
            self.batch_size,
            self.curriculum,
            match self.checkpoint_every {
                0 => "off".to_owned(),
                k => k.to_string(),
            },
            self.meta_batch,
            if self.bn_eval == BnEval::Train { ", scored with training statistics" } else { "" },
            if self.winograd { "" } else { ", no Winograd" },
            self.device,
            crate::text::count(self.threads as usize, "thread"),
            self.seconds_per_meta_step_median,
            self.seconds_per_meta_step_min,
            self.seconds_per_meta_step_max,
            self.generator_forward_seconds,
            opt(self.unroll_forward_seconds),
            opt(self.meta_backward_seconds),
            self.peak_rss_mib,
            if self.peak_since_start { " (since start)" } else { "" },
            self.achieved_gflops,
            self.matmul_gflops,
            100.0 * self.fraction_of_matmul_rate
        );
        summary + &profile
    }
}

/// Resets the kernel's peak-RSS counter of this process (Linux >= 4.0), so a later
/// `peak_rss_mib` covers only what follows; false where it cannot (the peak is then since start).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident memory of this process now (VmRSS), in MiB.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A memory figure of /proc/self/status, in MiB (NaN where there is none).
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Float32 matrix-multiply rate of this machine (1024x1024 products on a CPU; 4096x4096 on a
/// GPU, where twenty 1024-products take about a millisecond and launches would dominate).
pub fn matmul_gflops(device: Device) -> f64 {
    let (n, reps) = if device.is_cuda() { (4096i64, 50) } else { (1024i64, 20) };
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let _ = a.matmul(&b).sum(Kind::Float).double_value(&[]);
    let start = Instant::now();
    let mut acc = Tensor::zeros([n, n], (Kind::Float, device));
    for _ in 0..reps {
        acc += a.matmul(&b);
    }
    let _ = acc.sum(Kind::Float).double_value(&[]);
    2.0 * (n * n * n) as f64 * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Forward multiply-add FLOPs of one inner step: (generator, learner).
pub fn forward_flops(config: &Config, arch: Arch) -> (f64, f64) {
    let ([c, h, w], classes) = config.dataset.shape();
    let b = config.batch_size as f64;
    let g = config.generator;
    let (noise, fc, c1, c2) = (g.noise_dim as f64, g.fc_width as f64, g.conv1_channels as f64, g.conv2_channels as f64);
    let (c, h, w, k) = (c as f64, h as f64, w as f64, classes as f64);
    let generator = match config.teacher {
        TeacherKind::Generator => {
            2.0 * b
                * ((noise + k) * fc
                    + fc * c1 * (h / 4.0) * (w / 4.0)
                    + (h / 2.0) * (w / 2.0) * c2 * c1 * 9.0
                    + h * w * c * c2 * 9.0)
        }
        TeacherKind::Pixels => 0.0,
    };
    let learner = match arch {
        Arch::Cnn { conv1, conv2, fc } => {
            let (c1, c2, fc) = (conv1 as f64, conv2 as f64, fc as f64);
            let flat = c2 * (h / 4.0).ceil() * (w / 4.0).ceil();
            2.0 * b * (h * w * c1 * c * 9.0 + (h / 2.0) * (w / 2.0) * c2 * c1 * 9.0 + flat * fc + fc * k)
        }
        Arch::CifarCnn { widths } => {
            let (mut side_h, mut side_w, mut c_in, mut macs) = (h, w, c, 0.0);
            for (width, stride) in widths.iter().zip(CIFAR_STRIDES) {
                (side_h, side_w) = ((side_h / stride as f64).ceil(), (side_w / stride as f64).ceil());
                macs += side_h * side_w * *width as f64 * c_in * 9.0;
                c_in = *width as f64;
            }
            2.0 * b * (macs + c_in * k)
        }
        Arch::Mlp { hidden1, hidden2 } => {
            let (h1, h2) = (hidden1 as f64, hidden2 as f64);
            2.0 * b * (c * h * w * h1 + h1 * h2 + h2 * k)
        }
        Arch::Nas { cell, net } => {
            let (image, classes) = config.dataset.shape();
            2.0 * b * crate::nas::network::specs(&cell, &net, image, classes).map_or(0.0, |(_, macs)| macs)
        }
    };
    (generator, learner)
}

/// Estimated FLOPs of one meta-step with learner `arch`. Generator: forward (1x) + backward
/// (2x). Learner: forward + inner gradient (3x), and the meta-backward through both (about 2x
/// that again). Left out: recomputation under gradient checkpointing, and the meta-loss's and
/// intermediate losses' forwards on real images.
fn meta_step_flops(config: &Config, arch: Arch) -> f64 {
    let (generator, learner) = forward_flops(config, arch);
    config.inner_steps as f64 * (3.0 * generator + 9.0 * learner)
}

/// Times `iters` meta-steps after one warm-up step, in a scratch folder, the learner's
/// convolutions in Winograd's forms or not; with `profile`, then runs one more under libtorch's
/// profiler and writes its Chrome trace there.
pub fn run(
    config: &Config,
    iters: usize,
    device: Device,
    winograd: bool,
    profile: Option<&Path>,
) -> Result<BenchReport> {
    if let Some(trace) = profile {
        // Before the timed steps, not after them.
        let folder = crate::atomic::check_folder_of(trace).map_err(|e| anyhow::anyhow!("--profile {e}"))?;
        tempfile::tempfile_in(folder).map_err(|e| {
            anyhow::anyhow!("--profile {}: cannot write in {} ({e})", trace.display(), folder.display())
        })?;
        if std::fs::metadata(trace).is_ok_and(|m| m.permissions().readonly()) {
            bail!("--profile {}: is read-only; expected a file gtn may replace", trace.display());
        }
    }
    crate::custom::set_winograd(winograd);
    let scratch = tempfile::tempdir()?;
    let mut trainer = Trainer::create(config, scratch.path(), device)?;
    let baseline_rss_mib = rss_mib();
    timed(device, || trainer.step()).0?;
    let peak_since_start = !reset_peak_rss();
    let mut flops = Vec::with_capacity(iters);
    let times: Vec<f64> = (0..iters)
        .map(|_| {
            flops.push(meta_step_flops(config, meta::iteration_arch(config, trainer.iteration)));
            let (step, seconds) = timed(device, || trainer.step());
            step.map(|_| seconds)
        })
        .collect::<Result<_>>()?;
    let median = crate::eval::median(&times);
    let peak_rss_mib = peak_rss_mib();
    // A profiler that fails costs the report its profile, not the timings measured; a
    // meta-step that fails (diverged) is an error, profiled or not.
    let profile = match profile.map(|trace| profile::record(trace, || trainer.step())) {
        Some(Ok((step, mut ops))) => {
            step?;
            let op_seconds = ops.iter().map(|o| o.self_seconds).sum();
            ops.truncate(PROFILE_TOP);
            Some(ProfileReport { op_seconds, top_ops: ops })
        }
        Some(Err(e)) => {
            tracing::warn!("--profile: {e:#}; the report goes without a profile");
            None
        }
        None => None,
    };

    // The split, measured on the next iteration's draws.
    let meta::IterationInputs { learner, init, real, plan } = trainer.iteration_inputs(trainer.iteration);
    let teacher = &trainer.teacher;
    let generator_forward_seconds = timed(device, || tch::no_grad(|| teacher.synthesize_steps(&plan))).1;
    let (unroll_forward_seconds, meta_backward_seconds) = if !config.checkpoints_unroll() {
        let ((loss, _), forward) = timed(device, || meta::meta_loss(teacher, &learner, init, &real, &plan));
        let backward = timed(device, || crate::nn::grads(&[loss], &teacher.params(), false, false)).1;
        (Some(forward), Some(backward))
    } else {
        (None, None)
    };

    let matmul = matmul_gflops(device);
    let achieved = flops.iter().sum::<f64>() / times.iter().sum::<f64>() / 1e9;
    Ok(BenchReport {
        device: crate::text::device(device),
        threads: tch::get_num_threads(),
        dataset: config.dataset.as_str().to_owned(),
        teacher: config.teacher.to_string(),
        learner: config.learner.to_string(),
        inner_steps: config.inner_steps,
        batch_size: config.batch_size,
        curriculum: config.curriculum.to_string(),
        checkpoint_every: if config.checkpoints_unroll() { config.checkpoint_every } else { 0 },
        meta_batch: config.meta_batch,
        bn_eval: config.bn_eval,
        winograd,
        meta_iters: iters,
        seconds_per_meta_step_median: median,
        seconds_per_meta_step_min: times.iter().copied().fold(f64::INFINITY, f64::min),
        seconds_per_meta_step_max: times.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        generator_forward_seconds,
        unroll_forward_seconds,
        meta_backward_seconds,
        peak_rss_mib,
        peak_since_start,
        baseline_rss_mib,
        estimated_gflop_per_meta_step: flops.iter().sum::<f64>() / iters as f64 / 1e9,
        achieved_gflops: achieved,
        matmul_gflops: matmul,
        fraction_of_matmul_rate: achieved / matmul,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_of_the_reference_design() {
        let config = Config::paper();
        let (g, l) = forward_flops(&config, Arch::Cnn { conv1: 64, conv2: 128, fc: 256 });
        // The figure: the generator is ~5.5 GFLOP per inner step of 128 images.
        assert!((5.0e9..6.0e9).contains(&g), "generator {g:e}");
        // conv2 of base_fc alone: 2 * 128 * 14*14 * 128*64*9.
        assert!(l > 2.0 * 128.0 * 196.0 * 128.0 * 64.0 * 9.0, "learner {l:e}");
    }

    /// A profile that fails (here: a path libtorch cannot take) costs the report its profile,
    /// not the timings measured before it.
    #[test]
    fn a_failed_profile_keeps_the_timings() {
        let config = Config { data_dir: Some(crate::data::fixture_dir()), ..Config::tiny() };
        let report = run(&config, 1, Device::Cpu, true, Some(Path::new("trace\0.json"))).unwrap();
        assert!(report.profile.is_none() && report.seconds_per_meta_step_median > 0.0);
    }

    #[test]
    fn peak_rss_is_read() {
        let mib = peak_rss_mib();
        assert!(mib > 1.0 && mib < 1e6, "{mib}");
    }
}
