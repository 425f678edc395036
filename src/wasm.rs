//! The JavaScript API (wasm-bindgen; compiled for `wasm32` only): the same engine as the
//! native crate, driven from a page or from Node through WebGPU.
//!
//! Everything that touches the GPU returns a promise and never blocks the page: a training
//! call records and submits its steps at once, then awaits one batched metrics readback,
//! which the browser completes from its event loop. Calls on one trainer run one after
//! another in call order (an async lock), so a page may fire them without coordinating.
//! Failures reject with an `Error` whose message says what went wrong (bad shapes, a bad
//! spec, no WebGPU, a lost device); a lost device makes every later call reject with that
//! reason, and a new trainer can be created on a fresh device.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::lock::Mutex as AsyncMutex;
use js_sys::{Array, Float32Array, Object, Promise, Reflect, Uint32Array, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::future_to_promise;

use crate::error::{Error, Result};
use crate::gpu::{AdapterReport, Gpu, NO_WEBGPU_HINT};
use crate::nn::{BatchModel, ModelSpec};
use crate::optim::{Adam, HyperParam, PerModel, Sgd};
use crate::train::{
    Dataset, Evaluation, Evaluator, Normalize, Optimizer, Order, Predictor, StepMetrics, TrainConfig, Trainer as Engine,
};
use crate::tuning::{Search, Tuning};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** One value for every model, one value per model (an array or typed array of length G),
 * or a sweep: `{ logSpace: [min, max] }` / `{ linSpace: [min, max] }` spread over the G models. */
export type PerModelValue = number | ArrayLike<number> | { logSpace: [number, number] } | { linSpace: [number, number] };

/** A model described as data: PyTorch constructor argument names, `nn.Sequential` parameter names. */
export interface ModelSpecJson {
  /** Per-sample input shape: [C, H, W] or [F]. */
  input: number[];
  /** Layers in order, e.g. `{ type: "conv2d", out_channels: 6, kernel_size: 5 }`. */
  layers: Array<{ type: string; name?: string; [option: string]: unknown }>;
}

export interface TrainerOptions {
  /** `"lenet"`, a ModelSpec object, or its JSON text. */
  model: "lenet" | ModelSpecJson | string;
  /** Number of independent models G. */
  models: number;
  /** Default "sgd". */
  optimizer?: "sgd" | "adam" | "adamw";
  /** Learning rate (required). */
  lr: PerModelValue;
  /** SGD momentum (default 0). */
  momentum?: PerModelValue;
  /** SGD dampening (default 0). */
  dampening?: PerModelValue;
  /** SGD Nesterov momentum (default false). */
  nesterov?: boolean;
  /** Weight decay (default 0; AdamW: 0.01). */
  weightDecay?: PerModelValue;
  /** Adam betas and eps (defaults 0.9, 0.999, 1e-8). */
  beta1?: PerModelValue;
  beta2?: PerModelValue;
  eps?: PerModelValue;
  /** Images per model per step (default 64). */
  batchSize?: number;
  /** Images per model per evaluation pass (default: as many as fit the device's binding limit, at most 500). */
  evalBatch?: number;
  /** Sample order (default "per-model": each model shuffles with its own stream). */
  order?: "per-model" | "shared" | "sequential";
  /** Seed of the initialisation (model m uses seed + m) and of the shuffles (default 0). */
  seed?: number;
  /** Pixel normalisation `(p / 255 - mean) / std` (default MNIST's 0.1307, 0.3081). */
  normalize?: { mean: number; std: number };
  /** Steps whose metrics one readback carries at most (default 100). */
  metricsEvery?: number;
  /** Kernel shapes for this adapter as `modelbatch tune` prints them, e.g.
   * `"conv_lanes=128,split_threads=262144"` (keys left out keep the adapter's defaults). */
  tuning?: string;
}

/** Byte images and labels. */
export interface DatasetInput {
  /** N images, byte per pixel, image after image (a Uint8ClampedArray works too). */
  images: Uint8Array | Uint8ClampedArray;
  /** N labels, each below `classes`. */
  labels: Uint8Array;
  /** [N, C, H, W], [N, H, W] (one channel) or [N, F]. */
  shape: number[];
  /** Number of classes (default: the model's output size). */
  classes?: number;
  /** Used in error messages. */
  name?: string;
}

/** Per-step metrics of the latest `step(n)` call: row s, column m is model m at step `firstStep + s`. */
export interface StepMetricsResult {
  firstStep: number;
  steps: number;
  models: number;
  loss: Float32Array;
  correct: Uint32Array;
}

export interface EvaluationResult {
  samples: number;
  /** Top-1 accuracy per model, in [0, 1]. */
  top1: Float32Array;
  /** Top-5 accuracy per model, in [0, 1]. */
  top5: Float32Array;
  /** Mean cross-entropy per model. */
  loss: Float32Array;
}

export interface EnsembleResult {
  samples: number;
  /** The models averaged. */
  members: Uint32Array;
  /** Top-1 and top-5 accuracy of the mean probabilities, in [0, 1]. */
  top1: number;
  top5: number;
  /** Mean negative log of the ensemble's probability of the label. */
  loss: number;
}

export interface Prediction {
  classes: number;
  /** Probabilities, model after model: `probs[m * classes + c]`. */
  probs: Float32Array;
  /** Most probable class per model. */
  predicted: Uint32Array;
  ensemble: {
    /** Mean probability over the live (not diverged) models. */
    probs: Float32Array;
    /** Arg-max of the mean probabilities. */
    predicted: number;
    /** How many live models predict each class. */
    votes: Uint32Array;
    /** Models that took part. */
    models: number;
  };
}

export interface AdapterInfo {
  name: string;
  backend: string;
  deviceType: string;
  driver: string;
  maxStorageBuffersPerShaderStage: number;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupsPerDimension: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  /** The kernel shapes in use, `key=value,...`. */
  tuning: string;
}

/** How `tune` measures each candidate: `repeats` times `steps` training steps after `warmup`. */
export interface TuneSettings {
  /** Timed steps per repetition (default 5). */
  steps?: number;
  /** Repetitions; the median counts (default 3). */
  repeats?: number;
  /** Untimed steps first, which also compile the candidate's kernels (default 1). */
  warmup?: number;
  /** A value is kept only when this much faster than the best so far (default 0.03), in its
   * measurement and again when measured between two new measurements of the best (key "confirm"). */
  margin?: number;
  /** Search only these keys, in this order (default: every key). */
  keys?: string[];
  /** Called after each candidate. */
  onProgress?: (m: TuneMeasurement) => void;
}

export interface TuneMeasurement {
  /** The key being tried, or "start". */
  key: string;
  tuning: string;
  /** Median steps per second; null where the candidate compiles to kernels already measured, or failed. */
  stepsPerSecond: number | null;
  /** Why it was not measured. */
  skipped?: string;
}

export interface TuneResult {
  /** The fastest tuning: pass it as the `tuning` option of `Trainer.create`. */
  best: string;
  stepsPerSecond: number;
  start: string;
  startStepsPerSecond: number;
  /** How much faster `best` is than `start`: each kept value's gain over the value it
   * replaced, measured back to back (1 where nothing was kept). */
  speedup: number;
  measurements: TuneMeasurement[];
}
"#;

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Installs the panic hook: a panic (a bug; the API reports errors as rejections) is logged
/// with its stack and thrown as a readable JavaScript error instead of "unreachable".
#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        PANICKED.store(true, Ordering::SeqCst);
        let msg = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_else(|| {
            info.payload().downcast_ref::<String>().cloned().unwrap_or_else(|| "unknown panic".into())
        });
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        wasm_bindgen::throw_str(&format!(
            "modelbatch: internal error (a bug, please report it): {msg}{at}; reload the module to continue"
        ));
    }));
}

