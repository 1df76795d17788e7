//! How well a proxy ranks architectures: Spearman and Kendall correlation of proxy scores with the
//! true performance (all architectures and the top 50% by truth), the real-data step count that
//! matches the GTN proxy's correlation, a markdown table and a PNG plot. Beside them, what tells a
//! good proxy from a lucky one: how well its ranking repeats on other evaluation images, how much
//! of it is parameter count, and how well parameter count alone (no training) ranks the truth.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use super::jsonl::Record;
use super::stats::{kendall_tau_b, spearman};
use crate::plot::{Chart, Series};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `gtn:<dir>` or `real`.
    pub proxy: String,
    pub steps: usize,
    pub n: usize,
    pub spearman: f64,
    pub kendall: f64,
    pub n_top: usize,
    pub spearman_top: f64,
    pub kendall_top: f64,
    /// Spearman between the proxy's validation and test accuracies: how much of its ranking
    /// survives other evaluation images (low: evaluation noise limits it; raise --eval-images).
    pub spearman_valid_test: f64,
    /// Spearman between the proxy's scores and parameter counts: how much it ranks by size.
    pub spearman_params: f64,
    /// Mean training seconds per architecture on this proxy.
    pub seconds: f64,
    /// A GTN row's match among the real-data rows ([`steps_to_match`]): the real steps whose
    /// Spearman equals its own, over all architectures and over the top 50% (an upper bound
    /// where the fewest that rank already reach it); null where none does, and on other rows.
    pub real_steps_to_match: Option<f64>,
    pub real_steps_to_match_top: Option<f64>,
    /// Whether each is only an upper bound: the fewest real-data steps that rank already match.
    pub real_steps_to_match_at_most: bool,
    pub real_steps_to_match_top_at_most: bool,
    /// The architectures, sorted: correlations over different sets do not compare.
    #[serde(skip)]
    pub archs: Vec<String>,
}

/// The row of the zero-cost baseline: architectures ranked by parameter count, untrained.
pub const PARAMS: &str = "params (untrained)";

impl Row {
    pub fn is_gtn(&self) -> bool {
        self.proxy.starts_with("gtn:")
    }
}

/// Per architecture, its truth: the record at the file's largest step count, which every
/// architecture in the file must have (a truth ranked partly at 1,000 steps and partly at 300
/// would rank the step counts, not the architectures), measured with one setting, by one proxy
/// (`report` has refused GTN results as the truth already; this guards `correlations` alone).
fn truth_by_arch(truth: &[Record]) -> Result<HashMap<&str, &Record>> {
    let steps = truth.iter().map(|r| r.steps).max().unwrap_or(0);
    let mut by_arch: HashMap<&str, &Record> = HashMap::new();
    let records = || truth.iter().filter(|r| r.steps == steps);
    let first = records().next();
    for r in records() {
        if let Some(first) = first.filter(|f| f.proxy != r.proxy) {
            bail!(
                "the truth holds {} ({steps} steps) of {} and {} of {}; expected one proxy's results (a `gtn nas truth` file)",
                first.arch,
                first.proxy,
                r.arch,
                r.proxy
            );
        }
        // The first record of an architecture listed twice, as for the proxies.
        by_arch.entry(r.arch.as_str()).or_insert(r);
    }
    let mut short: Vec<&str> = truth.iter().map(|r| r.arch.as_str()).filter(|a| !by_arch.contains_key(a)).collect();
    short.sort_unstable();
    short.dedup();
    if let Some(first) = short.first() {
        let more = if short.len() > 1 { ", ..." } else { "" };
        bail!(
            "the truth has {} at {steps} steps and {} only at fewer ({first}{more}); finish them with the same `gtn nas truth` command, or give a truth of one step count",
            crate::text::count(by_arch.len(), "architecture"),
            short.len()
        );
    }
    one_setting("the truth", truth.iter().filter(|r| r.steps == steps))?;
    Ok(by_arch)
}

