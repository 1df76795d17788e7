//! Generative Teaching Networks: a generator learns synthetic training data such that a freshly
//! initialised learner trained on it for a few steps does well on real data.

#[cfg(feature = "jemalloc")]
mod allocator;
pub mod atomic;
pub mod bench;
pub mod checkpoint;
pub mod clock;
pub mod compare;
pub mod config;
pub mod curriculum;
pub mod custom;
pub mod data;
pub mod eval;
pub mod generator;
pub mod inner;
pub mod interrupt;
pub mod learner;
pub mod meta;
#[cfg(feature = "mkl-amd")]
mod mkl;
pub mod nas;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod profile;
pub mod progress;
pub mod report;
pub mod rl;
pub mod teacher;
pub mod text;
pub mod train;
