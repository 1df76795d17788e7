//! Random search with the GTN proxy: score many candidates for a few steps on the teacher's data,
//! train the best `top_k` on real data, and report the best by validation accuracy together with
//! its test accuracy. Both phases append to JSONL files in `out`, so an interrupted search resumes.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::Device;

use super::arch;
use super::jsonl::{self, Record, Shard};
use super::score::{self, Proxy, ScoreOptions};

#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Base options: `archs`, `proxy`, `steps`, `shard` and `out` are set per phase.
    pub base: ScoreOptions,
    pub teacher: PathBuf,
    pub budget: usize,
    pub top_k: usize,
    pub proxy_steps: usize,
    pub truth_steps: usize,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub candidates: usize,
    pub top_k: Vec<Record>,
    pub best: Record,
    /// Candidates scored and finalists trained by an earlier run into the same folder.
    pub scored_before: usize,
    pub trained_before: usize,
}

impl SearchReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{} scored on GTN data; top {} trained on real data for {}:\n\n\
             | rank | architecture | valid accuracy | test accuracy |\n|---|---|---|---|\n",
            crate::text::count(self.candidates, "candidate"),
            self.top_k.len(),
            crate::text::count(self.best.steps, "step")
        );
        for (k, r) in self.top_k.iter().enumerate() {
            s += &format!(
                "| {} | `{}` | {:.2}% | {:.2}% |\n",
                k + 1,
                r.arch,
                100.0 * r.valid_accuracy,
                100.0 * r.test_accuracy
            );
        }
        s + &format!("\nbest: `{}`, test accuracy {:.2}%\n", self.best.arch, 100.0 * self.best.test_accuracy)
    }
}

/// The results files a search writes in its folder: every candidate's proxy score, and the
/// finalists' real-data training.
pub const PROXY_FILE: &str = "proxy.jsonl";
pub const TRUTH_FILE: &str = "truth.jsonl";

pub fn search(opts: &SearchOptions, device: Device, mut progress: impl FnMut(&str, &Record)) -> Result<SearchReport> {
    if opts.budget == 0 || opts.top_k == 0 {
        bail!("--budget {} --top-k {}: expected both positive", opts.budget, opts.top_k);
    }
    // Its two results files would land among a run's own, as if they were the run's.
    crate::config::check_not_a_file(&opts.out, "--out")?;
    if crate::checkpoint::holds_run(&opts.out) || opts.out.join(crate::checkpoint::CONFIG_FILE).exists() {
        bail!(
            "--out {}: holds a training run; expected a `gtn nas search` folder, new or one it wrote",
            opts.out.display()
        );
    }
    if opts.budget as u64 > arch::MAX_SAMPLE {
        bail!("--budget {}: expected at most {}", opts.budget, arch::MAX_SAMPLE);
    }
    let teacher = crate::checkpoint::read_config(&opts.teacher)?;
    let t = teacher.inner_steps;
    // The finalists train on `--dataset`: the candidates were ranked on the teacher's.
    if opts.base.dataset != teacher.dataset {
        bail!(
            "--dataset {}: the teacher in {} was meta-trained on {}; expected `--dataset {}`, or none, as the finalists train on it",
            opts.base.dataset.as_str(),
            opts.teacher.display(),
            teacher.dataset.as_str(),
            teacher.dataset.as_str()
        );
    }
    if opts.proxy_steps == 0 || opts.proxy_steps > t {
        bail!(
            "--proxy-steps {}: the teacher in {} was trained for {t} inner steps; expected 1..={t}",
            opts.proxy_steps,
            opts.teacher.display()
        );
    }
    if opts.truth_steps == 0 {
        bail!("--truth-steps 0: expected at least 1");
    }
    let sample = arch::sample_distinct(opts.budget, opts.base.seed);
    let proxy_out = opts.out.join(PROXY_FILE);
    let phase1 = ScoreOptions {
        archs: sample.clone(),
        proxy: Proxy::Gtn(opts.teacher.clone()),
        steps: vec![opts.proxy_steps],
        shard: Shard::ALL,
        only: None,
        out: proxy_out.clone(),
        // --valid-size is the finalists' (below): the candidates rank on the teacher's own split.
        valid_size: None,
        ..opts.base.clone()
    };
    // Its records' label: a --teacher spelled otherwise than when the search began takes the
    // file's spelling.
    let proxy_phase = score::score(&phase1, device, |r| progress("proxy", r))?;
    let label = proxy_phase.label;
    let mut scored: Vec<Record> =
        jsonl::read(&proxy_out)?.into_iter().filter(|r| r.proxy == label && r.steps == opts.proxy_steps).collect();
    let position: HashMap<String, usize> = sample.iter().enumerate().map(|(k, c)| (c.to_string(), k)).collect();
    scored.retain(|r| position.contains_key(&r.arch));
    scored.sort_by(|a, b| b.valid_accuracy.total_cmp(&a.valid_accuracy).then(a.index.cmp(&b.index)));
    scored.truncate(opts.top_k);
    let finalists: Vec<String> = scored.into_iter().map(|r| r.arch).collect();
    let truth_out = opts.out.join(TRUTH_FILE);
    let phase2 = ScoreOptions {
        archs: sample.clone(),
        proxy: Proxy::Real,
        steps: vec![opts.truth_steps],
        shard: Shard::ALL,
        only: Some(finalists.iter().map(|arch| position[arch]).collect()),
        out: truth_out.clone(),
        // The folder the candidates were ranked on, the teacher's, unless --data-dir names one
        // (of the same sizes: the proxy phase checked), with the teacher's validation size unless
        // --valid-size gives one (a teacher of a slice holds out fewer than the dataset's
        // standard split, which the slice may not hold).
        data_dir: Some(opts.base.data_dir.clone().unwrap_or_else(|| teacher.data_dir())),
        valid_size: opts.base.valid_size.or(Some(teacher.valid_size)),
        ..opts.base.clone()
    };
    let truth_phase = score::score(&phase2, device, |r| progress("truth", r))?;
    let truth = jsonl::read(&truth_out)?;
    let mut top_k: Vec<Record> = finalists
        .iter()
        .filter_map(|arch| truth.iter().find(|r| &r.arch == arch && r.steps == opts.truth_steps && r.proxy == "real"))
        .cloned()
        .collect();
    top_k.sort_by(|a, b| b.valid_accuracy.total_cmp(&a.valid_accuracy));
    let best = top_k.first().cloned().expect("every finalist was trained");
    Ok(SearchReport {
        candidates: sample.len(),
        top_k,
        best,
        scored_before: proxy_phase.skipped,
        trained_before: truth_phase.skipped,
    })
}
