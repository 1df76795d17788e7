//! Generative Teaching Networks: a generator learns synthetic training data such that a freshly
//! initialised learner trained on it for a few steps does well on real data.

pub mod data;
pub mod generator;
pub mod learner;
pub mod nn;
