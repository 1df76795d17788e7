//! Results as JSON lines: one record per (architecture, proxy, step count). Each record is one
//! `write` of a whole line to a file opened for appending, then flushed to disk, so a crash loses
//! at most the line being written; a torn last line is dropped when the file is next opened for
//! appending. One process appends to a file at a time (shards each write their own).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Canonical cell encoding.
    pub arch: String,
    /// Position in the architecture list (stable across shards and re-runs).
    pub index: usize,
    /// `gtn:<teacher folder>` or `real`.
    pub proxy: String,
    pub steps: usize,
    pub dataset: String,
    /// Accuracy on held-out training images (what ranks architectures).
    pub valid_accuracy: f64,
    pub test_accuracy: f64,
    /// Training seconds for all step counts of this architecture up to `steps`.
    pub seconds: f64,
    pub params: i64,
    pub seed: u64,
    /// How the cell is stacked into a network (cells, channels, reductions, head). Empty, as is
    /// `setting`, in files written before they were recorded.
    #[serde(default)]
    pub net: String,
    /// Everything else a result depends on (evaluation, real-data training), so a resumed run
    /// can refuse to mix results of different settings in one file.
    #[serde(default)]
    pub setting: String,
}

impl Record {
    pub fn key(&self) -> (String, String, usize) {
        (self.arch.clone(), self.proxy.clone(), self.steps)
    }

    /// What the record was measured with: dataset, seed, network and setting, one part each.
    fn measurement(&self) -> Vec<String> {
        let (dataset, seed) = (format!("dataset {}", self.dataset), format!("seed {}", self.seed));
        let recorded: Vec<String> =
            self.net.split(", ").chain(self.setting.split(", ")).filter(|p| !p.is_empty()).map(str::to_owned).collect();
        let recorded = match recorded.is_empty() {
            true => vec!["network and setting not recorded (an older gtn)".to_owned()],
            false => recorded,
        };
        [dataset, seed].into_iter().chain(recorded).collect()
    }
}

/// How `a` and `b` were measured differently, for messages: the parts of each measurement the
/// other lacks (`eval on 200` vs `eval on 100`; `none` where it has none the other lacks), not two
/// settings of a dozen parts to compare by eye.
pub fn measured_differently(a: &Record, b: &Record) -> (String, String) {
    let (a, b) = (a.measurement(), b.measurement());
    // The same parts in another order (records of builds that wrote the network into the
    // setting): the whole measurements, then.
    if a.iter().all(|p| b.contains(p)) && b.iter().all(|p| a.contains(p)) {
        return (a.join(", "), b.join(", "));
    }
    let only = |x: &[String], y: &[String]| {
        let parts: Vec<&str> = x.iter().filter(|p| !y.contains(p)).map(String::as_str).collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    };
    (only(&a, &b), only(&b, &a))
}

/// Refuses a results file given as `flag` (or as an argument, for "") that is not one: missing,
/// or a folder (a run's, given where its results were meant).
pub fn check_results_file(path: &Path, flag: &str) -> Result<()> {
    let given = if flag.is_empty() { path.display().to_string() } else { format!("{flag} {}", path.display()) };
    match (path.is_file(), path.is_dir()) {
        (true, _) => Ok(()),
        (_, true) => bail!("{given}: is a folder; expected a results file (.jsonl) of `gtn nas score` or `nas truth`"),
        _ => bail!("{given}: no such results file"),
    }
}

