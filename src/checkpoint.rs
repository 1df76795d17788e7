//! Checkpoints: `config.toml` (the full config: written at the start, and again only when a
//! time budget lowers `meta_iters`) and `checkpoint.safetensors`
//! (teacher parameters, outer-optimiser state and the iteration count), each replaced
//! atomically so an interrupted write never destroys the last good one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, SeedableRng};
use serde::de::DeserializeOwned;
use tch::{Device, Kind, Tensor};

use crate::config::Config;
use crate::optim::Adam;
use crate::teacher::Teacher;

pub const CONFIG_FILE: &str = "config.toml";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The per-iteration CSV log of `gtn train` and `gtn rl train`.
pub const LOG_FILE: &str = "log.csv";

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// The sha256 of `dir`'s checkpoint file: what identifies a teacher beyond its config (two runs
/// of one config on other devices, builds or thread counts differ).
pub fn checkpoint_sha256(dir: &Path) -> Result<String> {
    let file = checkpoint_path(dir);
    let bytes = std::fs::read(&file).with_context(|| format!("{}: cannot read", file.display()))?;
    Ok(crate::data::fetch::sha256_hex(&bytes))
}

/// Whether `dir` holds a run to continue or keep: a checkpoint, or a log with rows (a run whose
/// checkpoint was lost). A config with at most a log header is what a start interrupted before
/// its first save leaves (starting writes them and saves at once): nothing to keep, so a new
/// start may replace it. An unreadable log counts as a run.
pub fn holds_run(dir: &Path) -> bool {
    checkpoint_path(dir).exists()
        || match std::fs::read_to_string(dir.join(LOG_FILE)) {
            Ok(text) => text.lines().nth(1).is_some(),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
}

/// Whether `dir` holds only what a start interrupted before its first save leaves: a config,
/// no run. `--resume` starts such a run again as it was configured.
pub fn never_saved(dir: &Path) -> bool {
    !holds_run(dir) && dir.join(CONFIG_FILE).is_file()
}

/// An exclusive lock on a run folder, held while a trainer writes it: a second process training
/// in the same folder would interleave its log rows and checkpoints with the first's. Released
/// when dropped, or when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _folder: std::fs::File,
}

/// Locks the run folder `dir`, which must exist, for this process.
pub fn lock_run(dir: &Path) -> Result<RunLock> {
    let folder = std::fs::File::open(dir)
        .with_context(|| format!("{}: cannot open; is it a gtn training folder?", dir.display()))?;
    let busy = "another gtn process is training in this folder; wait for it to end, or choose another --out";
    crate::atomic::lock_exclusive(&folder, dir, busy)?;
    Ok(RunLock { _folder: folder })
}

/// Refuses to start a run in `dir` over files it must not replace: another run's, or a
/// `config.toml` that is not a `C` (someone else's file). What a start interrupted before its
/// first save left (its own config, at most a log header) may be replaced.
pub fn check_startable<C: DeserializeOwned>(dir: &Path) -> Result<()> {
    if holds_run(dir) {
        bail!("{}: already holds a run's files; remove them or choose another --out", dir.display());
    }
    let path = dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("{}: cannot read ({e}); remove it or choose another --out", path.display()),
        Ok(text) => crate::config::parse_toml::<C>(&text).map(drop).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a config this command reads ({e}); remove it or choose another --out",
                path.display()
            )
        }),
    }
}

/// Refuses to write `output` (given as `-o`) over one of the run's own files in `dir`.
pub fn check_output_outside_run(dir: &Path, output: &Path) -> Result<()> {
    let folder = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let same_folder = matches!((dir.canonicalize(), folder.canonicalize()), (Ok(a), Ok(b)) if a == b);
    let own =
        output.file_name().and_then(|n| n.to_str()).filter(|n| [CONFIG_FILE, CHECKPOINT_FILE, LOG_FILE].contains(n));
    match own.filter(|_| same_folder) {
        Some(name) => bail!("-o {}: is the run's own {name}; choose another path", output.display()),
        None => Ok(()),
    }
}

/// Writes the config of a new run.
pub fn write_config(dir: &Path, config: &Config) -> Result<()> {
    crate::atomic::write(&dir.join(CONFIG_FILE), config.to_toml()?.as_bytes())
}

