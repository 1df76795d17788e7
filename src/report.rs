//! What a user looks at or takes away: sample grids and the exported teaching set.

use std::path::Path;

use anyhow::{Context, Result};
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use crate::teacher::Teacher;

/// The whole teaching set in curriculum order: images `[T, B, C, H, W]`, labels `[T, B]` (or
/// soft labels `[T, B, classes]`), and the learned per-step learning rate and momentum `[T]`.
pub fn teaching_set(teacher: &Teacher) -> (Tensor, Tensor, Tensor, Tensor) {
    tch::no_grad(|| {
        let device = teacher.log_lr.device();
        let plan = teacher.curriculum.plan(&mut rand::rngs::StdRng::seed_from_u64(0), device);
        let (images, targets): (Vec<Tensor>, Vec<Tensor>) = teacher.synthesize_steps(&plan).into_iter().unzip();
        (Tensor::stack(&images, 0), Tensor::stack(&targets, 0), teacher.log_lr.exp(), teacher.log_momentum.exp())
    })
}

/// Where an exported teaching set came from, kept in its file's metadata (key [`EXPORT_METADATA`],
/// a JSON object with the teacher's config too): the set alone says what it is and how to use
/// it (its dataset, `bn_eval`), and which checkpoint made it.
#[derive(Debug, Clone)]
pub struct ExportSource {
    /// The run folder as given (displayed: a path need not be UTF-8, JSON must).
    pub run: String,
    pub meta_iteration: usize,
    pub checkpoint_sha256: String,
}

/// The exported file's one metadata key.
pub const EXPORT_METADATA: &str = "gtn";

/// Writes the teaching set (see [`teaching_set`]) and the dataset's normalisation to `output`.
pub fn export_teaching_set(teacher: &Teacher, source: &ExportSource, output: &Path) -> Result<()> {
    let (images, labels, lr, momentum) = teaching_set(teacher);
    let (mean, std) = teacher.config.dataset.mean_std();
    let tensors = [
        ("images", images),
        ("labels", labels),
        ("lr", lr),
        ("momentum", momentum),
        ("normalisation_mean", Tensor::from_slice(mean).to_kind(Kind::Float)),
        ("normalisation_std", Tensor::from_slice(std).to_kind(Kind::Float)),
    ];
    // Without one session's settings, as its checkpoint stores it (a teacher's config does not
    // depend on where its data lies or how its unroll is computed), and without the
    // `checkpoint_every = 0` that stands for them there, which would read as the run's.
    let mut config = serde_json::to_value(teacher.config.without_session_settings())?;
    if let Some(keys) = config.as_object_mut() {
        keys.remove("checkpoint_every");
    }
    let metadata = serde_json::json!({
        "run": source.run,
        "meta_iteration": source.meta_iteration,
        "checkpoint_sha256": source.checkpoint_sha256,
        "config": config,
    });
    crate::checkpoint::write_tensors_with(output, &tensors, (EXPORT_METADATA, &metadata.to_string())).map(|_| ())
}