/// Resolves in a later task of the event loop (`setTimeout(0)`), letting the page render.
async fn next_task() {
    let promise = Promise::new(&mut |resolve, _| {
        let set_timeout = Reflect::get(&js_sys::global(), &"setTimeout".into()).ok();
        match set_timeout.and_then(|f| f.dyn_into::<js_sys::Function>().ok()) {
            Some(f) => {
                let _ = f.call2(&JsValue::UNDEFINED, &resolve, &JsValue::from(0));
            }
            None => {
                let _ = resolve.call0(&JsValue::UNDEFINED);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&format!("modelbatch: {e}")).into()
}

fn usage(msg: impl Into<String>) -> JsValue {
    js_err(Error::Usage(msg.into()))
}

fn check_not_panicked() -> std::result::Result<(), JsValue> {
    if PANICKED.load(Ordering::SeqCst) {
        return Err(usage("an earlier call hit an internal error; reload the module"));
    }
    Ok(())
}

/// Which browsers and flags provide WebGPU (the message shown where it is missing).
#[wasm_bindgen(js_name = webgpuHint)]
pub fn webgpu_hint() -> String {
    NO_WEBGPU_HINT.to_string()
}

/// The package version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Acquires a GPU device, with a browser-specific message where WebGPU is missing.
async fn acquire_gpu() -> Result<Gpu> {
    let nav = Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    let gpu = if nav.is_object() { Reflect::get(&nav, &"gpu".into()).unwrap_or(JsValue::UNDEFINED) } else { nav };
    if gpu.is_undefined() || gpu.is_null() {
        return Err(Error::NoAdapter(NO_WEBGPU_HINT.into()));
    }
    Gpu::new().await
}

fn adapter_object(r: &AdapterReport) -> JsValue {
    let o = Object::new();
    let set = |k: &str, v: JsValue| {
        let _ = Reflect::set(&o, &k.into(), &v);
    };
    set("name", r.name.clone().into());
    set("backend", r.backend.clone().into());
    set("deviceType", r.device_type.clone().into());
    set("driver", r.driver.clone().into());
    set("maxStorageBuffersPerShaderStage", r.max_storage_buffers_per_shader_stage.into());
    set("maxStorageBufferBindingSize", (r.max_storage_buffer_binding_size as f64).into());
    set("maxBufferSize", (r.max_buffer_size as f64).into());
    set("maxComputeWorkgroupsPerDimension", r.max_compute_workgroups_per_dimension.into());
    set("maxComputeWorkgroupStorageSize", r.max_compute_workgroup_storage_size.into());
    set("maxComputeInvocationsPerWorkgroup", r.max_compute_invocations_per_workgroup.into());
    set("tuning", r.tuning.clone().into());
    o.into()
}

struct TuneSettings {
    steps: u64,
    repeats: usize,
    warmup: u64,
    margin: f64,
    keys: Option<Vec<String>>,
    on_progress: Option<js_sys::Function>,
}

fn parse_tune_settings(v: &JsValue) -> std::result::Result<TuneSettings, JsValue> {
    let mut st = TuneSettings { steps: 5, repeats: 3, warmup: 1, margin: 0.03, keys: None, on_progress: None };
    if v.is_undefined() || v.is_null() {
        return Ok(st);
    }
    if !v.is_object() {
        return Err(usage("tune settings must be an object { steps, repeats, warmup, margin, keys, onProgress }"));
    }
    let keys: Array = Object::keys(v.unchecked_ref::<Object>());
    for key in keys.iter() {
        let k = key.as_string().unwrap_or_default();
        if !["steps", "repeats", "warmup", "margin", "keys", "onProgress"].contains(&k.as_str()) {
            return Err(usage(format!(
                "unknown tune setting {k:?} (expected steps, repeats, warmup, margin, keys, onProgress)"
            )));
        }
    }
    if let Some(x) = get(v, "steps") {
        st.steps = count(&x, "steps")? as u64;
    }
    if let Some(x) = get(v, "repeats") {
        st.repeats = count(&x, "repeats")?;
    }
    if let Some(x) = get(v, "warmup") {
        st.warmup = count(&x, "warmup")? as u64;
    }
    if st.steps == 0 || st.repeats == 0 {
        return Err(usage("tune: steps and repeats must be at least 1"));
    }
    if let Some(x) = get(v, "margin") {
        st.margin = number(&x, "margin")?;
        if !(0.0..1.0).contains(&st.margin) {
            return Err(usage("tune: margin must be a fraction from 0 to 1"));
        }
    }
    if let Some(x) = get(v, "keys") {
        let list = x.dyn_into::<Array>().map_err(|_| usage("tune: keys must be an array of tuning key names"))?;
        let keys = list.iter().map(|k| k.as_string().ok_or_else(|| usage("tune: keys must be strings")));
        st.keys = Some(keys.collect::<std::result::Result<_, _>>()?);
    }
    if let Some(f) = get(v, "onProgress") {
        st.on_progress = Some(f.dyn_into::<js_sys::Function>().map_err(|_| usage("onProgress must be a function"))?);
    }
    Ok(st)
}

/// Measures which kernel shapes make a training step of `options` fastest on this adapter,
/// as `modelbatch tune` does natively (`tuning::Search`): throwaway models of the options'
/// architecture and seed train on `dataset` under each candidate. Resolves to `{ best,
/// speedup, measurements, ... }`; pass `best` as the `tuning` option of `Trainer.create`.
/// Yields to the event loop between candidates and repetitions.
#[wasm_bindgen(unchecked_return_type = "Promise<TuneResult>")]
pub fn tune(
    #[wasm_bindgen(unchecked_param_type = "TrainerOptions")] options: JsValue,
    #[wasm_bindgen(unchecked_param_type = "DatasetInput")] dataset: JsValue,
    #[wasm_bindgen(unchecked_param_type = "TuneSettings | undefined")] settings: JsValue,
) -> Promise {
    future_to_promise(async move {
        check_not_panicked()?;
        let o = parse_options(&options)?;
        let data = parse_dataset(&dataset, &o.spec, "train")?;
        let st = parse_tune_settings(&settings)?;
        let mut gpu = acquire_gpu().await.map_err(js_err)?;
        if let Some(text) = &o.tuning {
            gpu = gpu.tuning().apply(text).and_then(|t| gpu.with_tuning(t)).map_err(js_err)?;
        }
        let result = tune_on(&gpu, &o, &data, &st).await;
        gpu.device.destroy();
        result
    })
}

async fn tune_on(gpu: &Gpu, o: &Options, data: &Dataset, st: &TuneSettings) -> std::result::Result<JsValue, JsValue> {
    let model = BatchModel::new(gpu, &o.spec, o.g, o.seed).map_err(js_err)?;
    let mut search = Search::new(gpu.tuning(), gpu.limits(), st.margin);
    if let Some(keys) = &st.keys {
        search = search.only(keys).map_err(js_err)?;
    }
    let mut seen = Vec::new();
    let rows = Array::new();
    while let Some((key, t)) = search.next_candidate() {
        let row = Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = Reflect::set(&row, &k.into(), &v);
        };
        set("key", key.into());
        set("tuning", t.to_string().into());
        match measure_tuning(gpu, &model, data, o, st, t, key == crate::tuning::CONFIRM, &mut seen).await {
            Ok(rate) => {
                set("stepsPerSecond", rate.map_or(JsValue::NULL, JsValue::from));
                if rate.is_none() {
                    set("skipped", "compiles to kernels already measured".into());
                }
                search.record(rate);
            }
            Err(e) if key == "start" => return Err(js_err(e)),
            Err(e) => {
                set("stepsPerSecond", JsValue::NULL);
                set("skipped", e.to_string().into());
                search.record(None);
            }
        }
        if let Some(f) = &st.on_progress {
            let _ = f.call1(&JsValue::NULL, &row);
        }
        rows.push(&row);
        next_task().await;
    }
    let ((best, rate), (start, base)) = (search.best(), search.start());
    let out = Object::new();
    let set = |k: &str, v: JsValue| {
        let _ = Reflect::set(&out, &k.into(), &v);
    };
    set("best", best.to_string().into());
    set("stepsPerSecond", rate.into());
    set("start", start.to_string().into());
    set("startStepsPerSecond", base.into());
    set("speedup", search.speedup().into());
    set("measurements", rows.into());
    Ok(out.into())
}

/// Median steps per second of a training step under `t`, or `None` where its plan's kernels
/// and grids equal one measured already (unless `again`: a search's check).
#[allow(clippy::too_many_arguments)]
async fn measure_tuning(
    gpu: &Gpu,
    model: &BatchModel,
    data: &Dataset,
    o: &Options,
    st: &TuneSettings,
    t: Tuning,
    again: bool,
    seen: &mut Vec<crate::plan::Signature>,
) -> Result<Option<f64>> {
    let view = gpu.with_tuning(t)?;
    let mut engine = Engine::new(&view, model, data, o.optimizer.clone(), o.config.clone())?;
    let signature = engine.plan().signature();
    if !again && seen.contains(&signature) {
        return Ok(None);
    }
    seen.push(signature);
    engine.train_async(st.warmup, |_| {}).await?;
    engine.finish_async(|_| {}).await?;
    let mut runs = Vec::with_capacity(st.repeats);
    for _ in 0..st.repeats {
        next_task().await;
        let t0 = js_sys::Date::now();
        engine.train_async(st.steps, |_| {}).await?;
        // The metrics readback completes once the GPU has run every step.
        engine.finish_async(|_| {}).await?;
        let seconds = ((js_sys::Date::now() - t0) / 1000.0).max(1e-4);
        runs.push(st.steps as f64 / seconds);
    }
    view.take_error()?;
    runs.sort_by(f64::total_cmp);
    Ok(Some(runs[runs.len() / 2]))
}

/// The adapter this browser (or Node's `navigator.gpu`) would give a trainer, and its limits.
#[wasm_bindgen(js_name = adapterInfo, unchecked_return_type = "Promise<AdapterInfo>")]
pub fn adapter_info() -> Promise {
    future_to_promise(async move {
        check_not_panicked()?;
        let gpu = acquire_gpu().await.map_err(js_err)?;
        let info = adapter_object(&gpu.report());
        gpu.device.destroy();
        Ok(info)
    })
}

// ---- reading JavaScript values -------------------------------------------------------------

fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(obj, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn number(v: &JsValue, what: &str) -> std::result::Result<f64, JsValue> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| usage(format!("{what} must be a finite number")))
}

fn count(v: &JsValue, what: &str) -> std::result::Result<usize, JsValue> {
    let x = number(v, what)?;
    if x < 0.0 || x.fract() != 0.0 || x > u32::MAX as f64 {
        return Err(usage(format!("{what} must be a non-negative integer, got {x}")));
    }
    Ok(x as usize)
}

fn numbers(v: &JsValue, what: &str) -> std::result::Result<Vec<f64>, JsValue> {
    if !(Array::is_array(v) || js_sys::ArrayBuffer::is_view(v)) {
        return Err(usage(format!("{what} must be an array or a typed array")));
    }
    let out = js_sys::Float64Array::new(v).to_vec();
    if let Some(i) = out.iter().position(|x| !x.is_finite()) {
        return Err(usage(format!("{what}[{i}] is not a finite number")));
    }
    Ok(out)
}

fn per_model(v: &JsValue, what: &str, g: usize) -> std::result::Result<PerModel, JsValue> {
    if v.as_f64().is_some() {
        return Ok(PerModel::Same(number(v, what)? as f32));
    }
    if v.is_object() && !js_sys::ArrayBuffer::is_view(v) && !Array::is_array(v) {
        for (key, log) in [("logSpace", true), ("linSpace", false)] {
            if let Some(range) = get(v, key) {
                let r = numbers(&range, &format!("{what}.{key}"))?;
                if r.len() != 2 || (log && (r[0] <= 0.0 || r[1] <= 0.0)) {
                    let pos = if log { " with both > 0" } else { "" };
                    return Err(usage(format!("{what}.{key} must be [min, max]{pos}")));
                }
                let (a, b) = (r[0] as f32, r[1] as f32);
                return Ok(if log { PerModel::log_space(a, b, g) } else { PerModel::lin_space(a, b, g) });
            }
        }
        return Err(usage(format!(
            "{what} must be a number, an array, a typed array, {{logSpace: [a, b]}} or {{linSpace: [a, b]}}"
        )));
    }
    let v = numbers(v, what)?;
    if v.len() != g {
        return Err(usage(format!("{what}: {} values given for {g} models", v.len())));
    }
    Ok(PerModel::Each(v.into_iter().map(|x| x as f32).collect()))
}

fn bytes(v: &JsValue, what: &str) -> std::result::Result<Vec<u8>, JsValue> {
    if let Some(a) = v.dyn_ref::<Uint8Array>() {
        Ok(a.to_vec())
    } else if v.is_instance_of::<js_sys::Uint8ClampedArray>() {
        Ok(Uint8Array::new(v).to_vec())
    } else {
        Err(usage(format!("{what} must be a Uint8Array")))
    }
}

const OPTION_KEYS: &[&str] = &[
    "model",
    "models",
    "optimizer",
    "lr",
    "momentum",
    "dampening",
    "nesterov",
    "weightDecay",
    "beta1",
    "beta2",
    "eps",
    "batchSize",
    "evalBatch",
    "order",
    "seed",
    "normalize",
    "metricsEvery",
    "tuning",
];

struct Options {
    spec: ModelSpec,
    g: usize,
    seed: u64,
    optimizer: Optimizer,
    config: TrainConfig,
    eval_batch: Option<usize>,
    tuning: Option<String>,
}

fn parse_options(o: &JsValue) -> std::result::Result<Options, JsValue> {
    if !o.is_object() {
        return Err(usage("Trainer.create needs an options object: { model, models, lr, ... }"));
    }
    let keys: Array = Object::keys(o.unchecked_ref::<Object>());
    for key in keys.iter() {
        let k = key.as_string().unwrap_or_default();
        if !OPTION_KEYS.contains(&k.as_str()) {
            return Err(usage(format!("unknown option {k:?} (expected one of {})", OPTION_KEYS.join(", "))));
        }
    }
    let spec_value = get(o, "model").ok_or_else(|| usage("option `model` is required (\"lenet\" or a ModelSpec)"))?;
    let spec = if let Some(text) = spec_value.as_string() {
        ModelSpec::from_json(&text)
    } else {
        let text =
            js_sys::JSON::stringify(&spec_value).map_err(|_| usage("option `model` is not JSON-serialisable"))?;
        ModelSpec::from_json(&String::from(text))
    }
    .map_err(js_err)?;
    let g = count(&get(o, "models").ok_or_else(|| usage("option `models` (G) is required"))?, "models")?;
    if g == 0 {
        return Err(usage("models must be at least 1"));
    }
    let pm = |key: &str, default: f32| -> std::result::Result<PerModel, JsValue> {
        Ok(match get(o, key) {
            Some(v) => per_model(&v, key, g)?,
            None => PerModel::Same(default),
        })
    };
    let lr = per_model(&get(o, "lr").ok_or_else(|| usage("option `lr` is required"))?, "lr", g)?;
    let kind = match get(o, "optimizer") {
        None => "sgd".to_string(),
        Some(v) => v.as_string().ok_or_else(|| usage("optimizer must be \"sgd\", \"adam\" or \"adamw\""))?,
    };
    let sgd_only = ["momentum", "dampening", "nesterov"];
    let adam_only = ["beta1", "beta2", "eps"];
    let misplaced = |keys: &[&str]| keys.iter().find(|k| get(o, k).is_some()).map(|k| k.to_string());
    let optimizer = match kind.as_str() {
        "sgd" => {
            if let Some(k) = misplaced(&adam_only) {
                return Err(usage(format!("option `{k}` belongs to adam/adamw, not sgd")));
            }
            let nesterov = match get(o, "nesterov") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| usage("nesterov must be true or false"))?,
            };
            Optimizer::Sgd(
                Sgd::new(lr)
                    .momentum(pm("momentum", 0.0)?)
                    .dampening(pm("dampening", 0.0)?)
                    .weight_decay(pm("weightDecay", 0.0)?)
                    .nesterov(nesterov),
            )
        }
        "adam" | "adamw" => {
            if let Some(k) = misplaced(&sgd_only) {
                return Err(usage(format!("option `{k}` belongs to sgd, not {kind}")));
            }
            let a = if kind == "adam" { Adam::new(lr) } else { Adam::adamw(lr) };
            let wd = pm("weightDecay", if kind == "adam" { 0.0 } else { 0.01 })?;
            Optimizer::Adam(a.betas(pm("beta1", 0.9)?, pm("beta2", 0.999)?).eps(pm("eps", 1e-8)?).weight_decay(wd))
        }
        other => return Err(usage(format!("unknown optimizer {other:?} (expected \"sgd\", \"adam\" or \"adamw\")"))),
    };
    // Check the hyper-parameters now, so that a bad one is reported by `create`.
    match &optimizer {
        Optimizer::Sgd(s) => s.rows(g).map(|_| ()),
        Optimizer::Adam(a) => a.rows(g).map(|_| ()),
    }
    .map_err(js_err)?;
    let mut config = TrainConfig { metrics_every: 100, ..TrainConfig::default() };
    if let Some(v) = get(o, "batchSize") {
        config.batch_size = count(&v, "batchSize")?;
    }
    if let Some(v) = get(o, "metricsEvery") {
        config.metrics_every = count(&v, "metricsEvery")?;
    }
    if config.batch_size == 0 || config.metrics_every == 0 {
        return Err(usage("batchSize and metricsEvery must be at least 1"));
    }
    let seed = match get(o, "seed") {
        Some(v) => count(&v, "seed")? as u64,
        None => 0,
    };
    config.seed = seed;
    if let Some(v) = get(o, "order") {
        config.order = match v.as_string().as_deref() {
            Some("per-model") => Order::PerModel,
            Some("shared") => Order::Shared,
            Some("sequential") => Order::Sequential,
            _ => return Err(usage("order must be \"per-model\", \"shared\" or \"sequential\"")),
        };
    }
    if let Some(v) = get(o, "normalize") {
        let mean = number(&get(&v, "mean").unwrap_or(JsValue::UNDEFINED), "normalize.mean")? as f32;
        let std = number(&get(&v, "std").unwrap_or(JsValue::UNDEFINED), "normalize.std")? as f32;
        if std <= 0.0 {
            return Err(usage("normalize.std must be > 0"));
        }
        config.normalize = Normalize { mean, std };
    }
    let eval_batch = match get(o, "evalBatch") {
        Some(v) => match count(&v, "evalBatch")? {
            0 => return Err(usage("evalBatch must be at least 1")),
            n => Some(n),
        },
        None => None,
    };
    let tuning = match get(o, "tuning") {
        Some(v) => {
            let text = v.as_string().ok_or_else(|| usage("tuning must be a string such as \"conv_lanes=128\""))?;
            // Checked now against the ranges, against the device's limits once it is acquired.
            Tuning::default().apply(&text).map_err(js_err)?;
            Some(text)
        }
        None => None,
    };
    Ok(Options { spec, g, seed, optimizer, config, eval_batch, tuning })
}

