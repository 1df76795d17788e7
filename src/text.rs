//! How numbers and kinds read in messages and tables: counts in the singular for one, a spread
//! only where there is one, kinds spelled as their flags.

/// `path` as one shell word, to paste into a suggested command: quoted when it holds anything a
/// shell would split or expand (a space, a quote, `$`, `*`).
pub fn shell_word(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-./+,:=@%".contains(c));
    match plain {
        true => text,
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

/// A wall-clock time as a person reads it: seconds under a minute (a tiny run's "0.0 min" says
/// nothing), else minutes.
pub fn duration(d: std::time::Duration) -> String {
    match d.as_secs_f64() {
        s if s < 60.0 => format!("{s:.1} s"),
        s => format!("{:.1} min", s / 60.0),
    }
}

/// `n` of `noun` in words: `1 learner`, `5 learners`, `2 policies`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        return format!("1 {noun}");
    }
    let consonant_y = noun.strip_suffix('y').filter(|stem| !stem.ends_with(['a', 'e', 'i', 'o', 'u']));
    match consonant_y {
        Some(stem) => format!("{n} {stem}ies"),
        None => format!("{n} {noun}s"),
    }
}

/// The standard deviation of `n` values, where it is defined (`eval::mean_std` gives 0 for one
/// value, a placeholder rather than a measurement).
pub fn spread(std: f64, n: usize) -> Option<f64> {
    (n > 1).then_some(std)
}

/// `mean ± std`, each written by `write`; the mean alone where there is no spread ([`spread`]).
pub fn mean_pm_std(mean: f64, std: Option<f64>, write: impl Fn(f64) -> String) -> String {
    match std {
        Some(std) => format!("{} ± {}", write(mean), write(std)),
        None => write(mean),
    }
}

/// A device as PyTorch spells it: `cpu`, `cuda:0`.
pub fn device(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `Display` for kinds chosen by a flag (clap's `ValueEnum`): tables and messages spell them as
/// the flags and config values do (`base-fc`, not `BaseFc`), so a name can be copied from one to
/// the other.
macro_rules! display_as_flag {
    ($kind:ty) => {
        impl std::fmt::Display for $kind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let value = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
                f.write_str(value.get_name())
            }
        }
    };
}
pub(crate) use display_as_flag;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_suggested_commands_paste_as_one_word() {
        let word = |p: &str| shell_word(std::path::Path::new(p));
        assert_eq!(word("runs/mnist-cpu"), "runs/mnist-cpu");
        assert_eq!(word("/tmp/my runs/a"), "'/tmp/my runs/a'");
        assert_eq!(word("it's $HOME*"), r"'it'\''s $HOME*'");
        assert_eq!(word(""), "''");
    }

    #[test]
    fn durations_are_in_seconds_under_a_minute() {
        use std::time::Duration;
        assert_eq!(duration(Duration::from_millis(2_340)), "2.3 s");
        assert_eq!(duration(Duration::from_secs(59)), "59.0 s");
        assert_eq!(duration(Duration::from_secs(90)), "1.5 min");
    }

    #[test]
    fn counts_are_worded_in_the_singular_for_one() {
        assert_eq!(count(1, "learner"), "1 learner");
        assert_eq!(count(0, "learner"), "0 learners");
        assert_eq!(count(5, "architecture"), "5 architectures");
        assert_eq!(count(1, "fresh policy"), "1 fresh policy");
        assert_eq!(count(2, "fresh policy"), "2 fresh policies");
        assert_eq!(count(2, "key"), "2 keys");
    }

    /// A kind's name (its flag's, by construction) is its config value's, variant by variant.
    fn assert_named_as_flags<T: clap::ValueEnum + serde::Serialize + std::fmt::Display>() {
        for kind in T::value_variants() {
            assert_eq!(serde_json::to_string(kind).unwrap(), format!("\"{kind}\""));
        }
    }

    #[test]
    fn kinds_are_named_as_their_flags_and_config_values() {
        assert_named_as_flags::<crate::curriculum::CurriculumKind>();
        assert_named_as_flags::<crate::data::DatasetName>();
        assert_named_as_flags::<crate::learner::LearnerKind>();
        assert_named_as_flags::<crate::teacher::TeacherKind>();
        assert_eq!(crate::learner::LearnerKind::BaseFc.to_string(), "base-fc");
    }

    #[test]
    fn devices_are_spelled_as_pytorch_does() {
        assert_eq!(device(tch::Device::Cpu), "cpu");
        assert_eq!(device(tch::Device::Cuda(1)), "cuda:1");
    }

    #[test]
    fn one_value_has_no_spread() {
        let percent = |x: f64| format!("{:.2}%", 100.0 * x);
        assert_eq!(mean_pm_std(0.93456, spread(0.0031, 5), percent), "93.46% ± 0.31%");
        assert_eq!(mean_pm_std(0.93456, spread(0.0, 1), percent), "93.46%");
        assert_eq!(spread(0.5, 2), Some(0.5));
        assert_eq!(spread(0.0, 1), None);
    }
}
