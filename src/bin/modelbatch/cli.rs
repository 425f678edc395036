//! Command-line flags (clap) and the program's one-line error type.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default pixel normalisation (MNIST's mean and standard deviation of pixel/255).
pub const DEFAULT_NORMALIZE: &str = "0.1307,0.3081";

#[derive(Parser, Debug)]
#[command(
    name = "modelbatch",
    version,
    about = "Train a batch of G independent copies of one neural network at once on any WebGPU device"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Kernel shapes for this adapter, as `modelbatch tune` prints them (key=value,...;
    /// keys left out keep the adapter's defaults). Same as MODELBATCH_TUNING, which it replaces.
    #[arg(long, global = true, value_name = "KEY=V,...")]
    pub tuning: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the GPU adapter, backend, device type and the limits granted.
    Info,
    /// Train G models on an MNIST-format data set, evaluate them on its test split.
    Train(Box<TrainArgs>),
    /// Evaluate saved models (model-{i}.safetensors) on a split of an MNIST-format data set.
    Eval(EvalArgs),
    /// Time full training steps (gather, forward, loss, backward, SGD with momentum 0.9) on
    /// synthetic data: one JSON line per G on stdout, progress on stderr.
    Bench(BenchArgs),
    /// Measure which kernel shapes (workgroup sizes, register blocking, split-K) make a
    /// training step fastest on this adapter: one JSON line per candidate, then the best,
    /// to pass back as --tuning or MODELBATCH_TUNING.
    Tune(TuneArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptKind {
    /// SGD (momentum, dampening, Nesterov, weight decay), PyTorch's rule.
    Sgd,
    /// Adam (L2 weight decay), PyTorch's rule.
    Adam,
    /// AdamW (decoupled weight decay), PyTorch's rule.
    Adamw,
}

impl OptKind {
    pub fn name(self) -> &'static str {
        match self {
            OptKind::Sgd => "sgd",
            OptKind::Adam => "adam",
            OptKind::Adamw => "adamw",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    /// The t10k-* files.
    Test,
    /// The train-* files.
    Train,
}

const PER_MODEL: &str = "PER-MODEL";

#[derive(Args, Debug)]
#[command(after_help = "\
PER-MODEL values: each numeric optimizer flag takes one value for all models (0.1), exactly G \
comma-separated values (0.1,0.05,0.01), or log:A:B / lin:A:B for G values spread from A to B \
(log-spaced or evenly spaced, both ends included). Each of the two --betas takes one value or \
log:A:B / lin:A:B (a per-model list is not accepted there: the comma separates B1 from B2).")]
pub struct TrainArgs {
    /// The architecture: the built-in LeNet or a JSON model spec file.
    #[arg(long, value_name = "lenet|PATH.json", default_value = "lenet")]
    pub model: String,
    /// Number of models trained at once (G).
    #[arg(long, value_name = "G", default_value_t = 64)]
    pub models: usize,
    /// Shard the G models over this many devices, each training a consecutive slice: the
    /// first D adapters (WGPU_BACKEND / WGPU_ADAPTER_NAME filter them), or D devices opened
    /// on the best adapter when fewer exist (same results, no speed-up: for testing).
    #[arg(long, value_name = "D", default_value_t = 1)]
    pub devices: usize,
    /// Folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    /// t10k-labels-idx1-ubyte (each raw or .gz) [default: the embedded MNIST]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Start from DIR/model-0.safetensors … model-{G-1}.safetensors (PyTorch state dicts)
    /// instead of a fresh initialisation.
    #[arg(long, value_name = "DIR")]
    pub init: Option<PathBuf>,
    /// Number of training steps (each model sees --batch-size images per step).
    #[arg(long, value_name = "K", conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Number of epochs (full batches of the training set) [default: 1]
    #[arg(long, value_name = "E")]
    pub epochs: Option<u64>,
    /// Images per model per step.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub batch_size: usize,
    /// The optimizer.
    #[arg(long, value_enum, default_value_t = OptKind::Sgd)]
    pub optimizer: OptKind,
    /// Learning rate [default: 0.01 for sgd, 0.001 for adam and adamw]
    #[arg(long, value_name = PER_MODEL, allow_hyphen_values = true)]
    pub lr: Option<String>,
    /// SGD momentum [default: 0]
    #[arg(long, value_name = PER_MODEL, allow_hyphen_values = true)]
    pub momentum: Option<String>,
    /// SGD dampening [default: 0]
    #[arg(long, value_name = PER_MODEL, allow_hyphen_values = true)]
    pub dampening: Option<String>,
    /// Weight decay [default: 0 for sgd and adam, 0.01 for adamw]
    #[arg(long, value_name = PER_MODEL, allow_hyphen_values = true)]
    pub weight_decay: Option<String>,
    /// Adam/AdamW moment decay rates [default: 0.9,0.999]
    #[arg(long, value_name = "B1,B2", allow_hyphen_values = true)]
    pub betas: Option<String>,
    /// Adam/AdamW denominator term [default: 1e-8]
    #[arg(long, value_name = PER_MODEL, allow_hyphen_values = true)]
    pub eps: Option<String>,
    /// SGD with Nesterov momentum (needs --momentum > 0 and zero dampening).
    #[arg(long)]
    pub nesterov: bool,
    /// Step s uses samples [s*N, (s+1)*N) (modulo the set size) in file order, for every
    /// model. Default: each model shuffles each epoch with seed --seed + model index.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seed of the initialisation (model m from seed + m) and of the shuffles.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Pixel normalisation applied to pixel/255: (x - MEAN) / STD.
    #[arg(long, value_name = "MEAN,STD", default_value = DEFAULT_NORMALIZE, allow_hyphen_values = true)]
    pub normalize: String,
    /// Learning-rate schedule for every model: constant, step:SIZE:GAMMA or
    /// cosine:T_MAX[:ETA_MIN], optionally after warmup:STEPS, (e.g. warmup:100,cosine:900).
    #[arg(long, value_name = "SCHEDULE", default_value = "constant")]
    pub schedule: String,
    /// Read the metrics back (progress line, divergence check) every K steps.
    #[arg(long, value_name = "K", default_value_t = 50)]
    pub metrics_every: usize,
    /// Evaluate on the first N test images only [default: all of them].
    #[arg(long, value_name = "N")]
    pub test_samples: Option<usize>,
    /// Also score the trained models as one ensemble on the test images: per image the mean
    /// of their class probabilities (diverged models left out).
    #[arg(long)]
    pub ensemble: bool,
    /// Write model-{i}.safetensors, metrics.csv and summary.json to DIR (all or nothing:
    /// an existing DIR is replaced only once the new one is complete).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Save the run to DIR every --checkpoint-every and after the last step (models,
    /// optimizer state, settings and metrics so far, in a new DIR/step-S written atomically;
    /// older saves are removed after). When DIR holds a save of the same run (the same flags
    /// but those that do not change the training: --steps/--epochs, --metrics-every,
    /// --test-samples, --ensemble, --out and these two), the run continues from it, with the
    /// results of an uninterrupted run.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Population-based training: every K steps the models are scored on images held out of
    /// the training set (--pbt-valid); each of the worst --pbt-fraction becomes a copy of one
    /// of the best as many (weights, optimizer state, hyper-parameters), then each
    /// hyper-parameter given as several values is scaled by 0.8 or 1.25 (the learning rate if
    /// none is; for momentum and the betas, their distance to 1).
    #[arg(long, value_name = "K")]
    pub pbt: Option<u64>,
    /// Fraction of the models replaced each PBT round (and of the best they copy) [default:
    /// 0.25]
    #[arg(long, value_name = "F")]
    pub pbt_fraction: Option<f64>,
    /// Training images held out to score the models for PBT (the last N of the set)
    /// [default: a tenth of the set, at most 5000]
    #[arg(long, value_name = "N")]
    pub pbt_valid: Option<usize>,
    /// How often to save (with --checkpoint): every K steps, or every TIME of training (90s,
    /// 10m, 2h) [default: 5m]
    #[arg(long, value_name = "K|TIME", allow_hyphen_values = true)]
    pub checkpoint_every: Option<String>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The architecture: the built-in LeNet or a JSON model spec file.
    #[arg(long, value_name = "lenet|PATH.json", default_value = "lenet")]
    pub model: String,
    /// Number of models (G) [default: the number of model-{i}.safetensors files in --weights]
    #[arg(long, value_name = "G")]
    pub models: Option<usize>,
    /// Folder with model-0.safetensors … model-{G-1}.safetensors, or a `train --checkpoint`
    /// folder (its newest save; the model spec saved with it is the default --model) or one
    /// of its step-S saves.
    #[arg(long, value_name = "DIR")]
    pub weights: PathBuf,
    /// Folder with the MNIST-format IDX files (raw or .gz) [default: the embedded MNIST]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Which split to evaluate on.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Evaluate on the first N images of the split only [default: all of them].
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Print {"samples": n, "models": [{"model": i, "top1_count": …, "top5_count": …,
    /// "top1": …, "top5": …, "loss": …}, …]} instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also score the models as one ensemble: per image the mean of their class
    /// probabilities (models whose loss is NaN or infinite left out).
    #[arg(long)]
    pub ensemble: bool,
    /// Pixel normalisation applied to pixel/255: (x - MEAN) / STD.
    #[arg(long, value_name = "MEAN,STD", default_value = DEFAULT_NORMALIZE, allow_hyphen_values = true)]
    pub normalize: String,
    /// Images per model per evaluation pass [default: 500, or fewer where the adapter's
    /// per-binding limit needs it]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Each line: {\"models\": G, \"batch_size\": N, \"steps_per_s\": …, \"samples_per_s\": …, \"step_ms\": …, \"runs_steps_per_s\": […], \"steps\": K, \"warmup\": W, \"repeats\": R, \"adapter\": …, \"backend\": …, \"tuning\": …, \"model\": …}; steps_per_s is the median over the repetitions and samples_per_s = G × N × steps_per_s. A G that does not fit (memory estimate, the adapter's per-binding limit, --time-limit) or fails prints {\"models\": G, …, \"skipped\": \"<reason>\"} instead and the next G runs.")]
pub struct BenchArgs {
    /// The architecture: the built-in LeNet, an MLP 784-256-128-10, or a JSON model spec file.
    #[arg(long, value_name = "lenet|mlp|PATH.json", default_value = "lenet")]
    pub model: String,
    /// The values of G to measure, comma-separated, in this order.
    #[arg(long, value_name = "G[,G2,...]", default_value = "1,8,64")]
    pub models: String,
    /// Images per model per step.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub batch_size: usize,
    /// Timed steps per repetition.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub steps: u64,
    /// Repetitions (each K steps, ended by waiting for the GPU); the median is reported.
    #[arg(long, value_name = "R", default_value_t = 3)]
    pub repeats: usize,
    /// Untimed warm-up steps before the repetitions.
    #[arg(long, value_name = "W", default_value_t = 2)]
    pub warmup: u64,
    /// Skip a G whose estimated GPU memory exceeds M MiB [default: half the available
    /// system memory on a software (CPU) adapter, no limit on a GPU]
    #[arg(long, value_name = "M")]
    pub max_memory_mib: Option<u64>,
    /// Skip a G predicted (from the previous G) to take longer than S seconds, and every G
    /// after one that did.
    #[arg(long, value_name = "S")]
    pub time_limit: Option<f64>,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Each key in turn (gemm_wg, gemm_groups, gemm_tile, gemm_cols, gemm_rows, gemm_split, conv_lanes, conv_ob, grad_weight_ob, conv_strip, conv_pixel, conv_tile, tile_px, \
grad_weight_tile, tile_kib, grad_input_col, sum_split, serial_sum, split_threads, split_lanes, min_split_depth, update_tensors, reduce_lanes, folds, loop_counters) \
tries its candidate values with the others at their best so far; a value is kept when it is faster by \
--margin twice: a candidate that measures faster is measured again between two new measurements of the best \
(key \"confirm\"), and each of its two must beat the best's next one (so a machine whose speed drifts does not \
pick values). Candidates that compile to kernels already measured are skipped. Measurement lines are \
bench's, with \"tuning\" and \"key\" added; the last line is {\"best\": \"key=value,...\", \"steps_per_s\": …, \
\"start\": …, \"start_steps_per_s\": …, \"speedup\": …, …}.")]
pub struct TuneArgs {
    /// The architecture: the built-in LeNet, an MLP 784-256-128-10, or a JSON model spec file.
    #[arg(long, value_name = "lenet|mlp|PATH.json", default_value = "lenet")]
    pub model: String,
    /// Models trained at once (G) while measuring: tune for the G you will train.
    #[arg(long, value_name = "G", default_value_t = 64)]
    pub models: usize,
    /// Images per model per step.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub batch_size: usize,
    /// Timed steps per repetition.
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub steps: u64,
    /// Repetitions per candidate; the median counts.
    #[arg(long, value_name = "R", default_value_t = 3)]
    pub repeats: usize,
    /// Untimed warm-up steps per candidate.
    #[arg(long, value_name = "W", default_value_t = 1)]
    pub warmup: u64,
    /// Keep a value only when it is faster than the best so far by this fraction (in its
    /// measurement and again in a check against the best measured anew).
    #[arg(long, value_name = "F", default_value_t = 0.03)]
    pub margin: f64,
    /// Search only these keys, in this order (comma-separated; default: every key).
    #[arg(long, value_name = "KEY,...", value_delimiter = ',')]
    pub keys: Option<Vec<String>>,
    /// Save the best tuning for this adapter (name, backend, driver): every later run on it
    /// starts from it (MODELBATCH_TUNING and --tuning still apply on top). The folder is
    /// MODELBATCH_CACHE_DIR, else $XDG_CACHE_HOME/modelbatch, else ~/.cache/modelbatch.
    #[arg(long)]
    pub save: bool,
}

/// A failure to report: one line, naming the file or flag at fault (or saying where
/// Ctrl-C stopped the program).
#[derive(Debug)]
pub struct CliError {
    msg: String,
    interrupted: bool,
}

pub type Result<T> = std::result::Result<T, CliError>;

impl CliError {
    pub fn new(msg: impl fmt::Display) -> CliError {
        CliError { msg: one_line(&msg.to_string()), interrupted: false }
    }

    /// The program stopped at Ctrl-C (exit status 130, not 1).
    pub fn interrupted(msg: impl fmt::Display) -> CliError {
        CliError { interrupted: true, ..CliError::new(msg) }
    }

    pub fn is_interrupt(&self) -> bool {
        self.interrupted
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<modelbatch::Error> for CliError {
    fn from(e: modelbatch::Error) -> Self {
        CliError::new(e)
    }
}

impl From<modelbatch::data::DataError> for CliError {
    fn from(e: modelbatch::data::DataError) -> Self {
        CliError::new(e)
    }
}

/// Prefixes errors with what was being handled (a flag, a file).
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| CliError::new(format!("{what}: {e}")))
    }
}

/// Collapses a message onto one line.
pub fn one_line(msg: &str) -> String {
    msg.split(['\n', '\r']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Parses `MEAN,STD` (named by `flag` in errors).
pub fn parse_normalize(flag: &str, text: &str) -> Result<modelbatch::train::Normalize> {
    let bad = || CliError::new(format!("{flag} {text:?}: expected MEAN,STD (two numbers, STD > 0)"));
    let (m, s) = text.split_once(',').ok_or_else(bad)?;
    let mean: f32 = m.trim().parse().map_err(|_| bad())?;
    let std: f32 = s.trim().parse().map_err(|_| bad())?;
    if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
        return Err(bad());
    }
    Ok(modelbatch::train::Normalize { mean, std })
}