fn parse_dataset(v: &JsValue, spec: &ModelSpec, default_name: &str) -> std::result::Result<Dataset, JsValue> {
    if !v.is_object() {
        return Err(usage("a dataset must be an object { images, labels, shape }"));
    }
    let name = get(v, "name").and_then(|n| n.as_string()).unwrap_or_else(|| default_name.to_string());
    let images = bytes(&get(v, "images").unwrap_or(JsValue::UNDEFINED), &format!("{name}.images"))?;
    let labels = bytes(&get(v, "labels").unwrap_or(JsValue::UNDEFINED), &format!("{name}.labels"))?;
    let shape: Vec<usize> = numbers(&get(v, "shape").unwrap_or(JsValue::UNDEFINED), &format!("{name}.shape"))?
        .into_iter()
        .map(|x| {
            if x >= 0.0 && x.fract() == 0.0 {
                Ok(x as usize)
            } else {
                Err(usage(format!("{name}.shape must hold non-negative integers")))
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    if shape.len() < 2 || shape.len() > 4 {
        return Err(usage(format!("{name}.shape must be [N, C, H, W], [N, H, W] or [N, F], got {shape:?}")));
    }
    let n = shape[0];
    let mut sample = shape[1..].to_vec();
    if sample.len() == 2 {
        sample.insert(0, 1);
    }
    let pixels: usize = sample.iter().product();
    if images.len() != n * pixels {
        return Err(usage(format!("{name}: shape {shape:?} needs {} image bytes, got {}", n * pixels, images.len())));
    }
    if labels.len() != n {
        return Err(usage(format!("{name}: {n} images but {} labels", labels.len())));
    }
    let want: usize = spec.input.iter().product();
    if pixels != want {
        return Err(usage(format!(
            "{name}: samples of shape {sample:?} ({pixels} values) do not fit the model's input {:?} ({want} values)",
            spec.input
        )));
    }
    let out_classes = spec.shapes().map_err(js_err)?.last().and_then(|s| s.last().copied()).unwrap_or(0);
    let classes = match get(v, "classes") {
        Some(c) => count(&c, &format!("{name}.classes"))?,
        None => out_classes,
    };
    if classes != out_classes {
        return Err(usage(format!("{name}: {classes} classes, but the model outputs {out_classes} scores per sample")));
    }
    Ok(Dataset { images, labels, n, sample: spec.input.clone(), classes, name })
}

// ---- the trainer ---------------------------------------------------------------------------

/// Work state behind the async lock.
struct State {
    /// Borrows `Shared::gpu` and `Shared::model` (see `Shared`'s safety note).
    engine: Option<Engine<'static>>,
    evaluator: Option<Evaluator>,
    predictor: Option<Predictor>,
    /// Optimizer of the next engine (a new dataset compiles a new training step).
    optimizer: Optimizer,
    config: TrainConfig,
}

impl State {
    /// The training engine, which `setDataset` makes; `call` names the call that needs it.
    fn engine(&mut self, call: &str) -> std::result::Result<&mut Engine<'static>, JsValue> {
        self.engine.as_mut().ok_or_else(|| usage(format!("no dataset: call setDataset before {call}")))
    }
}

/// One trainer's device, models and state.
///
/// Safety: `gpu` and `model` are leaked boxes owned by this struct. The engine in
/// `state` holds `'static` references to them that never leave `Shared`; `Drop` drops the
/// engine before freeing the boxes, and every future that uses them holds an `Rc<Shared>`.
struct Shared {
    state: AsyncMutex<State>,
    gpu: NonNull<Gpu>,
    model: NonNull<BatchModel>,
    g: usize,
    classes: usize,
    eval_batch: Option<usize>,
    report: AdapterReport,
    /// Each model's base learning rate (setHyper and copyModel change it).
    lr: RefCell<Vec<f32>>,
    step: Cell<u64>,
    destroyed: Cell<bool>,
    dead: RefCell<Vec<bool>>,
    last: RefCell<Vec<StepMetrics>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.state.get_mut().engine = None;
        // SAFETY: both were created by `Box::leak` in `Trainer::create`; nothing borrows them
        // any more (the engine is gone and no future holds this `Shared`).
        unsafe {
            drop(Box::from_raw(self.model.as_ptr()));
            drop(Box::from_raw(self.gpu.as_ptr()));
        }
    }
}

impl Shared {
    fn gpu(&self) -> &'static Gpu {
        // SAFETY: see the struct's note; the reference is only stored inside `self.state`.
        unsafe { &*self.gpu.as_ptr() }
    }

    fn model(&self) -> &'static BatchModel {
        // SAFETY: as for `gpu`.
        unsafe { &*self.model.as_ptr() }
    }

    /// The device-lost reason, as an error, once the device is gone.
    fn check_device(&self) -> std::result::Result<(), JsValue> {
        check_not_panicked()?;
        if self.destroyed.get() {
            return Err(usage("the GPU device was destroyed (Trainer.destroy()); create a new Trainer to continue"));
        }
        match self.gpu().lost() {
            Some(why) => Err(js_err(format!("the GPU {why}; create a new Trainer to continue"))),
            None => Ok(()),
        }
    }

    /// An engine error, reworded when the cause was a lost device.
    fn fail(&self, e: Error) -> JsValue {
        match self.gpu().lost() {
            Some(why) => js_err(format!("the GPU {why} ({e}); create a new Trainer to continue")),
            None => js_err(e),
        }
    }

    /// Evaluation batch: the requested one, or as many samples as keep the largest
    /// activation of all G models within one storage binding (at most 500).
    fn eval_batch(&self) -> usize {
        if let Some(b) = self.eval_batch {
            return b;
        }
        let spec = self.model().spec();
        let per_sample = spec
            .shapes()
            .map(|s| s.iter().map(|x| x.iter().product::<usize>()).max().unwrap_or(1))
            .unwrap_or(1)
            .max(spec.input.iter().product());
        let limit = self.report.max_storage_buffer_binding_size.min(self.report.max_buffer_size) as usize;
        (limit / (4 * per_sample * self.g).max(1)).clamp(1, 500)
    }
}

