//! GTN-NAS: architecture search with the teacher's synthetic data as a fast proxy for how well an
//! architecture trains on real data.

pub mod arch;
pub mod jsonl;
pub mod network;
pub mod report;
pub mod score;
pub mod search;
pub mod stats;

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::data::fixture_dir;
    use crate::learner::{Arch, LearnerKind};
    use crate::meta::Trainer;
    use tch::{Device, Kind};

    /// `learner = "nas-random"` meta-trains: each iteration draws a different cell network and
    /// the meta-gradient reaches the generator through its unroll.
    #[test]
    fn meta_training_draws_cell_networks_and_gets_a_meta_gradient() {
        let config = Config::tiny()
            .with_overrides_str(&format!("learner = \"nas-random\"\ninner_steps = 2\ndata_dir = {:?}", fixture_dir()))
            .unwrap();
        assert_eq!(config.learner, LearnerKind::NasRandom);
        let dir = tempfile::tempdir().unwrap();
        let trainer = Trainer::create(&config, &dir.path().join("run"), Device::Cpu).unwrap();
        let arch = |i| trainer.iteration_inputs(i).learner.arch;
        assert!(matches!(arch(0), Arch::Nas { .. }));
        assert_ne!(arch(0), arch(1), "a fresh cell each meta-iteration");
        let (loss, _, grads) = trainer.iteration_gradient(0);
        assert!(loss.is_finite());
        let norm = |i: usize| grads[i].to_kind(Kind::Double).norm().double_value(&[]);
        assert!(norm(0).is_finite() && norm(0) > 0.0, "generator's first weight gets no meta-gradient");
        assert!(grads.iter().all(|g| g.isfinite().all().int64_value(&[]) == 1));
    }
}