/// Refuses results of one proxy measured with different settings (shards run with other
/// flags, merged); files of older gtn versions recorded none.
fn one_setting<'a>(what: &str, records: impl IntoIterator<Item = &'a Record>) -> Result<()> {
    let mut first: Option<&Record> = None;
    for r in records.into_iter().filter(|r| !r.setting.is_empty()) {
        match first {
            None => first = Some(r),
            Some(f) if f.setting != r.setting => {
                let (first, this) = crate::nas::jsonl::measured_differently(f, r);
                bail!(
                    "{what}: its records of {} ({} steps) and of {} ({} steps) are measured differently ({first} vs {this}); expected one setting",
                    f.arch,
                    f.steps,
                    r.arch,
                    r.steps
                )
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// One architecture as a proxy measured it, beside its truth.
#[derive(Clone, Copy)]
struct Point<'a> {
    arch: &'a str,
    valid: f64,
    test: f64,
    params: f64,
    seconds: f64,
    truth: f64,
}

/// The correlations of one proxy and step count over its architectures.
fn row(proxy: String, steps: usize, mut points: Vec<Point>) -> Row {
    let column = |points: &[Point], f: fn(&Point) -> f64| points.iter().map(f).collect::<Vec<f64>>();
    let (valid, truth) = (column(&points, |p| p.valid), column(&points, |p| p.truth));
    let (test, params) = (column(&points, |p| p.test), column(&points, |p| p.params));
    let seconds = points.iter().map(|p| p.seconds).sum::<f64>() / points.len() as f64;
    let mut archs: Vec<String> = points.iter().map(|p| p.arch.to_owned()).collect();
    archs.sort_unstable();
    // Ties at the cut go by name, so the top half does not depend on the order of the files.
    points.sort_by(|a, b| b.truth.total_cmp(&a.truth).then_with(|| a.arch.cmp(b.arch)));
    let n_top = points.len().div_ceil(2);
    let (valid_top, truth_top) = (column(&points[..n_top], |p| p.valid), column(&points[..n_top], |p| p.truth));
    // Two points are ranked alike or opposite whatever they are: a correlation of fewer than
    // three says nothing, and is left out (n/a) rather than shown as a perfect 1 or -1.
    let informative = |x: &[f64], y: &[f64], f: fn(&[f64], &[f64]) -> f64| match x.len() {
        0..=2 => f64::NAN,
        _ => f(x, y),
    };
    Row {
        proxy,
        steps,
        n: valid.len(),
        spearman: informative(&valid, &truth, spearman),
        kendall: informative(&valid, &truth, kendall_tau_b),
        n_top,
        spearman_top: informative(&valid_top, &truth_top, spearman),
        kendall_top: informative(&valid_top, &truth_top, kendall_tau_b),
        spearman_valid_test: informative(&valid, &test, spearman),
        spearman_params: informative(&valid, &params, spearman),
        seconds,
        real_steps_to_match: None,
        real_steps_to_match_top: None,
        real_steps_to_match_at_most: false,
        real_steps_to_match_top_at_most: false,
        archs,
    }
}

/// One row per (proxy, step count), over the architectures both files have, ranked by
/// validation accuracy; last, the parameter-count baseline over each set of architectures they
/// rank (one set when every row ranks the same architectures).
pub fn correlations(proxy: &[Record], truth: &[Record]) -> Result<Vec<Row>> {
    if truth.is_empty() {
        bail!("the truth file has no records");
    }
    let truth = truth_by_arch(truth)?;
    let mut groups: BTreeMap<(String, usize), Vec<Point>> = BTreeMap::new();
    // A file given twice, or a shard beside the merged file, must not weigh an architecture
    // twice; a repeat measured differently is an error rather than a silent choice.
    let mut seen: HashMap<_, &Record> = HashMap::new();
    for r in proxy {
        if let Some(first) = seen.get(&r.key()) {
            if (&first.dataset, &first.net, &first.setting) != (&r.dataset, &r.net, &r.setting) {
                let (one, other) = crate::nas::jsonl::measured_differently(first, r);
                bail!(
                    "{} ({}, {} steps) is recorded twice, measured differently ({one} vs {other}); expected one",
                    r.arch,
                    r.proxy,
                    r.steps
                );
            }
            continue;
        }
        seen.insert(r.key(), r);
        if let Some(t) = truth.get(r.arch.as_str()) {
            let point = Point {
                arch: &r.arch,
                valid: r.valid_accuracy,
                test: r.test_accuracy,
                params: r.params as f64,
                seconds: r.seconds,
                truth: t.valid_accuracy,
            };
            groups.entry((r.proxy.clone(), r.steps)).or_default().push(point);
        }
    }
    if groups.is_empty() {
        bail!("no architecture is in both the proxy and the truth files");
    }
    let mut by_proxy: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in proxy {
        by_proxy.entry(r.proxy.as_str()).or_default().push(r);
    }
    for (label, records) in by_proxy {
        one_setting(label, records)?;
    }
    let mut rows: Vec<Row> = groups.into_iter().map(|((proxy, steps), points)| row(proxy, steps, points)).collect();
    // One baseline per set of architectures the rows rank (a shard still running leaves some
    // rows over fewer): correlations over different sets do not compare.
    let mut sets: Vec<Vec<String>> = Vec::new();
    for r in &rows {
        if !sets.contains(&r.archs) {
            sets.push(r.archs.clone());
        }
    }
    for set in sets {
        let by_size = set.iter().map(|arch| {
            let t = truth[arch.as_str()];
            let params = t.params as f64;
            Point { arch: &t.arch, valid: params, test: params, params, seconds: 0.0, truth: t.valid_accuracy }
        });
        rows.push(Row {
            spearman_valid_test: f64::NAN,
            spearman_params: f64::NAN,
            ..row(PARAMS.into(), 0, by_size.collect())
        });
    }
    Ok(rows)
}

/// Real-data steps needed to reach a GTN row's Spearman correlation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    pub gtn_proxy: String,
    pub gtn_steps: usize,
    /// `all` or `top 50%`.
    pub subset: &'static str,
    pub gtn_spearman: f64,
    /// Linearly interpolated between the real step counts measured on the same architectures;
    /// `None` when none of them reaches it, or there are none (`left_out` then says which
    /// were measured on others).
    pub real_steps: Option<f64>,
    /// The fewest real steps measured already reach it: `real_steps` is an upper bound.
    pub at_most: bool,
    /// Real step counts measured on the same architectures as the GTN row.
    pub compared: usize,
    /// Real step counts left out because they were measured on other architectures than the
    /// GTN row (e.g. a shard still running).
    pub left_out: Vec<usize>,
}

type Pick = fn(&Row) -> f64;

/// The architectures a correlation is taken over, and how to read it from a row.
const SUBSETS: [(&str, Pick); 2] = [("all", |r| r.spearman), ("top 50%", |r| r.spearman_top)];

pub fn steps_to_match(rows: &[Row]) -> Vec<Match> {
    let mut all_real: Vec<&Row> = rows.iter().filter(|r| r.proxy == "real").collect();
    all_real.sort_by_key(|r| r.steps);
    let mut out = Vec::new();
    for g in rows.iter().filter(|r| r.is_gtn()) {
        let (real, other): (Vec<&Row>, Vec<&Row>) = all_real.iter().partition(|r| r.archs == g.archs);
        let left_out: Vec<usize> = other.iter().map(|r| r.steps).collect();
        // NaN: the proxy scored every architecture alike; there is no ranking to match.
        for (subset, pick) in SUBSETS.into_iter().filter(|&(_, pick)| !pick(g).is_nan()) {
            let target = pick(g);
            let mut real_steps = None;
            let mut at_most = false;
            let mut prev: Option<(f64, f64)> = None;
            for r in &real {
                let (s, v) = (r.steps as f64, pick(r));
                // A real-data row that ranks nothing (n/a) says nothing of where the match lies.
                if v.is_nan() {
                    continue;
                }
                if v >= target {
                    // An upper bound only if nothing fewer was measured, here or on others.
                    at_most = prev.is_none() && left_out.iter().all(|&l| l > r.steps);
                    real_steps = Some(match prev {
                        Some((ps, pv)) if v > pv => ps + (s - ps) * (target - pv) / (v - pv),
                        _ => s,
                    });
                    break;
                }
                prev = Some((s, v));
            }
            out.push(Match {
                gtn_proxy: g.proxy.clone(),
                gtn_steps: g.steps,
                subset,
                gtn_spearman: target,
                real_steps,
                at_most,
                compared: real.len(),
                left_out: left_out.clone(),
            });
        }
    }
    out
}

fn fmt_corr(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.3}")
    }
}