/// G independent models trained at once on the GPU.
#[wasm_bindgen]
pub struct Trainer {
    shared: Rc<Shared>,
}

fn f32_array(v: &[f32]) -> Float32Array {
    Float32Array::from(v)
}

fn evaluation_object(ev: &Evaluation) -> JsValue {
    let g = ev.top1.len();
    let o = Object::new();
    let _ = Reflect::set(&o, &"samples".into(), &(ev.samples as f64).into());
    let top1: Vec<f32> = (0..g).map(|m| ev.top1_frac(m) as f32).collect();
    let top5: Vec<f32> = (0..g).map(|m| ev.top5_frac(m) as f32).collect();
    let loss: Vec<f32> = ev.loss.iter().map(|&l| l as f32).collect();
    let _ = Reflect::set(&o, &"top1".into(), &f32_array(&top1));
    let _ = Reflect::set(&o, &"top5".into(), &f32_array(&top5));
    let _ = Reflect::set(&o, &"loss".into(), &f32_array(&loss));
    o.into()
}

fn prediction_object(probs: &[f32], g: usize, classes: usize, dead: &[bool]) -> JsValue {
    let argmax = |p: &[f32]| {
        p.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
    };
    let predicted: Vec<u32> = (0..g).map(|m| argmax(&probs[m * classes..(m + 1) * classes]) as u32).collect();
    let live: Vec<usize> = (0..g)
        .filter(|&m| !dead.get(m).copied().unwrap_or(false))
        .filter(|&m| probs[m * classes..(m + 1) * classes].iter().all(|p| p.is_finite()))
        .collect();
    let mut mean = vec![0f32; classes];
    let mut votes = vec![0u32; classes];
    for &m in &live {
        for c in 0..classes {
            mean[c] += probs[m * classes + c] / live.len() as f32;
        }
        votes[predicted[m] as usize] += 1;
    }
    let ensemble = Object::new();
    let _ = Reflect::set(&ensemble, &"probs".into(), &f32_array(&mean));
    let _ = Reflect::set(&ensemble, &"predicted".into(), &(argmax(&mean) as u32).into());
    let _ = Reflect::set(&ensemble, &"votes".into(), &Uint32Array::from(votes.as_slice()));
    let _ = Reflect::set(&ensemble, &"models".into(), &(live.len() as u32).into());
    let o = Object::new();
    let _ = Reflect::set(&o, &"classes".into(), &(classes as u32).into());
    let _ = Reflect::set(&o, &"probs".into(), &f32_array(probs));
    let _ = Reflect::set(&o, &"predicted".into(), &Uint32Array::from(predicted.as_slice()));
    let _ = Reflect::set(&o, &"ensemble".into(), &ensemble);
    o.into()
}

