//! Criterion benchmark of one meta-step (full unroll and gradient-checkpointed) on the `tiny`
//! preset over the committed MNIST slice, so it runs anywhere in seconds. For the reference
//! configuration use `gtn bench --preset paper`.

use criterion::{criterion_group, criterion_main, Criterion};
use gtn::config::Config;
use gtn::data::fixture_dir;
use gtn::meta::Trainer;
use tch::Device;

fn meta_step(c: &mut Criterion) {
    for checkpoint_every in [0, 2] {
        let config =
            Config { data_dir: Some(fixture_dir()), checkpoint_every, meta_iters: 1_000_000, ..Config::tiny() };
        let dir = tempfile::tempdir().expect("scratch folder");
        let mut trainer = Trainer::create(&config, dir.path(), Device::cuda_if_available()).expect("tiny trainer");
        c.bench_function(&format!("meta_step_tiny_checkpoint_every_{checkpoint_every}"), |b| {
            b.iter(|| trainer.step().expect("finite meta-step"))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = meta_step
}
criterion_main!(benches);