pub fn markdown(rows: &[Row], matches: &[Match]) -> String {
    let mut s = String::from(
        "| proxy | steps | archs | Spearman | Kendall | top-50% archs | Spearman top 50% | Kendall top 50% | valid vs test | vs params | s/arch |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            r.proxy,
            r.steps,
            r.n,
            fmt_corr(r.spearman),
            fmt_corr(r.kendall),
            r.n_top,
            fmt_corr(r.spearman_top),
            fmt_corr(r.kendall_top),
            fmt_corr(r.spearman_valid_test),
            fmt_corr(r.spearman_params),
            r.seconds
        );
    }
    // The untrained row's own columns (valid vs test, vs params) are n/a by construction.
    let unexplained = |r: &Row| {
        let own = [r.spearman_valid_test, r.spearman_params].into_iter().filter(|_| r.proxy != PARAMS);
        [r.spearman, r.kendall, r.spearman_top, r.kendall_top].into_iter().chain(own).any(f64::is_nan)
    };
    if rows.iter().any(unexplained) {
        s += &format!("\nn/a: {NO_CORRELATION}.\n");
    }
    for m in matches {
        // A proxy the fewest real-data steps already reach (even one ranking backwards) is worth
        // at most those: it matches nothing measured.
        let real = match m.real_steps {
            Some(steps) if m.at_most => format!(
                "rank no better than {}, the fewest that rank",
                crate::text::count(steps as usize, "real-data step")
            ),
            Some(steps) => format!("match ≈ {steps:.0} real-data steps"),
            None if m.compared == 0 && m.left_out.is_empty() => {
                "match no real-data row: no real-data proxy was given (a `gtn nas score --proxy real` file as --proxy)"
                    .into()
            }
            None if m.compared == 0 => "match no real-data row: none was measured on the same architectures".into(),
            None => "match more real-data steps than were measured".into(),
        };
        let left_out = match m.left_out.as_slice() {
            [] => String::new(),
            steps => format!(
                " (real data at {} steps left out: measured on other architectures)",
                steps.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
            ),
        };
        s += &format!(
            "\n{} of {} (Spearman {} on {}) {real}{left_out}.",
            crate::text::count(m.gtn_steps, "step"),
            m.gtn_proxy,
            fmt_corr(m.gtn_spearman),
            m.subset
        );
    }
    s + "\n"
}

/// Why a correlation is left out (n/a): fewer than three points (two rank alike or opposite
/// whatever they are), or a column of equal values (every architecture tied), which ranks nothing.
const NO_CORRELATION: &str =
    "a correlation needs at least three architectures measured by both sides, not all scored alike";