impl Trainer {
    /// Runs `f` on the state once the calls before it have finished, as a promise.
    fn run<F, Fut>(&self, f: F) -> Promise
    where
        F: FnOnce(Rc<Shared>) -> Fut + 'static,
        Fut: std::future::Future<Output = std::result::Result<JsValue, JsValue>> + 'static,
    {
        let shared = self.shared.clone();
        future_to_promise(async move {
            shared.check_device()?;
            f(shared).await
        })
    }

    fn check_model(&self, m: usize) -> std::result::Result<(), JsValue> {
        if m >= self.shared.g {
            return Err(usage(format!("model {m} does not exist: the trainer has {} models", self.shared.g)));
        }
        Ok(())
    }
}

#[wasm_bindgen]
impl Trainer {
    /// Acquires a WebGPU device and creates G models of the given spec, initialised as
    /// PyTorch initialises them (model m from seed + m). Rejects with a clear message when
    /// WebGPU is missing or an option is wrong.
    pub async fn create(
        #[wasm_bindgen(unchecked_param_type = "TrainerOptions")] options: JsValue,
    ) -> std::result::Result<Trainer, JsValue> {
        check_not_panicked()?;
        let o = parse_options(&options)?;
        let mut gpu = acquire_gpu().await.map_err(js_err)?;
        if let Some(text) = &o.tuning {
            gpu = gpu.tuning().apply(text).and_then(|t| gpu.with_tuning(t)).map_err(js_err)?;
        }
        let model = BatchModel::new(&gpu, &o.spec, o.g, o.seed).map_err(js_err)?;
        gpu.take_error().map_err(js_err)?;
        let lr = match &o.optimizer {
            Optimizer::Sgd(s) => s.rows(o.g).map(|r| r.iter().map(|x| x[0]).collect()),
            Optimizer::Adam(a) => a.rows(o.g).map(|r| r.iter().map(|x| x[0]).collect()),
        }
        .map_err(js_err)?;
        let classes = o.spec.shapes().map_err(js_err)?.last().and_then(|s| s.last().copied()).unwrap_or(0);
        let report = gpu.report();
        let shared = Shared {
            state: AsyncMutex::new(State {
                engine: None,
                evaluator: None,
                predictor: None,
                optimizer: o.optimizer,
                config: o.config,
            }),
            gpu: NonNull::from(Box::leak(Box::new(gpu))),
            model: NonNull::from(Box::leak(Box::new(model))),
            g: o.g,
            classes,
            eval_batch: o.eval_batch,
            report,
            lr: RefCell::new(lr),
            step: Cell::new(0),
            destroyed: Cell::new(false),
            dead: RefCell::new(vec![false; o.g]),
            last: RefCell::new(Vec::new()),
        };
        Ok(Trainer { shared: Rc::new(shared) })
    }

