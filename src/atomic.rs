//! Replacing files so that a reader (or a crash) never sees a half-written one: write a
//! temporary file in the same folder, flush it to disk, rename it over the target, and flush
//! the folder so the rename itself survives a power loss. A process killed mid-write leaves its
//! temporary file behind (named after the target); a later write of that target removes it once
//! it is over 10 minutes old (a younger one may be another process's write in progress; a run's
//! checkpoint and config, which only the run folder's lock holder writes, go when it locks). Files
//! written in place over time (a run folder's, a results file) are locked by their writer.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

/// Takes an exclusive lock on the open `file` (at `path`) for as long as it stays open, so a
/// second process that would write it too is refused with `busy` (after the path). Where the
/// file system cannot lock (some network mounts), the work goes on unprotected, with a warning.
/// Whether the lock is held.
pub fn lock_exclusive(file: &std::fs::File, path: &Path, busy: &str) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!("{}: {busy}", path.display()),
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!("{}: cannot lock ({e}); nothing stops a second process writing it", path.display());
            Ok(false)
        }
    }
}

/// Creates or replaces `path` with whatever `write` puts at the temporary path it is given; its
/// errors should name `path`, as the temporary file is removed when they return.
pub fn replace_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = check_folder_of(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Named here: the temporary file's errors would name its own path, gone once they return.
    let (shown, folder) = (path.display(), parent.display());
    let prefix = format!(".{name}.tmp-");
    if !name.is_empty() {
        remove_leftovers(parent, &prefix);
    }
    // As a file created in place would be: the mode the target has, or the umask's for a new one
    // (temporary files are otherwise created private). Created with it, so a private target's
    // content is never readable by others while it is written; writable by its owner until the
    // rename, so a read-only target is replaced as a rename over it would be.
    use std::os::unix::fs::PermissionsExt;
    let existing = std::fs::metadata(path).ok().map(|m| m.permissions());
    let mode = existing.as_ref().map_or(0o666, |p| p.mode() | 0o200);
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(parent)
        .map_err(without_path)
        .with_context(|| format!("{shown}: cannot create a temporary file in {folder}"))?
        .into_temp_path();
    write(&tmp)?;
    // Errors name the target: the temporary file is gone once they return. Some file systems
    // (network mounts, quotas) report a full disk only here.
    let file = std::fs::File::open(&tmp).with_context(|| format!("{shown}: cannot reopen what was written"))?;
    file.sync_all().with_context(|| format!("{shown}: cannot flush to disk"))?;
    if let Some(permissions) = existing {
        std::fs::set_permissions(&tmp, permissions).with_context(|| format!("{shown}: cannot set permissions"))?;
    }
    // The io error alone: `PathPersistError` prints it and gives it again as its source.
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("{shown}: cannot rename into place"))?;
    if let Ok(dir) = std::fs::File::open(parent) {
        // Best effort: some file systems refuse to sync a directory.
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The folder `path` would be written in (`.` for a bare name); an error when there is no such
/// folder, or when `path` is itself a folder: for a command to refuse an output before its work
/// rather than after.
pub fn check_folder_of(path: &Path) -> Result<&Path> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (shown, folder) = (path.display(), parent.display());
    if path.is_dir() {
        bail!("{shown}: is a folder; expected the path of a file to write");
    }
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(parent),
        Ok(_) => bail!("{shown}: {folder} is a file; expected a path in a folder"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{shown}: folder {folder} does not exist; expected a path in an existing folder")
        }
        Err(e) => bail!("{shown}: cannot reach folder {folder}: {e}"),
    }
}

/// `tempfile`'s error without the temporary file's path it appends (a file never made): its
/// cause alone, as the operating system words it.
fn without_path(e: std::io::Error) -> anyhow::Error {
    let text = e.to_string();
    match text.rsplit_once(" at path ") {
        Some((cause, _)) => anyhow::anyhow!(cause.to_owned()),
        None => e.into(),
    }
}

/// How old a temporary file must be to be taken for a killed write's: writing the largest file
/// gtn writes, a paper-sized checkpoint, takes seconds, and a younger one may be another
/// process's write in progress.
const LEFTOVER_AGE: Duration = Duration::from_secs(600);

/// Removes the files and folders in `folder` whose names start with `prefix` and that were last
/// modified over [`LEFTOVER_AGE`] ago: temporary files of writes killed before their rename (or
/// a killed download's staging folder). Best effort.
pub fn remove_leftovers(folder: &Path, prefix: &str) {
    remove_leftovers_older_than(folder, prefix, LEFTOVER_AGE);
}

/// [`remove_leftovers`] whatever their age, for a writer that knows no other process writes
/// them (it holds the folder's lock): a run interrupted mid-save leaves none behind.
pub fn remove_leftovers_now(folder: &Path, prefix: &str) {
    remove_leftovers_older_than(folder, prefix, Duration::ZERO);
}