/// Spearman correlation vs proxy steps (doubling, so on a log axis): one colour per proxy, solid
/// for all architectures, dashed for the top 50%.
pub fn plot(rows: &[Row], path: &Path) -> Result<()> {
    if !rows.iter().any(|r| r.proxy != PARAMS && r.spearman.is_finite()) {
        bail!("{}: no correlation to plot yet ({NO_CORRELATION})", path.display());
    }
    let (untrained, trained): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.proxy == PARAMS);
    let mut by_proxy: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for &r in &trained {
        by_proxy.entry(r.proxy.as_str()).or_default().push(r);
    }
    let mut lines: Vec<(&str, Vec<&Row>)> = by_proxy.into_iter().collect();
    for (_, rows) in &mut lines {
        rows.sort_by_key(|r| r.steps);
    }
    // The untrained baseline as a level line across the whole axis.
    let first = trained.iter().map(|r| r.steps).min().unwrap_or(1);
    let last = trained.iter().map(|r| r.steps).max().unwrap_or(1);
    let axis = crate::plot::x_axis(first as f64, last as f64, true);
    let (first, last) = (axis.start as usize, axis.end as usize);
    let levels: Vec<[Row; 2]> =
        untrained.iter().map(|&r| [Row { steps: first, ..r.clone() }, Row { steps: last, ..r.clone() }]).collect();
    lines.extend(levels.iter().map(|level| (PARAMS, level.iter().collect())));
    let mut series = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (proxy, rows) in lines {
        // A colour per proxy; the baselines over several sets of architectures share one.
        let color = names.iter().position(|&n| n == proxy).unwrap_or_else(|| {
            names.push(proxy);
            names.len() - 1
        });
        let named = !series.iter().any(|s: &Series| s.color == color);
        for (dashed, (_, pick)) in [false, true].into_iter().zip(SUBSETS) {
            let points: Vec<(f64, f64, f64)> =
                rows.iter().map(|r| (r.steps as f64, pick(r), 0.0)).filter(|p| p.1.is_finite()).collect();
            // One legend entry per proxy; the x label says which line is which subset.
            let name = if dashed || !named { String::new() } else { proxy.to_owned() };
            series.push(Series { name, points, color, dashed });
        }
    }
    Chart {
        title: "Rank correlation with true performance",
        x_label: x_label(&series),
        y_label: "Spearman rho",
        series: &series,
        zoom_from: None,
        log_x: true,
    }
    .write_png(path)
}

/// The x label says which line is which subset, naming the dashed one only where one is drawn (a
/// top half of fewer than two architectures has no correlation).
fn x_label(series: &[Series]) -> &'static str {
    match series.iter().any(|s| s.dashed && !s.points.is_empty()) {
        true => "proxy training steps (solid: all architectures, dashed: the top 50% by truth)",
        false => "proxy training steps (all architectures)",
    }
}

/// A warning when the truth covers only some of the architectures the proxies scored: the rest
/// are left out of every correlation (a truth's shards not merged yet, or another sample).
fn coverage_warning(proxy: &[Record], truth_file: &Path, truth: &[Record]) -> Option<String> {
    let scored: HashSet<&str> = proxy.iter().map(|r| r.arch.as_str()).collect();
    let known: HashSet<&str> = truth.iter().map(|r| r.arch.as_str()).collect();
    let covered = scored.intersection(&known).count();
    (covered < scored.len()).then(|| {
        format!(
            "{}: holds the truth of {covered} of the {} architectures the proxies scored; the rest are left out of every correlation (a shard not merged yet?)",
            truth_file.display(),
            scored.len()
        )
    })
}

/// A truth file holds real-data training (`gtn nas truth`), longer than any real proxy's: a
/// truth of GTN proxy results is refused; one trained less than a real proxy gets a warning (both
/// look like `--proxy` and `--truth` given the other way round).
fn check_not_swapped(proxies: &[(&Path, Vec<Record>)], truth_file: &Path, truth: &[Record]) -> Result<Option<String>> {
    let truth_name = truth_file.display();
    if let Some(r) = truth.iter().find(|r| r.proxy != "real") {
        bail!("--truth {truth_name}: holds results of the {} proxy; expected real-data training (a `gtn nas truth` file): are --proxy and --truth the other way round?", r.proxy);
    }
    let truth_steps = truth.iter().map(|r| r.steps).max().unwrap_or(0);
    let real = proxies.iter().flat_map(|(file, records)| records.iter().map(move |r| (*file, r)));
    let longest = real.filter(|(_, r)| r.proxy == "real").max_by_key(|(_, r)| r.steps);
    Ok(longest.filter(|(_, r)| r.steps > truth_steps).map(|(file, r)| {
        format!(
            "--truth {truth_name}: trained {truth_steps} steps, fewer than the real-data proxy's {} in --proxy {}; are --proxy and --truth the other way round?",
            r.steps,
            file.display()
        )
    }))
}