    /// Number of models G.
    #[wasm_bindgen(getter)]
    pub fn models(&self) -> usize {
        self.shared.g
    }

    /// Scores per sample the model outputs (classes).
    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> usize {
        self.shared.classes
    }

    /// Training steps taken so far (since the last `setDataset`).
    #[wasm_bindgen(getter, js_name = stepCount)]
    pub fn step_count(&self) -> f64 {
        self.shared.step.get() as f64
    }

    /// Each model's learning rate.
    #[wasm_bindgen(js_name = learningRates)]
    pub fn learning_rates(&self) -> Float32Array {
        f32_array(&self.shared.lr.borrow())
    }

    /// 1 for each model frozen because its loss became NaN or infinite, else 0.
    pub fn diverged(&self) -> Uint8Array {
        let d: Vec<u8> = self.shared.dead.borrow().iter().map(|&b| u8::from(b)).collect();
        Uint8Array::from(d.as_slice())
    }

    /// The adapter in use and the limits granted.
    #[wasm_bindgen(js_name = adapterInfo, unchecked_return_type = "AdapterInfo")]
    pub fn adapter_info(&self) -> JsValue {
        adapter_object(&self.shared.report)
    }

    /// Why the GPU device was lost, or undefined while it works.
    #[wasm_bindgen(getter, js_name = deviceLost)]
    pub fn device_lost(&self) -> Option<String> {
        self.shared.gpu().lost()
    }