pub fn read_config(dir: &Path) -> Result<Config> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read; is {} a gtn training folder?", path.display(), dir.display()))?;
    Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn save(dir: &Path, teacher: &Teacher, adam: &Adam, iteration: usize) -> Result<()> {
    let named = teacher.named_params();
    let mut tensors = Vec::with_capacity(3 * named.len() + 2);
    for ((name, param), (m, v)) in named.into_iter().zip(adam.m.iter().zip(&adam.v)) {
        tensors.push((format!("adam.m.{name}"), m.shallow_clone()));
        tensors.push((format!("adam.v.{name}"), v.shallow_clone()));
        tensors.push((name, param));
    }
    tensors.push(("adam.steps".into(), Tensor::from_slice(&[adam.steps])));
    tensors.push(("iteration".into(), Tensor::from_slice(&[iteration as i64])));
    let tensors: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(n, t)| (n, t.detach().to_device(Device::Cpu))).collect();
    let path = checkpoint_path(dir);
    crate::atomic::replace_with(&path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).with_context(|| format!("{}: cannot write", path.display()))
    })
}

/// A loaded run: its teacher, outer-optimiser state and completed iterations.
#[derive(Debug)]
pub struct Checkpoint {
    pub teacher: Teacher,
    pub adam: Adam,
    pub iteration: usize,
    /// Of the bytes these were loaded from, read once: a run saving to the folder meanwhile cannot
    /// pair one save's weights with another save's hash.
    pub sha256: String,
}

/// Loads `dir`, checking that every tensor has the name and shape its config implies.
pub fn load(dir: &Path, device: Device) -> Result<Checkpoint> {
    let config = read_config(dir)?;
    let path = checkpoint_path(dir);
    if !path.is_file() {
        bail!("{}: missing; expected the checkpoint of the run in {}", path.display(), dir.display());
    }
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let corrupt =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: corrupt or not a safetensors file: {e}", path.display());
    let stored: HashMap<String, Tensor> = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(&e))?
        .tensors()
        .into_iter()
        .map(|(name, view)| Ok((name, Tensor::try_from(view).map_err(|e| corrupt(&e))?)))
        .collect::<Result<_>>()?;
    // Shapes come from a freshly built teacher; its random values are then overwritten.
    let teacher = Teacher::new(&config, &mut StdRng::seed_from_u64(0), device)?;
    let named = teacher.named_params();
    let take = |name: &str, shape: &[i64]| -> Result<Tensor> {
        let t = stored.get(name).with_context(|| {
            format!(
                "{}: tensor `{name}` missing; the checkpoint is from another architecture or config",
                path.display()
            )
        })?;
        let counter = name == "adam.steps" || name == "iteration";
        if t.size() != shape || (t.kind() != Kind::Float && !counter) {
            bail!(
                "{}: tensor `{name}` has shape {:?} ({:?}), the config in {} expects {shape:?} (Float); the checkpoint is from another architecture",
                path.display(),
                t.size(),
                t.kind(),
                CONFIG_FILE
            );
        }
        if !counter && !crate::nn::all_finite(t) {
            bail!(
                "{}: tensor `{name}` holds NaN or infinite values; the run diverged before this checkpoint was saved",
                path.display()
            );
        }
        Ok(t.to_device(device))
    };
    let mut m = Vec::new();
    let mut v = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, param) in &named {
            let mut p = param.shallow_clone();
            p.copy_(&take(name, &param.size())?);
            m.push(take(&format!("adam.m.{name}"), &param.size())?);
            v.push(take(&format!("adam.v.{name}"), &param.size())?);
        }
        Ok(())
    })?;
    let expected = 3 * named.len() + 2;
    if stored.len() != expected {
        bail!(
            "{}: {} tensors, the config expects {expected}; the checkpoint is from another config",
            path.display(),
            stored.len()
        );
    }
    let scalar = |name: &str| -> Result<i64> { Ok(take(name, &[1])?.to_kind(Kind::Int64).int64_value(&[0])) };
    let (steps, iteration) = (scalar("adam.steps")?, scalar("iteration")?);
    if iteration < 0 || iteration as usize > config.meta_iters || steps != iteration {
        bail!(
            "{}: iteration {iteration} with {steps} optimiser steps is inconsistent with meta_iters = {} in {CONFIG_FILE}; the checkpoint is corrupt or from another run",
            path.display(),
            config.meta_iters
        );
    }
    let adam = Adam { m, v, steps, ..Adam::new(&[], config.adam_beta1, config.adam_beta2) };
    Ok(Checkpoint { teacher, adam, iteration: iteration as usize, sha256: crate::data::fetch::sha256_hex(&bytes) })
}