/// Reads both files and returns the rows and their markdown table ([`plot`] draws them). Every file must hold
/// results of one dataset, one network (records that predate `net` match any network) and one
/// seed: the seed draws the architectures and their initial weights, so a proxy and a truth of
/// different seeds would rank other networks than they name.
pub fn report(proxy_files: &[&Path], truth_file: &Path) -> Result<(Vec<Row>, String)> {
    let mut files = Vec::new();
    for (flag, path) in proxy_files.iter().map(|p| ("--proxy", *p)).chain([("--truth", truth_file)]) {
        super::jsonl::check_results_file(path, flag)?;
        let records = super::jsonl::read(path)?;
        if records.is_empty() {
            bail!("{flag} {}: no records", path.display());
        }
        files.push((path, records));
    }
    let dataset = |r: &Record| Some(format!("dataset {}", r.dataset));
    let network = |r: &Record| (!r.net.is_empty()).then(|| format!("network ({})", r.net));
    let seed = |r: &Record| Some(format!("seed {}", r.seed));
    for what in [&dataset as &dyn Fn(&Record) -> Option<String>, &network, &seed] {
        let mut first: Option<(String, &Path)> = None;
        for (file, r) in files.iter().flat_map(|(f, records)| records.iter().map(move |r| (*f, r))) {
            let Some(value) = what(r) else { continue };
            match &first {
                None => first = Some((value, file)),
                Some((seen, path)) if *seen != value && *path == file => bail!(
                    "{}: mixes results of {seen} and of {value}; expected the same for all proxies and the truth",
                    file.display()
                ),
                Some((seen, path)) if *seen != value => bail!(
                    "{}: results of {value}, but {} has {seen}; expected the same for all proxies and the truth",
                    file.display(),
                    path.display()
                ),
                Some(_) => {}
            }
        }
    }
    let truth = files.pop().expect("the truth file was read").1;
    if let Some(warning) = check_not_swapped(&files, truth_file, &truth)? {
        tracing::warn!("{warning}");
    }
    let mut proxy: Vec<Record> = files.into_iter().flat_map(|(_, records)| records).collect();
    super::jsonl::one_label_per_teacher(&mut proxy);
    let mut rows = correlations(&proxy, &truth)?;
    // Once nothing refuses the files.
    if let Some(warning) = coverage_warning(&proxy, truth_file, &truth) {
        tracing::warn!("{warning}");
    }
    let matches = steps_to_match(&rows);
    for m in &matches {
        let row =
            rows.iter_mut().find(|r| r.proxy == m.gtn_proxy && r.steps == m.gtn_steps).expect("a GTN row's match");
        match m.subset {
            "all" => (row.real_steps_to_match, row.real_steps_to_match_at_most) = (m.real_steps, m.at_most),
            _ => (row.real_steps_to_match_top, row.real_steps_to_match_top_at_most) = (m.real_steps, m.at_most),
        }
    }
    let table = markdown(&rows, &matches);
    Ok((rows, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(arch: usize, proxy: &str, steps: usize, acc: f64) -> Record {
        Record {
            arch: format!("a{arch}"),
            index: arch,
            proxy: proxy.into(),
            steps,
            dataset: "mnist".into(),
            valid_accuracy: acc,
            test_accuracy: acc,
            seconds: steps as f64,
            params: 1,
            seed: 0,
            net: String::new(),
            setting: String::new(),
        }
    }

    #[test]
    fn the_truth_is_one_step_count_and_proxies_one_setting_each() {
        let proxy: Vec<Record> = (0..4).map(|k| rec(k, "real", 8, k as f64)).collect();
        let mut truth: Vec<Record> = (0..4).map(|k| rec(k, "real", 300, k as f64)).collect();
        truth.extend((0..2).map(|k| rec(k, "real", 1000, 10.0 - k as f64)));
        let err = correlations(&proxy, &truth).unwrap_err().to_string();
        assert!(err.starts_with("the truth has 2 architectures at 1000 steps and 2 only at fewer (a2, ...)"), "{err}");
        truth.push(rec(2, "real", 1000, 8.0));
        let err = correlations(&proxy, &truth).unwrap_err().to_string();
        assert!(err.starts_with("the truth has 3 architectures at 1000 steps and 1 only at fewer (a3);"), "{err}");
        truth.push(rec(3, "real", 1000, 7.0));
        let rows = correlations(&proxy, &truth).unwrap();
        assert_eq!(rows[0].spearman, -1.0, "ranked by the 1000-step truth alone");
        // An architecture repeated keeps its first record (as in a proxy); another proxy's
        // results in the truth file are refused.
        let mut twice = truth.clone();
        twice.push(rec(0, "real", 1000, 0.0));
        assert_eq!(correlations(&proxy, &twice).unwrap()[0].spearman, -1.0);
        twice.push(rec(1, "gtn:t", 1000, 0.0));
        let err = correlations(&proxy, &twice).unwrap_err().to_string();
        assert_eq!(err, "the truth holds a0 (1000 steps) of real and a1 of gtn:t; expected one proxy's results (a `gtn nas truth` file)");

        let shard = |k, setting: &str| Record { setting: setting.into(), ..rec(k, "real", 8, k as f64) };
        let mixed = vec![shard(0, "lr 0.1"), shard(1, "lr 0.1"), shard(2, "lr 0.3"), shard(3, "lr 0.3")];
        let err = correlations(&mixed, &truth).unwrap_err().to_string();
        assert_eq!(
            err,
            "real: its records of a0 (8 steps) and of a2 (8 steps) are measured differently (lr 0.1 vs lr 0.3); expected one setting"
        );
    }

    #[test]
    fn the_top_half_does_not_depend_on_record_order() {
        // a2 and a3 tie at the cut of the top half: a2 goes in by name, whatever the order.
        let truth: Vec<Record> =
            [5.0, 4.0, 3.0, 3.0, 1.0, 0.0].iter().enumerate().map(|(k, &t)| rec(k, "real", 100, t)).collect();
        let mut proxy: Vec<Record> =
            [0.0, 1.0, 2.0, -5.0, 9.0, 9.0].iter().enumerate().map(|(k, &v)| rec(k, "real", 8, v)).collect();
        for _ in 0..2 {
            assert_eq!(correlations(&proxy, &truth).unwrap()[0].spearman_top, -1.0, "top half a0, a1, a2");
            proxy.reverse();
        }
        // A top half of two says nothing.
        let row = &correlations(&proxy[..4], &truth[..4]).unwrap()[0];
        assert!(row.n_top == 2 && row.spearman_top.is_nan() && row.kendall_top.is_nan(), "{row:?}");
    }

    /// A proxy over fewer architectures (a shard still running) gets its own baseline, over the
    /// same architectures; both are drawn in the baseline's one colour.
    #[test]
    fn each_set_of_architectures_gets_its_own_parameter_count_baseline() {
        let truth: Vec<Record> = (0..6).map(|k| Record { params: k as i64, ..rec(k, "real", 100, k as f64) }).collect();
        let mut proxy: Vec<Record> = (0..6).map(|k| rec(k, "gtn:t", 8, k as f64)).collect();
        // Parameter count ranks the three it shares with the real proxy in reverse of the truth.
        proxy.extend((0..3).map(|k| rec(k, "real", 10, k as f64)));
        let truth: Vec<Record> =
            truth.into_iter().map(|t| if t.index < 3 { Record { params: 10 - t.params, ..t } } else { t }).collect();
        let rows = correlations(&proxy, &truth).unwrap();
        let baselines: Vec<(usize, f64)> =
            rows.iter().filter(|r| r.proxy == PARAMS).map(|r| (r.n, r.spearman)).collect();
        assert_eq!(baselines.len(), 2, "{rows:?}");
        assert_eq!(baselines[1], (3, -1.0), "over the real proxy's three: {rows:?}");
        assert_eq!(baselines[0].0, 6);
        let real = rows.iter().find(|r| r.proxy == "real").unwrap();
        let params = rows.iter().find(|r| r.proxy == PARAMS && r.archs == real.archs).unwrap();
        assert_eq!(params.n, real.n);
        let dir = tempfile::tempdir().unwrap();
        plot(&rows, &dir.path().join("c.png")).unwrap();
    }

    #[test]
    fn the_x_label_names_a_dashed_line_only_where_one_is_drawn() {
        let line = |dashed, points: &[(f64, f64, f64)]| Series {
            name: String::new(),
            points: points.to_vec(),
            color: 0,
            dashed,
        };
        let all = line(false, &[(1.0, 0.5, 0.0), (2.0, 0.6, 0.0)]);
        let drawn = [all.clone(), line(true, &[(1.0, 0.2, 0.0)])];
        assert!(x_label(&drawn).contains("dashed: the top 50%"));
        let none = [all, line(true, &[])];
        assert_eq!(x_label(&none), "proxy training steps (all architectures)");
    }

    #[test]
    fn correlations_top_half_and_steps_to_match() {
        let truth: Vec<Record> = (0..6).map(|k| rec(k, "real", 100, k as f64)).collect();
        let mut proxy = Vec::new();
        for k in 0..6 {
            // GTN: perfect ranking. Real at 10 steps: reversed; at 40 steps: perfect.
            proxy.push(rec(k, "gtn:t", 8, k as f64));
            proxy.push(rec(k, "real", 10, -(k as f64)));
            proxy.push(rec(k, "real", 40, k as f64 * 2.0));
        }
        let mut rows = correlations(&proxy, &truth).unwrap();
        assert_eq!(rows.len(), 4);
        // Last, the untrained baseline: every architecture has 1 parameter, so no ranking.
        let params = rows.pop().unwrap();
        assert_eq!((params.proxy.as_str(), params.steps, params.n), (PARAMS, 0, 6));
        assert!(params.spearman.is_nan() && params.spearman_valid_test.is_nan(), "{params:?}");
        let gtn = rows.iter().find(|r| r.is_gtn()).unwrap();
        assert_eq!((gtn.n, gtn.n_top, gtn.spearman, gtn.kendall_top), (6, 3, 1.0, 1.0));
        assert_eq!(rows.iter().find(|r| r.steps == 10).unwrap().spearman, -1.0);
        let m = steps_to_match(&rows);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].real_steps, Some(40.0));
        let md = markdown(&rows, &m);
        assert!(md.contains("| gtn:t | 8 | 6 | 1.000 | 1.000 | 3 | 1.000 | 1.000 | 1.000 | n/a | 8.0 |"), "{md}");
        assert!(md.contains("≈ 40 real-data steps"), "{md}");
        assert!(md.contains(&format!("\nn/a: {NO_CORRELATION}.\n")), "the n/a above is explained: {md}");
        let finite: Vec<Row> = rows.iter().map(|r| Row { spearman_params: 0.5, ..r.clone() }).collect();
        assert!(!markdown(&finite, &m).contains("n/a:"), "nothing to explain");
        let untrained =
            Row { proxy: PARAMS.into(), spearman_valid_test: f64::NAN, spearman_params: f64::NAN, ..finite[0].clone() };
        assert!(!markdown(&[untrained], &[]).contains("n/a:"), "the untrained row's own n/a");
        // Halfway in correlation between 10 and 40 steps: interpolated.
        let half = [Row { spearman: 0.0, spearman_top: 0.0, ..rows[0].clone() }, rows[1].clone(), rows[2].clone()];
        let m = steps_to_match(&half);
        assert_eq!((m[0].real_steps, m[1].real_steps), (Some(25.0), Some(25.0)));
        // Real data's 10 steps ranking nothing (n/a): 40 is an upper bound, not a match.
        let unranked = [rows[0].clone(), Row { spearman: f64::NAN, ..rows[1].clone() }, rows[2].clone()];
        let m = steps_to_match(&unranked);
        assert_eq!((m[0].real_steps, m[0].at_most), (Some(40.0), true));
        let unreachable = [rows[0].clone(), rows[1].clone()];
        assert_eq!(steps_to_match(&unreachable)[0].real_steps, None);
        // Real data at 40 steps measured on five of the six architectures (a shard still
        // running): its correlation is over another set, so it is left out, and said to be.
        let partial: Vec<Record> = proxy.iter().filter(|r| !(r.steps == 40 && r.arch == "a5")).cloned().collect();
        let partial_rows = correlations(&partial, &truth).unwrap();
        let m = steps_to_match(&partial_rows);
        assert_eq!((m[0].real_steps, m[0].left_out.as_slice()), (None, [40].as_slice()));
        let md = markdown(&partial_rows, &m);
        let expected =
            "more real-data steps than were measured (real data at 40 steps left out: measured on other architectures)";
        assert!(md.contains(expected), "{md}");
        // With both real step counts on other architectures, nothing is compared, and it says so.
        let other_set: Vec<Record> = proxy.iter().filter(|r| !(r.proxy == "real" && r.arch == "a5")).cloned().collect();
        let other_rows = correlations(&other_set, &truth).unwrap();
        let m = steps_to_match(&other_rows);
        assert_eq!((m[0].real_steps, m[0].compared), (None, 0));
        let md = markdown(&other_rows, &m);
        assert!(md.contains("match no real-data row: none was measured on the same architectures (real data at 10, 40 steps left out"), "{md}");
        // Without any real-data proxy, it says that instead.
        let gtn_only: Vec<Record> = proxy.iter().filter(|r| r.proxy != "real").cloned().collect();
        let gtn_rows = correlations(&gtn_only, &truth).unwrap();
        let md = markdown(&gtn_rows, &steps_to_match(&gtn_rows));
        assert!(md.contains("match no real-data row: no real-data proxy was given (a `gtn nas score --proxy real` file as --proxy)."), "{md}");
        // A real count reached first is no upper bound when a fewer one was measured on others.
        let early: Vec<Record> = proxy.iter().filter(|r| !(r.steps == 10 && r.arch == "a5")).cloned().collect();
        let m = steps_to_match(&correlations(&early, &truth).unwrap());
        assert_eq!((m[0].real_steps, m[0].at_most), (Some(40.0), false));
        // A proxy that scored every architecture alike (NaN) has no ranking to match.
        let flat = [Row { spearman: f64::NAN, ..rows[0].clone() }, rows[1].clone(), rows[2].clone()];
        let m = steps_to_match(&flat);
        assert_eq!((m.len(), m[0].subset), (1, "top 50%"));
        let below = [Row { spearman: -1.0, ..rows[0].clone() }, rows[1].clone(), rows[2].clone()];
        let m = steps_to_match(&below);
        assert_eq!((m[0].real_steps, m[0].at_most, m[1].at_most), (Some(10.0), true, false));
        assert!(markdown(&below, &m).contains(") rank no better than 10 real-data steps, the fewest that rank."));
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("c.png");
        plot(&rows, &png).unwrap();
        let img = image::open(&png).unwrap();
        assert!(img.width() > 500 && img.height() > 300);
        let unranked: Vec<Row> = rows.iter().map(|r| Row { spearman: f64::NAN, ..r.clone() }).collect();
        let err = plot(&unranked, &dir.path().join("none.png")).unwrap_err().to_string();
        assert!(err.ends_with(&format!("none.png: no correlation to plot yet ({NO_CORRELATION})")), "{err}");
        assert!(correlations(&proxy, &[]).is_err());
    }

    #[test]
    fn repeatability_size_bias_and_the_parameter_count_baseline() {
        // Truth: architecture k scores k. Sizes: 10, 20, ... but architecture 0 is the largest.
        let size = |k: usize| if k == 0 { 100 } else { 10 * k as i64 };
        let truth: Vec<Record> = (0..6).map(|k| Record { params: size(k), ..rec(k, "real", 100, k as f64) }).collect();
        // The proxy ranks by size on its validation images, and in reverse on its test images.
        let proxy: Vec<Record> = (0..6)
            .map(|k| Record { test_accuracy: -(size(k) as f64), params: size(k), ..rec(k, "gtn:t", 8, size(k) as f64) })
            .collect();
        // An architecture only the truth has is left out of the baseline too: it would rank
        // architectures no proxy row ranks (here, the smallest one, and the best by truth).
        let mut truth = truth;
        truth.push(Record { params: 1, ..rec(6, "real", 100, 6.0) });
        let rows = correlations(&proxy, &truth).unwrap();
        let (gtn, params) = (&rows[0], &rows[1]);
        assert_eq!((gtn.spearman_valid_test, gtn.spearman_params), (-1.0, 1.0));
        assert_eq!(params.n, 6);
        // Over two architectures they are n/a too, like the proxy's correlation with the truth.
        let two = correlations(&proxy[..2], &truth).unwrap();
        assert!(two[0].spearman_valid_test.is_nan() && two[0].spearman_params.is_nan(), "{:?}", two[0]);
        // Size ranks architectures 1-5 right and the worst as the best: rho = 1 - 6 * 30 / 210.
        assert_eq!(params.proxy, PARAMS);
        assert!((params.spearman - (1.0 - 6.0 * 30.0 / 210.0)).abs() < 1e-12, "{params:?}");
        assert_eq!(params.spearman, gtn.spearman, "the proxy is parameter count in disguise");
        // The baseline is drawn as a level line in the next colour after the proxies'.
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("c.png");
        let colour = |c: plotters::style::RGBColor| [c.0, c.1, c.2];
        let pixels = |rows: &[Row], k: usize| {
            plot(rows, &png).unwrap();
            let image = image::open(&png).unwrap().to_rgb8();
            image.pixels().filter(|p| p.0 == colour(crate::plot::COLORS[k])).count()
        };
        assert!(pixels(&rows, 1) > 1_000, "{} pixels of the baseline's colour", pixels(&rows, 1));
        assert_eq!(pixels(&rows[..1], 1), 0, "without the baseline row, no line of its colour");
        // The proxy, measured at one step count, is a dot (some 70 pixels) beside its legend entry.
        assert!(pixels(&rows, 0) > 120, "{} pixels of the proxy's colour", pixels(&rows, 0));
    }

    #[test]
    fn report_refuses_files_of_different_networks_datasets_or_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, proxy: &str, steps: usize, net: &str| {
            let path = dir.path().join(name);
            let (mut out, _) = super::super::jsonl::Appender::open(&path).unwrap();
            for a in 0..4 {
                out.append(&Record { net: net.into(), ..rec(a, proxy, steps, 0.5 + 0.1 * a as f64) }).unwrap();
            }
            path
        };
        let truth = write("truth.jsonl", "real", 300, "head Hidden");
        let same = write("same.jsonl", "real", 4, "head Hidden");
        let old = write("old.jsonl", "gtn:t", 4, "");
        let other = write("other.jsonl", "gtn:t", 4, "head Flatten");
        let (rows, _) = report(&[&same, &old], &truth).unwrap();
        assert_eq!(rows.len(), 3, "two proxies and the parameter-count baseline");
        // The GTN row carries its match for `--json`: real data's 4 steps rank as well.
        let matched = |proxy: &str| {
            let row = rows.iter().find(|r| r.proxy == proxy).unwrap();
            (row.real_steps_to_match, row.real_steps_to_match_at_most)
        };
        // An upper bound: 4 steps are the fewest real data was measured at.
        assert_eq!((matched("gtn:t"), matched("real")), ((Some(4.0), true), (None, false)));
        let err = report(&[&same, &other], &truth).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: results of network (head Flatten)", other.display())), "{err}");
        assert!(err.contains("same.jsonl has network (head Hidden)"), "{err}");
        let fashion = dir.path().join("fashion.jsonl");
        let (mut out, _) = super::super::jsonl::Appender::open(&fashion).unwrap();
        out.append(&Record { dataset: "fashion-mnist".into(), ..rec(0, "gtn:f", 4, 0.5) }).unwrap();
        let err = report(&[&same, &fashion], &truth).unwrap_err().to_string();
        assert!(err.contains("results of dataset fashion-mnist, but") && err.contains("has dataset mnist"), "{err}");
        // Both in one file: said once, as a mix.
        let mixed = dir.path().join("mixed.jsonl");
        let text = std::fs::read_to_string(&same).unwrap() + &std::fs::read_to_string(&fashion).unwrap();
        std::fs::write(&mixed, text).unwrap();
        let err = report(&[&mixed], &truth).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: mixes results of dataset mnist and of dataset fashion-mnist; expected the same for all proxies and the truth",
                mixed.display()
            )
        );
        let seed1 = dir.path().join("seed1.jsonl");
        let (mut out, _) = super::super::jsonl::Appender::open(&seed1).unwrap();
        out.append(&Record { seed: 1, ..rec(0, "gtn:s", 4, 0.5) }).unwrap();
        let err = report(&[&same, &seed1], &truth).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: results of seed 1, but", seed1.display())), "{err}");
        assert!(err.contains("has seed 0; expected the same for all proxies and the truth"), "{err}");
        // The files the other way round: GTN results as the truth are refused, a truth trained
        // less than a real proxy is warned of.
        let err = report(&[&truth], &old).unwrap_err().to_string();
        assert_eq!(err, format!("--truth {}: holds results of the gtn:t proxy; expected real-data training (a `gtn nas truth` file): are --proxy and --truth the other way round?", old.display()));
        let read = |path: &Path| super::super::jsonl::read(path).unwrap();
        let warning = check_not_swapped(&[(&truth, read(&truth))], &same, &read(&same)).unwrap().unwrap();
        assert!(warning.contains("trained 4 steps, fewer than the real-data proxy's 300 in --proxy"), "{warning}");
        assert_eq!(check_not_swapped(&[(&same, read(&same))], &truth, &read(&truth)).unwrap(), None);
        // A truth of some of the architectures scored is warned of.
        let proxy = [rec(0, "real", 4, 0.5), rec(1, "real", 4, 0.6), rec(2, "real", 4, 0.7)];
        let warning = coverage_warning(&proxy, &truth, &proxy[..2]).unwrap();
        assert!(warning.ends_with(": holds the truth of 2 of the 3 architectures the proxies scored; the rest are left out of every correlation (a shard not merged yet?)"), "{warning}");
        assert_eq!(coverage_warning(&proxy, &truth, &proxy), None);
        let missing = dir.path().join("missing.jsonl");
        let err = report(&[&same], &missing).unwrap_err().to_string();
        assert_eq!(err, format!("--truth {}: no such results file", missing.display()));
        let err = report(&[dir.path()], &truth).unwrap_err().to_string();
        let folder = format!("--proxy {}: is a folder; expected a results file (.jsonl)", dir.path().display());
        assert!(err.starts_with(&folder), "{err}");
        let twice = report(&[&same, &same], &truth).unwrap().0;
        assert_eq!(twice[0].n, 4, "a file given twice counts each architecture once");
        let elsewhere = dir.path().join("elsewhere.jsonl");
        let (mut out, _) = super::super::jsonl::Appender::open(&elsewhere).unwrap();
        let setting = "10000 validation images".to_string();
        out.append(&Record { net: "head Hidden".into(), setting, ..rec(0, "real", 4, 0.7) }).unwrap();
        let err = report(&[&same, &elsewhere], &truth).unwrap_err().to_string();
        assert!(err.starts_with("a0 (real, 4 steps) is recorded twice, measured differently ("), "{err}");
        assert!(err.ends_with(" vs 10000 validation images); expected one"), "{err}");
    }
}
