//! gtn as a library: a trained run's teacher teaches a fresh learner, whose accuracy on the real
//! test set is printed after every inner step. What `gtn eval` does for one learner, in the open.
//!
//! ```sh
//! cargo run --release --example teach -- runs/mnist-cpu [architecture seed]
//! ```

use std::path::PathBuf;

use anyhow::Context;
use rand::{rngs::StdRng, SeedableRng};

use gtn::inner::LearnerState;
use gtn::learner::Learner;
use gtn::{checkpoint, eval};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context("usage: teach RUN_DIR [SEED]")?);
    let seed: u64 = args.next().map_or(Ok(0), |s| s.parse()).context("SEED: expected a whole number")?;
    let device = tch::Device::cuda_if_available();

    // The last checkpoint's teacher: generator, learned curriculum, inner lr and momentum.
    let teacher = checkpoint::load(&dir, device)?.teacher;
    let config = &teacher.config;
    let test = eval::load_test_data(config, device)?.test;

    // A fresh learner of the kind the teacher was meta-trained for (`random` draws its widths),
    // scored with the batch-norm statistics the run was meta-trained to be scored with.
    let mut rng = StdRng::seed_from_u64(seed);
    let (image, classes) = config.dataset.shape();
    let learner = Learner::new(config.learner.sample(&mut rng), image, classes)?.scored_with(config.bn_eval);
    let start = LearnerState::new(learner.init(&mut rng, device));

    // One draw of the curriculum: a noise vector and labels per sample of each inner step.
    let plan = teacher.curriculum.plan(&mut rng, device);
    println!("{} ({} learner, T = {})", dir.display(), config.learner, config.inner_steps);
    println!("step 0: {:.2}%", 100.0 * eval::test_accuracy(&learner, &start, &test));
    // Without the graph (`create_graph` false): this trains the learner, not the teacher.
    teacher.teach(&learner, start, &plan, 0..config.inner_steps, false, |t, state| {
        println!("step {}: {:.2}%", t + 1, 100.0 * eval::test_accuracy(&learner, state, &test));
    });
    Ok(())
}