/// All complete records of `path` (none if it does not exist). Only the last line may be
/// malformed (a torn write); anything else is an error naming the line.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(path, &text_of(path, bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// `bytes`, the content of `path`, as text. A last line that is not UTF-8 is a write torn
/// inside a character (labels hold paths, written unescaped): it is kept lossily, so it parses
/// as the torn line it is.
fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String> {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if let Err(e) = std::str::from_utf8(&bytes[..complete]) {
        bail!("{}: not UTF-8 text ({e}); expected the JSON lines gtn writes", path.display());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The complete records of `text`, the content of `path`.
fn parse(path: &Path, text: &str) -> Result<Vec<Record>> {
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            // Labels written before they were normalised (`gtn:./runs/t`) name the same teacher.
            Ok(r) => {
                out.push(Record { proxy: r.proxy.parse::<super::score::Proxy>().map_or(r.proxy, |p| p.label()), ..r })
            }
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => bail!("{}:{}: not a result record: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// An output file opened for appending, after dropping a torn last line; locked, so a second
/// process appending to it is refused.
pub struct Appender {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl Appender {
    pub fn open(path: &Path) -> Result<(Appender, Vec<Record>)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create folder", parent.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        let busy = "another gtn process is writing this file; give each process (shard) its own --out";
        crate::atomic::lock_exclusive(&file, path, busy)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let text = text_of(path, bytes)?;
        let done = parse(path, &text)?;
        // In place, so the file stays the one locked (a rename would swap in another).
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        let last = &text[complete..];
        if serde_json::from_str::<Record>(last).is_ok() {
            // A whole record with no newline after it (a file written by hand) is kept.
            file.write_all(b"\n").with_context(|| format!("{}: cannot end its last line", path.display()))?;
        } else if !last.trim().is_empty() {
            file.set_len(complete as u64)
                .with_context(|| format!("{}: cannot drop a torn last line", path.display()))?;
        }
        Ok((Appender { file, path: path.to_path_buf() }, done))
    }

    pub fn append(&mut self, record: &Record) -> Result<()> {
        let line = format!("{}\n", serde_json::to_string(record)?);
        let path = self.path.display();
        self.file.write_all(line.as_bytes()).with_context(|| format!("{path}: cannot append a result"))?;
        self.file.sync_data().with_context(|| format!("{path}: cannot flush a result to disk"))
    }
}

/// Gives every record of one teacher the first spelling its folder has in `records`: shards run
/// with it spelled otherwise (`gtn:runs/t`, `gtn:/home/u/runs/t`, from another folder) merge and
/// report as one proxy when the records name the same teacher checkpoint in their setting (its
/// sha256), wherever the spellings lead from here (a folder trained again keeps its labels
/// apart); records whose setting names no checkpoint, when the spellings lead to the same folder
/// from here; records of builds that recorded no setting keep theirs.
pub fn one_label_per_teacher(records: &mut [Record]) {
    let mut folders: HashMap<String, Option<PathBuf>> = HashMap::new();
    let mut first_label: HashMap<(Option<PathBuf>, String), String> = HashMap::new();
    for r in records.iter_mut().filter(|r| !r.setting.is_empty()) {
        let Some(dir) = r.proxy.strip_prefix("gtn:") else { continue };
        // A setting naming the teacher's checkpoint names the teacher, wherever its folder is
        // and from wherever it was spelled; another, only with the folder it leads to from here.
        let folder = match r.setting.contains(TEACHER_CHECKPOINT) {
            true => None,
            false => match folders.entry(dir.to_owned()).or_insert_with(|| Path::new(dir).canonicalize().ok()) {
                Some(folder) => Some(folder.clone()),
                None => continue,
            },
        };
        r.proxy = first_label.entry((folder, r.setting.clone())).or_insert_with(|| r.proxy.clone()).clone();
    }
}

/// What a GTN proxy's setting says before the sha256 of its teacher's checkpoint.
pub const TEACHER_CHECKPOINT: &str = "checkpoint sha256 ";

/// Keys already present, for skipping finished work.
pub fn done_keys(records: &[Record]) -> HashSet<(String, String, usize)> {
    records.iter().map(Record::key).collect()
}

/// Concatenates shard files into one, keeping the first record of each key (an architecture
/// listed twice, or at another position in another list, is one architecture), ordered by
/// proxy, step count and architecture index; written atomically. Returns the number of records.
/// A proxy measured with two datasets, seeds, networks or settings (shards run with other flags)
/// is an error naming both files: keeping them together would hide that the files measured
/// different things.
pub fn merge(inputs: &[&Path], output: &Path) -> Result<usize> {
    crate::atomic::check_folder_of(output).map_err(|e| anyhow::anyhow!("--out {e}"))?;
    let mut merged: BTreeMap<(String, usize, usize, String), Record> = BTreeMap::new();
    let mut keys = HashSet::new();
    let mut first_of_proxy: HashMap<String, (Record, &Path)> = HashMap::new();
    let measured = |r: &Record| (r.dataset.clone(), r.seed, r.net.clone(), r.setting.clone());
    let mut records = Vec::new();
    for &path in inputs {
        check_results_file(path, "")?;
        records.extend(read(path)?.into_iter().map(|r| (path, r)));
    }
    let (paths, mut all): (Vec<&Path>, Vec<Record>) = records.into_iter().unzip();
    one_label_per_teacher(&mut all);
    let mut first_of_file: Option<(Record, &Path)> = None;
    for (path, r) in paths.into_iter().zip(all) {
        let (first, first_path) = first_of_proxy.entry(r.proxy.clone()).or_insert_with(|| (r.clone(), path));
        if measured(first) != measured(&r) {
            let (theirs, this) = measured_differently(first, &r);
            bail!(
                    "{}: its records of {} ({} steps) in {} and of {} ({} steps) in {} are measured differently ({theirs} vs {this}); expected one measurement per proxy",
                    r.proxy,
                    first.arch,
                    first.steps,
                    first_path.display(),
                    r.arch,
                    r.steps,
                    path.display()
                );
        }
        // One experiment per file, whatever the proxies (`nas report` reads it as one): records
        // of builds before `net` match any network.
        let (any, any_path) = first_of_file.get_or_insert_with(|| (r.clone(), path));
        let net = if any.net.is_empty() || r.net.is_empty() { any.net.clone() } else { r.net.clone() };
        let as_experiment = Record { proxy: any.proxy.clone(), setting: any.setting.clone(), net, ..r.clone() };
        if measured(any) != measured(&as_experiment) {
            let (theirs, this) = measured_differently(any, &as_experiment);
            bail!(
                "{} in {} and {} in {} are results of different experiments ({theirs} vs {this}); expected one dataset, network and seed in a merged file",
                any.proxy,
                any_path.display(),
                r.proxy,
                path.display()
            );
        }
        if keys.insert(r.key()) {
            merged.insert((r.proxy.clone(), r.steps, r.index, r.arch.clone()), r);
        }
    }
    let text: String =
        merged.values().map(|r| format!("{}\n", serde_json::to_string(r).expect("serialises"))).collect();
    // Not over a file a scoring process is appending to: its later records would go to the
    // replaced file.
    if let Ok(held) = std::fs::File::open(output) {
        crate::atomic::lock_exclusive(&held, output, "a gtn process is appending to it; merge into another --out")?;
        // It is replaced: only a file whose records the merge keeps may be there (one of the
        // files merged, or an earlier merge of them, as a re-run of the same command finds).
        let existing = output.canonicalize().ok();
        let merged_before = || read(output).is_ok_and(|records| records.iter().all(|r| keys.contains(&r.key())));
        if !inputs.iter().any(|input| input.canonicalize().ok() == existing) && !merged_before() {
            bail!(
                "--out {}: exists, holding other than the records merged, which would replace it; expected a new path, one of the files merged, or an earlier merge of them",
                output.display()
            );
        }
    }
    crate::atomic::write(output, text.as_bytes())?;
    Ok(merged.len())
}

/// `--shard i/n`: this process takes list positions `k` with `k % n == i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn takes(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Shard> {
        let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            Some((index, count)) => bail!("--shard {s}: expected 0 <= i < n, got i={index}, n={count}"),
            None => bail!("--shard {s}: expected i/n with whole numbers, e.g. 0/4"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(arch: &str, index: usize, steps: usize) -> Record {
        Record {
            arch: arch.into(),
            index,
            proxy: "real".into(),
            steps,
            dataset: "mnist".into(),
            valid_accuracy: 0.5,
            test_accuracy: 0.5,
            seconds: 1.0,
            params: 10,
            seed: 0,
            net: String::new(),
            setting: String::new(),
        }
    }

    #[test]
    fn shards_cover_every_position_exactly_once() {
        for n in 1..6 {
            let shards: Vec<Shard> = (0..n).map(|i| format!("{i}/{n}").parse().unwrap()).collect();
            for k in 0..37 {
                assert_eq!(shards.iter().filter(|s| s.takes(k)).count(), 1, "position {k} with {n} shards");
            }
        }
        for bad in ["3/3", "1/0", "a/2", "2", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!("4/3".parse::<Shard>().unwrap_err().to_string(), "--shard 4/3: expected 0 <= i < n, got i=4, n=3");
    }

    #[test]
    fn torn_last_line_is_dropped_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/r.jsonl");
        let (mut app, done) = Appender::open(&path).unwrap();
        assert!(done.is_empty());
        app.append(&record("a", 0, 4)).unwrap();
        app.append(&record("b", 1, 4)).unwrap();
        drop(app);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"arch\":\"c\",\"ind").unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        let (mut app, done) = Appender::open(&path).unwrap();
        assert_eq!(done.len(), 2);
        let err = Appender::open(&path).err().expect("a second writer is refused").to_string();
        assert!(
            err.ends_with("r.jsonl: another gtn process is writing this file; give each process (shard) its own --out"),
            "{err}"
        );
        app.append(&record("c", 2, 4)).unwrap();
        assert_eq!(read(&path).unwrap().iter().map(|r| r.arch.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        drop(app);
        // A whole last record without its newline is kept, and the next one goes on a line of its own.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();
        let (mut app, done) = Appender::open(&path).unwrap();
        assert_eq!(done.len(), 3);
        app.append(&record("e", 4, 4)).unwrap();
        assert_eq!(read(&path).unwrap().len(), 4);
        let old_spelling = Record { proxy: "gtn:./runs/t/".into(), ..record("d", 3, 4) };
        std::fs::write(&path, format!("{}\n", serde_json::to_string(&old_spelling).unwrap())).unwrap();
        assert_eq!(read(&path).unwrap()[0].proxy, "gtn:runs/t", "labels are read normalised");
        std::fs::write(&path, "garbage\n{}\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("r.jsonl:1: not a result record"));

        // A write torn inside a label's multi-byte character leaves a last line that is not UTF-8.
        drop(app);
        let accented = Record { proxy: "gtn:runs/é".into(), ..record("f", 5, 4) };
        let line = format!("{}\n", serde_json::to_string(&accented).unwrap());
        assert!(line.contains('é'), "written unescaped: {line}");
        let cut = line.find('é').unwrap() + 1;
        std::fs::write(&path, [line.as_bytes(), &line.as_bytes()[..cut]].concat()).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        let (app, done) = Appender::open(&path).unwrap();
        assert_eq!((done.len(), std::fs::read(&path).unwrap()), (1, line.clone().into_bytes()));
        drop(app);
        std::fs::write(&path, [&line.as_bytes()[..cut], b"\n"].concat()).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("r.jsonl: not UTF-8 text (") && err.ends_with("expected the JSON lines gtn writes"),
            "{err}"
        );
    }

    /// Shards that spelled their teacher's folder otherwise are one proxy once merged.
    #[test]
    fn merge_gives_a_teacher_one_label() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        let (a, b, out) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("m.jsonl"));
        let named = |folder: &str, arch: &str, setting: &str| {
            let (proxy, setting) = (format!("gtn:{}", dir.path().join(folder).display()), setting.to_owned());
            format!("{}\n", serde_json::to_string(&Record { proxy, setting, ..record(arch, 0, 4) }).unwrap())
        };
        let at = |folder: &str, arch: &str| {
            named(folder, arch, &format!("teacher at meta-iteration 8, {TEACHER_CHECKPOINT}ab"))
        };
        // One teacher checkpoint, however spelled, even as a folder that does not lead to it
        // from here (a relative one from another current folder, or one moved since).
        std::fs::write(&a, at("t", "x")).unwrap();
        std::fs::write(&b, at("t/../t", "y") + &at("elsewhere", "z")).unwrap();
        assert_eq!(merge(&[&a, &b], &out).unwrap(), 3);
        let labels: HashSet<String> = read(&out).unwrap().into_iter().map(|r| r.proxy).collect();
        assert_eq!(labels, HashSet::from([format!("gtn:{}", dir.path().join("t").display())]));
        // A setting that names no checkpoint: one proxy only where the folders are one.
        std::fs::write(&a, named("t", "x", "old")).unwrap();
        std::fs::write(&b, named("t/../t", "y", "old") + &named("elsewhere", "z", "old")).unwrap();
        std::fs::remove_file(&out).unwrap();
        merge(&[&a, &b], &out).unwrap();
        assert_eq!(read(&out).unwrap().into_iter().map(|r| r.proxy).collect::<HashSet<_>>().len(), 2);
        std::fs::write(&a, at("t", "x")).unwrap();
        // The folder's teacher trained again since: another proxy, its label kept.
        std::fs::write(&b, at("t/../t", "w").replace("sha256 ab", "sha256 cd")).unwrap();
        std::fs::remove_file(&out).unwrap();
        merge(&[&a, &b], &out).unwrap();
        assert_eq!(read(&out).unwrap().into_iter().map(|r| r.proxy).collect::<HashSet<_>>().len(), 2);
    }

    #[test]
    fn merge_deduplicates_and_orders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, out) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("m.jsonl"));
        let line = |r: &Record| format!("{}\n", serde_json::to_string(r).unwrap());
        std::fs::write(&a, line(&record("x", 2, 4)) + &line(&record("y", 0, 4))).unwrap();
        let x_elsewhere = record("x", 5, 4);
        std::fs::write(
            &b,
            line(&record("x", 2, 4)) + &line(&record("z", 1, 4)) + &line(&record("z", 1, 2)) + &line(&x_elsewhere),
        )
        .unwrap();
        assert_eq!(merge(&[&a, &b], &out).unwrap(), 4);
        let merged: Vec<(String, usize)> = read(&out).unwrap().into_iter().map(|r| (r.arch, r.steps)).collect();
        assert_eq!(merged, [("z".into(), 2), ("y".into(), 4), ("z".into(), 4), ("x".into(), 4)]);
        // A file there already is replaced only as an earlier merge of the same records (the
        // same command repeated) or one of the files merged: no record is lost.
        assert_eq!(merge(&[&a, &b], &out).unwrap(), 4, "repeated");
        let err = merge(&[&a], &out).unwrap_err().to_string();
        assert!(err.ends_with("m.jsonl: exists, holding other than the records merged, which would replace it; expected a new path, one of the files merged, or an earlier merge of them"), "{err}");
        assert_eq!(merge(&[&a, &out], &out).unwrap(), 4);
        assert!(merge(&[&dir.path().join("none")], &out).is_err());
        let err = merge(&[&a], dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("--out ") && err.ends_with(": is a folder; expected the path of a file to write"),
            "{err}"
        );
        // The same architecture measured on another dataset is not silently dropped.
        let c = dir.path().join("c");
        std::fs::write(&c, line(&Record { dataset: "fashion-mnist".into(), ..record("y", 0, 4) })).unwrap();
        let err = merge(&[&a, &c], &out).unwrap_err().to_string();
        assert!(
            err.starts_with("real: its records of x (4 steps) in ") && err.contains(" and of y (4 steps) in "),
            "{err}"
        );
        // Only what differs is named: the dataset, not the seed both share.
        assert!(
            err.ends_with(
                "c are measured differently (dataset mnist vs dataset fashion-mnist); expected one measurement per proxy"
            ),
            "{err}"
        );
        assert!(err.ends_with("expected one measurement per proxy"), "{err}");
        // Another proxy's records of another dataset: `nas report` would refuse the merged file.
        std::fs::write(
            &c,
            line(&Record { dataset: "fashion-mnist".into(), proxy: "gtn:t".into(), ..record("y", 0, 4) }),
        )
        .unwrap();
        let err = merge(&[&a, &c], &out).unwrap_err().to_string();
        assert!(
            err.starts_with("real in ")
                && err.ends_with("c are results of different experiments (dataset mnist vs dataset fashion-mnist); expected one dataset, network and seed in a merged file"),
            "{err}"
        );
        assert_eq!(read(&out).unwrap().len(), 4, "the earlier merge is left as it was");
        let appending = Appender::open(&out).unwrap();
        let err = merge(&[&a], &out).unwrap_err().to_string();
        assert!(err.ends_with("m.jsonl: a gtn process is appending to it; merge into another --out"), "{err}");
        drop(appending);
        // Records of the same parts in another order are told apart by their whole measurements.
        let one = Record { net: "a".into(), setting: "b".into(), ..record("v", 0, 4) };
        let other = Record { net: "b".into(), setting: "a".into(), ..record("v", 0, 4) };
        let whole = ("dataset mnist, seed 0, a, b".to_owned(), "dataset mnist, seed 0, b, a".to_owned());
        assert_eq!(measured_differently(&one, &other), whole);
        // Nor is a shard run with another setting, though it repeats no architecture.
        let other = Record { net: "cells 1".into(), setting: "lr 0.3".into(), ..record("w", 7, 4) };
        std::fs::write(&c, line(&other)).unwrap();
        let err = merge(&[&a, &c], &out).unwrap_err().to_string();
        assert!(
            err.contains(" and of w (4 steps) in ")
                && err.ends_with(
                    "(network and setting not recorded (an older gtn) vs cells 1, lr 0.3); expected one measurement per proxy"
                ),
            "{err}"
        );
    }
}