fn remove_leftovers_older_than(folder: &Path, prefix: &str, min_age: Duration) {
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    let old = |entry: &std::fs::DirEntry| {
        let modified = entry.metadata().and_then(|m| m.modified());
        let mut latest = modified.ok();
        // A folder's own time moves only when entries come or go, not while one is written.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let inner = std::fs::read_dir(entry.path()).into_iter().flatten().flatten();
            latest = inner.filter_map(|e| e.metadata().and_then(|m| m.modified()).ok()).chain(latest).max();
        }
        latest.is_some_and(|t| SystemTime::now().duration_since(t).map_or(min_age.is_zero(), |age| age >= min_age))
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) && old(&entry) {
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(entry.path()),
                _ => std::fs::remove_file(entry.path()),
            };
        }
    }
}

/// Creates or replaces `path` with `bytes`.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).with_context(|| format!("{}: cannot create", path.display()))?;
        f.write_all(bytes).with_context(|| format!("{}: write failed", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_get_the_mode_a_file_created_in_place_would() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
        // (Under the usual umask 022 this mode is what a fixed 0644 gave too; the others are not.)
        std::fs::File::create(dir.path().join("plain")).unwrap();
        write(&dir.path().join("new"), b"x").unwrap();
        assert_eq!(mode("new"), mode("plain"), "the umask's mode");
        // A read-only target is replaced too (as `mv` over it), and stays read-only.
        for own in [0o600, 0o640, 0o604, 0o444, 0o400] {
            let path = dir.path().join(format!("own-{own:o}"));
            std::fs::write(&path, b"x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(own)).unwrap();
            let mut seen = None;
            replace_with(&path, |tmp| {
                seen = Some(std::fs::metadata(tmp).unwrap().permissions().mode() & 0o777);
                std::fs::write(tmp, b"y").map_err(Into::into)
            })
            .unwrap();
            assert_eq!(mode(&format!("own-{own:o}")), own, "the target's own mode");
            assert_eq!(seen.unwrap() & !(own | 0o200), 0, "never more open while written");
            // (Root writes a read-only file anyway: checked by the mode, for any user.)
            assert_ne!(seen.unwrap() & 0o200, 0, "writable by its owner while written");
            assert_eq!(std::fs::read(&path).unwrap(), b"y");
        }
    }

    #[test]
    fn replaces_whole_files_and_keeps_the_old_one_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        write(&path, b"first").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let err = replace_with(&path, |_| anyhow::bail!("writer failed")).unwrap_err();
        assert_eq!(err.to_string(), "writer failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // No temporary files are left behind, and an old one a killed write left is removed; a
        // recent one (a write in progress) and another target's are not.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let leftover = |name: &str, age: u64| {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(age)).unwrap();
        };
        leftover(".f.txt.tmp-killed", 3600);
        leftover(".f.txt.tmp-writing", 5);
        leftover(".g.txt.tmp-other", 3600);
        // Folders too (a killed download's staging folder), by their newest entry's time: one
        // whose file is still being written is kept.
        let aged = |path: &Path| {
            std::fs::File::open(path).unwrap().set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap()
        };
        for (name, part_age) in [(".f.txt.tmp-folder", 3600), (".f.txt.tmp-downloading", 5)] {
            let staged = dir.path().join(name);
            std::fs::create_dir(&staged).unwrap();
            leftover(&format!("{name}/part"), part_age);
            aged(&staged);
        }
        write(&path, b"third").unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        names.sort();
        assert_eq!(names, [".f.txt.tmp-downloading", ".f.txt.tmp-writing", ".g.txt.tmp-other", "f.txt"]);
        std::fs::remove_dir_all(dir.path().join(".f.txt.tmp-downloading")).unwrap();
        for name in [".f.txt.tmp-writing", ".g.txt.tmp-other"] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        let (folder, path) = (dir.path().join("no/such/dir"), dir.path().join("no/such/dir/f"));
        let err = write(&path, b"x").unwrap_err().to_string();
        let expected = format!("{}: folder {} does not exist", path.display(), folder.display());
        assert_eq!(err, format!("{expected}; expected a path in an existing folder"), "not a temporary file's path");
        let (file, inside) = (dir.path().join("f.txt"), dir.path().join("f.txt/g"));
        let err = write(&inside, b"x").unwrap_err().to_string();
        assert_eq!(err, format!("{}: {} is a file; expected a path in a folder", inside.display(), file.display()));
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let err = format!("{:#}", write(&dir.path().join("folder"), b"x").unwrap_err());
        assert!(err.ends_with("folder: is a folder; expected the path of a file to write"), "said once: {err}");
        // procfs takes no new files, root's included; the error names the target, not the
        // temporary file that was never made.
        let err = format!("{:#}", write(Path::new("/proc/gtn-test"), b"x").unwrap_err());
        assert!(
            err.starts_with("/proc/gtn-test: cannot create a temporary file in /proc: ") && !err.contains("tmp"),
            "{err}"
        );
    }
}