/// A PNG grid: one row per inner step, the first `per_step` images of its batch (all of a
/// smaller one), 1 px gaps. Returns its rows and columns.
pub fn write_sample_grid(teacher: &Teacher, per_step: i64, output: &Path) -> Result<(i64, i64)> {
    let (images, _, _, _) = teaching_set(teacher);
    let [t, b, c, h, w] = images.size()[..] else { unreachable!("teaching set images are 5-d") };
    let cols = per_step.min(b);
    let shown = images.narrow(1, 0, cols).reshape([t * cols, c, h, w]);
    // [T*cols, C, H, W] -> [T*cols, H, W, 3]: greyscale repeats its one channel.
    let pixels = teacher.config.dataset.denormalise(&shown).expand([t * cols, 3, h, w], false).permute([0, 2, 3, 1]);
    let pixels = Vec::<u8>::try_from(pixels.to_kind(Kind::Uint8).to_device(Device::Cpu).contiguous().flatten(0, -1))?;
    let (width, height) = ((cols * (w + 1) + 1) as u32, (t * (h + 1) + 1) as u32);
    let mut grid = image::RgbImage::from_pixel(width, height, image::Rgb([128, 128, 128]));
    for (k, rgb) in pixels.chunks_exact(3).enumerate() {
        let k = k as i64;
        let (img, y, x) = (k / (h * w), k / w % h, k % w);
        let (row, col) = (img / cols, img % cols);
        grid.put_pixel(
            (col * (w + 1) + 1 + x) as u32,
            (row * (h + 1) + 1 + y) as u32,
            image::Rgb([rgb[0], rgb[1], rgb[2]]),
        );
    }
    // Greyscale datasets get a greyscale PNG (a third of the size).
    let grid = match c {
        1 => image::DynamicImage::ImageRgb8(grid).into_luma8().into(),
        _ => image::DynamicImage::ImageRgb8(grid),
    };
    crate::atomic::replace_with(output, |tmp| {
        grid.save_with_format(tmp, image::ImageFormat::Png)
            .with_context(|| format!("{}: cannot write", output.display()))
    })?;
    Ok((t, cols))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;

    use super::*;
    use crate::config::Config;
    use crate::inner::{self, LearnerState};
    use crate::learner::{Arch, Learner};

    /// What a user of the exported file does (one SGD-with-momentum step per batch, at its lr
    /// and momentum) ends where the teacher's own training of the same learner ends.
    #[test]
    fn an_exported_teaching_set_trains_a_learner_as_the_teacher_does() {
        for soft_labels in [false, true] {
            let config = Config { soft_labels, ..Config::tiny() };
            let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(3), Device::Cpu).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("set.safetensors");
            let source = ExportSource { run: "runs/t".into(), meta_iteration: 9, checkpoint_sha256: "ab".into() };
            export_teaching_set(&teacher, &source, &path).unwrap();
            let set: HashMap<String, Tensor> = Tensor::read_safetensors(&path).unwrap().into_iter().collect();
            let bytes = std::fs::read(&path).unwrap();
            let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            let metadata: serde_json::Value =
                serde_json::from_str(&header.metadata().as_ref().unwrap()[EXPORT_METADATA]).unwrap();
            assert_eq!((&metadata["run"], &metadata["meta_iteration"]), (&"runs/t".into(), &9.into()));
            assert_eq!(
                (&metadata["config"]["dataset"], &metadata["config"]["bn_eval"]),
                (&"mnist".into(), &"batch".into())
            );
            let keys = metadata["config"].as_object().unwrap();
            assert!(!keys.contains_key("checkpoint_every") && !keys.contains_key("data_dir"), "{keys:?}");

            let learner = Learner::new(Arch::Mlp { hidden1: 6, hidden2: 5 }, [1, 28, 28], 10).unwrap();
            let init = || LearnerState::new(learner.init(&mut StdRng::seed_from_u64(7), Device::Cpu));
            let steps = config.inner_steps;
            let plan = teacher.curriculum.plan(&mut StdRng::seed_from_u64(0), Device::Cpu);
            let taught = teacher.teach(&learner, init(), &plan, 0..steps, false, |_, _| {});
            let batch = |t: usize| (set["images"].get(t as i64), set["labels"].get(t as i64));
            let schedule = (&set["lr"], &set["momentum"]);
            let exported = inner::unroll(&learner, init(), schedule, 0..steps, false, batch, |_, _| {});
            assert_eq!(set["labels"].dim(), if soft_labels { 3 } else { 2 });
            for (a, b) in taught.params.iter().zip(&exported.params) {
                assert!(a.allclose(b, 1e-6, 1e-6, false), "soft labels {soft_labels}: the parameters differ");
            }
            let moved = taught.params.iter().zip(init().params).any(|(a, b)| !a.allclose(&b, 1e-3, 1e-3, false));
            assert!(moved, "the teaching set trains the learner");
        }
    }

    /// A teaching set put where a run's checkpoint belongs is named as what it is.
    #[test]
    fn a_teaching_set_is_not_read_as_a_checkpoint() {
        let config = Config::tiny();
        let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(3), Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = ExportSource { run: "runs/t".into(), meta_iteration: 0, checkpoint_sha256: "ab".into() };
        crate::checkpoint::write_config(dir.path(), &config).unwrap();
        export_teaching_set(&teacher, &source, &crate::checkpoint::checkpoint_path(dir.path())).unwrap();
        let err = crate::checkpoint::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("checkpoint.safetensors: is a teaching set `gtn export` wrote"), "{err}");
    }
}