    /// Uploads the training set and compiles the training step (forward, loss, backward,
    /// optimizer: one submit per step). A new dataset restarts the optimizer state and the
    /// step count; the weights are kept.
    #[wasm_bindgen(js_name = setDataset, unchecked_return_type = "Promise<void>")]
    pub fn set_dataset(&self, #[wasm_bindgen(unchecked_param_type = "DatasetInput")] dataset: JsValue) -> Promise {
        let data = parse_dataset(&dataset, self.shared.model().spec(), "train");
        self.run(move |s| async move {
            let data = data?;
            let mut st = s.state.lock().await;
            // Hyper-parameters changed by setHyper or copyModel carry over to the new engine.
            let changed: Vec<(usize, HyperParam, f32)> = match &st.engine {
                Some(old) => (0..s.g)
                    .flat_map(|m| {
                        HyperParam::ALL.into_iter().filter_map(move |h| old.hyper(m, h).ok().map(|v| (m, h, v)))
                    })
                    .collect(),
                None => Vec::new(),
            };
            st.engine = None;
            let mut engine = Engine::new(s.gpu(), s.model(), &data, st.optimizer.clone(), st.config.clone())
                .map_err(|e| s.fail(e))?;
            for (m, h, v) in changed {
                engine.set_hyper(m, h, v).map_err(|e| s.fail(e))?;
            }
            s.gpu().take_error().map_err(|e| s.fail(e))?;
            st.engine = Some(engine);
            s.step.set(0);
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Runs `n` training steps and resolves to each model's loss at the last of them (the
    /// mean cross-entropy of its batch before the update). The steps are submitted at once;
    /// their metrics come back in one readback per `metricsEvery` steps.
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn step(&self, n: u32) -> Promise {
        self.run(move |s| async move {
            if n == 0 {
                return Err(usage("step(n): n must be at least 1"));
            }
            let mut st = s.state.lock().await;
            let engine = st.engine("step")?;
            let mut got: Vec<StepMetrics> = Vec::with_capacity(n as usize);
            let first = engine.step();
            let result = async {
                // Record and submit in slices of about 10 ms, yielding to the event loop in
                // between, so that a large n never freezes the page.
                let mut left = n as u64;
                while left > 0 {
                    let t0 = js_sys::Date::now();
                    let mut slice = 0;
                    while left > 0 && (slice == 0 || js_sys::Date::now() - t0 < 10.0) {
                        engine.train_async(1, |m| got.extend_from_slice(m)).await?;
                        left -= 1;
                        slice += 1;
                    }
                    if left > 0 {
                        next_task().await;
                    }
                }
                engine.finish_async(|m| got.extend_from_slice(m)).await?;
                s.gpu().take_error()
            }
            .await;
            s.step.set(engine.step());
            *s.dead.borrow_mut() = engine.dead().to_vec();
            result.map_err(|e| s.fail(e))?;
            got.retain(|m| m.step >= first);
            let last = got.last().map(|m| m.loss.clone()).unwrap_or_default();
            *s.last.borrow_mut() = got;
            Ok(f32_array(&last).into())
        })
    }

    /// Every step's per-model loss and correct count from the latest `step(n)` call.
    #[wasm_bindgen(unchecked_return_type = "StepMetricsResult")]
    pub fn metrics(&self) -> JsValue {
        let last = self.shared.last.borrow();
        let g = self.shared.g;
        let loss: Vec<f32> = last.iter().flat_map(|m| m.loss.iter().copied()).collect();
        let correct: Vec<u32> = last.iter().flat_map(|m| m.correct.iter().copied()).collect();
        let o = Object::new();
        let first = last.first().map(|m| m.step as f64).unwrap_or(self.shared.step.get() as f64);
        let _ = Reflect::set(&o, &"firstStep".into(), &first.into());
        let _ = Reflect::set(&o, &"steps".into(), &(last.len() as u32).into());
        let _ = Reflect::set(&o, &"models".into(), &(g as u32).into());
        let _ = Reflect::set(&o, &"loss".into(), &f32_array(&loss));
        let _ = Reflect::set(&o, &"correct".into(), &Uint32Array::from(correct.as_slice()));
        o.into()
    }

    /// Top-1/top-5 accuracy and mean loss of every model on a dataset. With a dataset, it
    /// is uploaded and becomes the evaluation set; without, the previous one is used again
    /// (compiled once, one readback per evaluation).
    #[wasm_bindgen(unchecked_return_type = "Promise<EvaluationResult>")]
    pub fn evaluate(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "DatasetInput")] dataset: Option<JsValue>,
    ) -> Promise {
        let data = dataset.map(|d| parse_dataset(&d, self.shared.model().spec(), "eval"));
        self.run(move |s| async move {
            let mut st = s.state.lock().await;
            if let Some(data) = data {
                let data = data?;
                st.evaluator = None;
                let config = st.config.clone();
                st.evaluator = Some(
                    Evaluator::new(s.gpu(), s.model(), &data, s.eval_batch(), config.normalize)
                        .map_err(|e| s.fail(e))?,
                );
            }
            let ev = st.evaluator.as_mut().ok_or_else(|| usage("evaluate: no evaluation set given yet"))?;
            let result = ev.run().await.map_err(|e| s.fail(e))?;
            s.gpu().take_error().map_err(|e| s.fail(e))?;
            Ok(evaluation_object(&result))
        })
    }

    /// Every model's class probabilities for one image (bytes, shaped as the model's
    /// input), and the ensemble's: the mean of the live models' probabilities and their votes.
    #[wasm_bindgen(unchecked_return_type = "Promise<Prediction>")]
    pub fn predict(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Uint8Array | Uint8ClampedArray")] image: JsValue,
    ) -> Promise {
        let image = bytes(&image, "image");
        self.run(move |s| async move {
            let image = image?;
            let mut st = s.state.lock().await;
            if st.predictor.is_none() {
                let norm = st.config.normalize;
                st.predictor = Some(Predictor::new(s.gpu(), s.model(), 1, norm).map_err(|e| s.fail(e))?);
            }
            let p = st.predictor.as_ref().expect("just created");
            let probs = p.predict(&image).await.map_err(|e| s.fail(e))?;
            let classes = p.classes();
            let dead = s.dead.borrow().clone();
            Ok(prediction_object(&probs, s.g, classes, &dead))
        })
    }

    /// Population-based training's "exploit": model `dst` becomes a clone of model `src`
    /// (weights, BatchNorm estimates, optimizer state, hyper-parameters, divergence flag),
    /// copied on the GPU. Needs a dataset (`setDataset`): the optimizer state lives with it.
    #[wasm_bindgen(js_name = copyModel, unchecked_return_type = "Promise<void>")]
    pub fn copy_model(&self, dst: usize, src: usize) -> Promise {
        let ok = self.check_model(dst).and_then(|_| self.check_model(src));
        self.run(move |s| async move {
            ok?;
            let mut st = s.state.lock().await;
            let engine = st.engine("copyModel")?;
            engine.copy_model(dst, src).map_err(|e| s.fail(e))?;
            s.gpu().take_error().map_err(|e| s.fail(e))?;
            let lr = s.lr.borrow()[src];
            s.lr.borrow_mut()[dst] = lr;
            *s.dead.borrow_mut() = engine.dead().to_vec();
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Model `m`'s hyper-parameter `name` (`lr`: the base rate before a schedule; also
    /// `momentum`, `dampening`, `weight_decay` for SGD, `beta1`, `beta2`, `eps`,
    /// `weight_decay` for Adam/AdamW). Needs a dataset (`setDataset`).
    #[wasm_bindgen(unchecked_return_type = "Promise<number>")]
    pub fn hyper(&self, m: usize, name: String) -> Promise {
        let ok = self.check_model(m);
        self.run(move |s| async move {
            ok?;
            let h = HyperParam::from_name(&name).map_err(js_err)?;
            let mut st = s.state.lock().await;
            let engine = st.engine("hyper")?;
            Ok(JsValue::from(engine.hyper(m, h).map_err(js_err)?))
        })
    }

    /// Population-based training's "explore": sets model `m`'s hyper-parameter `name` (as
    /// `hyper` names them) from the next step on, checked as the optimizer checks it. Needs a
    /// dataset (`setDataset`); the value carries over to a later dataset.
    #[wasm_bindgen(js_name = setHyper, unchecked_return_type = "Promise<void>")]
    pub fn set_hyper(&self, m: usize, name: String, value: f32) -> Promise {
        let ok = self.check_model(m);
        self.run(move |s| async move {
            ok?;
            let h = HyperParam::from_name(&name).map_err(js_err)?;
            let mut st = s.state.lock().await;
            let engine = st.engine("setHyper")?;
            engine.set_hyper(m, h, value).map_err(js_err)?;
            s.gpu().take_error().map_err(|e| s.fail(e))?;
            if h == HyperParam::Lr {
                s.lr.borrow_mut()[m] = value;
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The models as one classifier on `dataset`: per image the mean of the members' class
    /// probabilities (default: every model that has not diverged).
    #[wasm_bindgen(js_name = evaluateEnsemble, unchecked_return_type = "Promise<EnsembleResult>")]
    pub fn evaluate_ensemble(
        &self,
        #[wasm_bindgen(unchecked_param_type = "DatasetInput")] dataset: JsValue,
        members: Option<Vec<u32>>,
    ) -> Promise {
        let data = parse_dataset(&dataset, self.shared.model().spec(), "eval");
        self.run(move |s| async move {
            let data = data?;
            let members: Vec<usize> = match members {
                Some(m) => m.into_iter().map(|m| m as usize).collect(),
                None => (0..s.g).filter(|&m| !s.dead.borrow()[m]).collect(),
            };
            let st = s.state.lock().await;
            let norm = st.config.normalize;
            let e = crate::train::evaluate_ensemble(s.gpu(), s.model(), &data, s.eval_batch(), norm, &members)
                .await
                .map_err(|e| s.fail(e))?;
            s.gpu().take_error().map_err(|e| s.fail(e))?;
            let o = Object::new();
            let members: Vec<u32> = e.members.iter().map(|&m| m as u32).collect();
            let _ = Reflect::set(&o, &"samples".into(), &(e.samples as f64).into());
            let _ = Reflect::set(&o, &"members".into(), &Uint32Array::from(members.as_slice()));
            let _ = Reflect::set(&o, &"top1".into(), &e.top1_frac().into());
            let _ = Reflect::set(&o, &"top5".into(), &e.top5_frac().into());
            let _ = Reflect::set(&o, &"loss".into(), &e.loss.into());
            Ok(o.into())
        })
    }

    /// Model `m`'s weights as a safetensors file (PyTorch names; the CLI writes the same).
    #[wasm_bindgen(js_name = exportModel, unchecked_return_type = "Promise<Uint8Array>")]
    pub fn export_model(&self, m: usize) -> Promise {
        let ok = self.check_model(m);
        self.run(move |s| async move {
            ok?;
            let _st = s.state.lock().await;
            let bytes = s.model().to_safetensors(m).await.map_err(|e| s.fail(e))?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// Replaces model `m`'s weights with a safetensors file of the same architecture.
    #[wasm_bindgen(js_name = importModel, unchecked_return_type = "Promise<void>")]
    pub fn import_model(&self, m: usize, bytes: &[u8]) -> Promise {
        let ok = self.check_model(m);
        let bytes = bytes.to_vec();
        self.run(move |s| async move {
            ok?;
            let _st = s.state.lock().await;
            s.model().load_safetensors(m, &bytes, &format!("model {m}")).map_err(|e| s.fail(e))?;
            s.gpu().take_error().map_err(|e| s.fail(e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Every model in one safetensors file, each tensor with a leading G dimension.
    #[wasm_bindgen(js_name = exportModels, unchecked_return_type = "Promise<Uint8Array>")]
    pub fn export_models(&self) -> Promise {
        self.run(move |s| async move {
            let _st = s.state.lock().await;
            let bytes = s.model().to_safetensors_batched().await.map_err(|e| s.fail(e))?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// Replaces every model's weights from a file written by `exportModels`.
    #[wasm_bindgen(js_name = importModels, unchecked_return_type = "Promise<void>")]
    pub fn import_models(&self, bytes: &[u8]) -> Promise {
        let bytes = bytes.to_vec();
        self.run(move |s| async move {
            let _st = s.state.lock().await;
            s.model().load_safetensors_batched(&bytes, "models").map_err(|e| s.fail(e))?;
            s.gpu().take_error().map_err(|e| s.fail(e))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Releases the GPU device now instead of at garbage collection; every later call
    /// rejects as on a lost device.
    pub fn destroy(&self) {
        self.shared.destroyed.set(true);
        self.shared.gpu().device.destroy();
    }
}
