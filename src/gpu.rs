//! GPU acquisition (native and browser), the limits the engine asks for, and the pipeline cache.
//!
//! One [`Gpu`] owns a wgpu device and queue. Natively the adapter is chosen from the
//! environment (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`), in the browser
//! through `navigator.gpu`. Errors the device reports outside an explicit check are captured
//! instead of panicking and surface from the next [`Gpu::take_error`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tuning::{Tuning, TuningSource};

/// How a shader binding is used; the Rust side of each op owns its bind layout as a list of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// A uniform buffer holding the op's small parameter struct.
    Uniform,
    /// A storage buffer the kernel only reads.
    Read,
    /// A storage buffer the kernel writes (and may read).
    ReadWrite,
}

/// A compiled compute pipeline and its bind group layout.
pub struct Kernel {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Layout of bind group 0, in the order given to [`Gpu::kernel`].
    pub layout: wgpu::BindGroupLayout,
    /// `module::entry` and its override constants, e.g. `conv::conv2d_tile(WGX=256,KW=5)`
    /// (profiles name the kernel behind each dispatch with it).
    pub name: String,
}

/// What the adapter is and what the engine was granted.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Backend (Vulkan, Metal, Dx12, BrowserWebGpu, ...).
    pub backend: String,
    /// Device type (DiscreteGpu, IntegratedGpu, Cpu, ...).
    pub device_type: String,
    /// Driver name and version where known.
    pub driver: String,
    /// Storage buffers one shader stage may bind.
    pub max_storage_buffers_per_shader_stage: u32,
    /// Largest storage binding in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer in bytes.
    pub max_buffer_size: u64,
    /// Workgroups per dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Workgroup shared memory in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// The kernel shapes in use ([`crate::tuning::Tuning`]'s `key=value` text).
    pub tuning: String,
    /// Where they came from: `built-in`, `saved: <file>` (by `modelbatch tune --save`),
    /// either followed by `+ MODELBATCH_TUNING`, or `Gpu::with_tuning`.
    pub tuning_from: String,
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "adapter:      {}", self.name)?;
        writeln!(f, "backend:      {}", self.backend)?;
        writeln!(f, "device type:  {}", self.device_type)?;
        writeln!(f, "driver:       {}", self.driver)?;
        writeln!(
            f,
            "limits:       {} storage buffers/stage, {} MiB per binding, {} MiB per buffer",
            self.max_storage_buffers_per_shader_stage,
            self.max_storage_buffer_binding_size >> 20,
            self.max_buffer_size >> 20
        )?;
        write!(
            f,
            "              {} workgroups/dimension, {} KiB workgroup memory, {} invocations/workgroup",
            self.max_compute_workgroups_per_dimension,
            self.max_compute_workgroup_storage_size >> 10,
            self.max_compute_invocations_per_workgroup
        )?;
        write!(f, "\ntuning:       {}\n              ({})", self.tuning, self.tuning_from)
    }
}

/// Which WGSL a kernel comes from: a shader of the crate (by file name) or a user's source
/// (custom ops), keyed by name and full text so two ops never share a module by accident.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ModuleKey {
    /// A crate shader, and whether it is compiled with naga's loop counters (the
    /// `loop_counters` tuning).
    Crate(&'static str, bool),
    /// Source the crate generates, named uniquely by what it was generated from (with loop
    /// counters or not, as the crate's own).
    Generated(String, bool),
    User {
        name: String,
        source: String,
    },
}

/// Module, entry point, bind layout (with the uniform's minimum size, if any), override constants.
type KernelKey = (ModuleKey, String, Vec<Binding>, Option<u64>, Vec<(String, u64)>);

fn kernel_key(
    module: ModuleKey,
    entry: &str,
    bindings: &[Binding],
    uniform_bytes: Option<u64>,
    constants: &[(&str, f64)],
) -> KernelKey {
    let constants = constants.iter().map(|(k, v)| (k.to_string(), v.to_bits())).collect();
    (module, entry.to_string(), bindings.to_vec(), uniform_bytes, constants)
}

/// A WebGPU device ready for modelbatch: device, queue, granted limits, pipeline cache.
pub struct Gpu {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    // Shared by every view of the device (`restricted`, `with_tuning`): a kernel's key holds
    // everything that shapes it.
    modules: Arc<Mutex<HashMap<ModuleKey, wgpu::ShaderModule>>>,
    kernels: Arc<Mutex<HashMap<KernelKey, Arc<Kernel>>>>,
    error: Arc<Mutex<Option<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    tuning: Tuning,
    tuning_from: String,
}

/// The message every "no adapter" error carries: how to get a software adapter.
pub const NO_ADAPTER_HINT: &str = "no WebGPU adapter found. Install a GPU driver, or a software \
Vulkan adapter: `apt-get install mesa-vulkan-drivers` on Debian/Ubuntu (lavapipe). \
WGPU_BACKEND=vulkan|metal|dx12|gl and WGPU_ADAPTER_NAME=<substring> choose among several";

/// In the browser: which browsers and flags provide WebGPU.
pub const NO_WEBGPU_HINT: &str = "this browser does not provide WebGPU (navigator.gpu). Use Chrome or Edge 113+ \
(on Linux start it with --enable-unsafe-webgpu --enable-features=Vulkan, or enable chrome://flags/#enable-unsafe-webgpu), \
Safari 26+ (or Safari Technology Preview), or Firefox 141+ on Windows (Nightly elsewhere, or dom.webgpu.enabled in \
about:config); WebGPU also needs a secure context (https or localhost)";

fn no_adapter_hint() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        NO_WEBGPU_HINT
    } else {
        NO_ADAPTER_HINT
    }
}

/// The tuning a device on this adapter starts with and where it came from: the built-in or
/// saved values ([`Tuning::for_gpu`]), then `MODELBATCH_TUNING` where it is set (native).
fn initial_tuning(info: &wgpu::AdapterInfo) -> Result<(Tuning, String)> {
    let (base, source) = Tuning::for_gpu(info)?;
    let from = match source {
        TuningSource::BuiltIn => "built-in".to_string(),
        TuningSource::Cache(path) => format!("saved: {}", path.display()),
    };
    #[cfg(not(target_arch = "wasm32"))]
    if let Ok(text) = std::env::var("MODELBATCH_TUNING") {
        let t = base.apply(&text).map_err(|e| Error::Usage(format!("MODELBATCH_TUNING: {e}")))?;
        return Ok((t, format!("{from} + MODELBATCH_TUNING")));
    }
    Ok((base, from))
}

/// The storage buffers per stage the engine's largest kernel needs.
pub const STORAGE_BUFFERS_NEEDED: u32 = 6;

impl Gpu {
    /// Acquires the best adapter (honouring `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
    /// `WGPU_POWER_PREF`) and a device with the limits the engine needs.
    pub async fn new() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pick_adapter(&instance).await?;
        Gpu::from_adapter(adapter).await
    }

    /// Every adapter of the backends in `WGPU_BACKEND` (by default the primary ones: Vulkan,
    /// Metal, DX12; `WGPU_BACKEND=vulkan,gl` adds OpenGL) whose name contains
    /// `WGPU_ADAPTER_NAME` (if set), each opened as a device: the devices a model batch can
    /// be sharded over ([`crate::nn::BatchModel::sharded`]). Native only. Adapters that
    /// cannot give the engine a device are skipped; none at all is an error.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn all_blocking() -> Result<Vec<Gpu>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let want = std::env::var("WGPU_ADAPTER_NAME").ok();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for adapter in pollster::block_on(instance.enumerate_adapters(backends)) {
            let info = adapter.get_info();
            if want.as_deref().is_some_and(|w| !name_matches(&info, w)) {
                continue;
            }
            match pollster::block_on(Gpu::from_adapter(adapter)) {
                Ok(g) => out.push(g),
                Err(e) => errors.push(format!("{} ({:?}): {e}", info.name, info.backend)),
            }
        }
        if out.is_empty() {
            return Err(Error::NoAdapter(if errors.is_empty() {
                NO_ADAPTER_HINT.to_string()
            } else {
                format!("no adapter could open a device: {}", errors.join("; "))
            }));
        }
        Ok(out)
    }

    /// Native convenience: [`Gpu::new`] driven to completion on this thread.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Gpu> {
        pollster::block_on(Gpu::new())
    }

    /// Creates the device on a given adapter.
    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let have = adapter.limits();
        if have.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_NEEDED {
            return Err(Error::Device(format!(
                "adapter {:?} allows {} storage buffers per shader stage; modelbatch needs {}",
                info.name, have.max_storage_buffers_per_shader_stage, STORAGE_BUFFERS_NEEDED
            )));
        }
        // Ask for the portable defaults, raised to what the adapter really has where
        // the engine benefits (large bindings and buffers, every storage slot).
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffers_per_shader_stage = have.max_storage_buffers_per_shader_stage;
        // wgpu's combined count of buffers per stage (multi-tensor optimizer updates bind many).
        limits.max_buffers_and_acceleration_structures_per_shader_stage =
            have.max_buffers_and_acceleration_structures_per_shader_stage;
        limits.max_storage_buffer_binding_size = have.max_storage_buffer_binding_size;
        limits.max_buffer_size = have.max_buffer_size;
        limits.max_compute_workgroups_per_dimension = have.max_compute_workgroups_per_dimension;
        limits.max_compute_workgroup_storage_size = have.max_compute_workgroup_storage_size;
        limits.max_compute_invocations_per_workgroup = have.max_compute_invocations_per_workgroup;
        limits.max_compute_workgroup_size_x = have.max_compute_workgroup_size_x;
        limits.max_compute_workgroup_size_y = have.max_compute_workgroup_size_y;
        limits.max_compute_workgroup_size_z = have.max_compute_workgroup_size_z;
        limits.max_uniform_buffer_binding_size = have.max_uniform_buffer_binding_size;
        limits.max_bind_groups = have.max_bind_groups.min(4);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("modelbatch"),
                // Timestamp queries where the adapter has them (per-dispatch GPU times in
                // `Plan::profile`); nothing else is needed.
                required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        let (tuning, tuning_from) = initial_tuning(&info)?;
        tuning.check_limits(&limits)?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let sink = error.clone();
        let lost = Arc::new(Mutex::new(None::<String>));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let text = format!("device lost ({reason:?}): {msg}");
            // Sticky: a lost device never comes back, unlike errors that `take_error` clears.
            lost_sink.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| text.clone());
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(text);
            }
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            modules: Arc::default(),
            kernels: Arc::default(),
            error,
            lost,
            tuning,
            tuning_from,
        })
    }

    /// Why the device was lost, once it has been (it stays lost: create a new [`Gpu`]).
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A view of this device that plans as if the adapter bound at most `max_binding` bytes
    /// per storage binding and allocated at most `max_buffer` bytes per buffer (never more
    /// than granted): to leave headroom, or to see how plans split a batch into chunks.
    pub fn restricted(&self, max_binding: u64, max_buffer: u64) -> Gpu {
        let mut limits = self.limits.clone();
        limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(max_binding);
        limits.max_buffer_size = limits.max_buffer_size.min(max_buffer);
        self.view(limits, self.tuning, self.tuning_from.clone())
    }

    /// A view of this device whose plans use the kernel shapes `tuning` (see
    /// [`crate::tuning`]); checked against the device's limits. Plans compiled before keep
    /// theirs.
    pub fn with_tuning(&self, tuning: Tuning) -> Result<Gpu> {
        tuning.validate()?;
        tuning.check_limits(&self.limits)?;
        Ok(self.view(self.limits.clone(), tuning, "Gpu::with_tuning".into()))
    }

    /// Whether the crate's shaders compile with naga's loop counters (the `loop_counters` tuning).
    fn loop_counters(&self) -> bool {
        self.tuning.loop_counters != 0
    }

    /// The kernel shapes plans compiled on this device use.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// Saves `tuning` for this adapter (name, backend, driver) in the tuning cache
    /// ([`crate::tuning::cache_dir`]), where every later device on it starts from
    /// ([`Tuning::for_gpu`]); `note` becomes a comment in the file. Returns the file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_tuning(&self, tuning: &Tuning, note: &str) -> Result<std::path::PathBuf> {
        tuning.validate()?;
        tuning.check_limits(&self.limits)?;
        crate::tuning::save_cache(&self.info, tuning, note)
    }

    /// The same device and pipeline cache under other limits or kernel shapes.
    fn view(&self, limits: wgpu::Limits, tuning: Tuning, tuning_from: String) -> Gpu {
        Gpu {
            device: self.device.clone(),
            queue: self.queue.clone(),
            info: self.info.clone(),
            limits,
            modules: self.modules.clone(),
            kernels: self.kernels.clone(),
            error: self.error.clone(),
            lost: self.lost.clone(),
            tuning,
            tuning_from,
        }
    }

    /// The limits the device was created with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Adapter name, backend, device type and the limits granted.
    pub fn report(&self) -> AdapterReport {
        let l = &self.limits;
        AdapterReport {
            name: self.info.name.clone(),
            backend: format!("{:?}", self.info.backend),
            device_type: format!("{:?}", self.info.device_type),
            driver: format!("{} {}", self.info.driver, self.info.driver_info).trim().to_string(),
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            tuning: self.tuning.to_string(),
            tuning_from: self.tuning_from.clone(),
        }
    }

    /// Returns (and clears) the first error the device reported since the last call.
    pub fn take_error(&self) -> Result<()> {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(m) => Err(Error::Gpu(m)),
            None => Ok(()),
        }
    }

    /// A compute kernel from `shaders/<name>.wgsl`, compiled once per (entry point, layout,
    /// override constants) and cached.
    pub fn kernel(
        &self,
        shader: &crate::ops::Shader,
        entry: &'static str,
        bindings: &[Binding],
        constants: &[(&str, f64)],
    ) -> Arc<Kernel> {
        let key = kernel_key(ModuleKey::Crate(shader.name, self.loop_counters()), entry, bindings, None, constants);
        self.cached(key, shader.name, || shader.source.into(), entry, bindings, None, constants)
    }

    /// A kernel from WGSL the crate generates (`name` must identify the source: the module is
    /// cached by it, and `source` is only called the first time).
    pub(crate) fn generated_kernel(
        &self,
        name: String,
        source: impl FnOnce() -> String,
        entry: &'static str,
        bindings: &[Binding],
        constants: &[(&str, f64)],
    ) -> Arc<Kernel> {
        let key =
            kernel_key(ModuleKey::Generated(name.clone(), self.loop_counters()), entry, bindings, None, constants);
        self.cached(key, &name, || source().into(), entry, bindings, None, constants)
    }

    /// A compute kernel from user WGSL (a [`crate::graph::CustomOp`]), cached by name, source,
    /// entry point, layout and constants like the crate's own. Binding 0 is a uniform of at
    /// least `uniform_bytes` bytes (a shader whose uniform struct is larger is rejected), then
    /// `storage` in order. Natively, WGSL that does not parse or validate, or that does not match
    /// the layout, is returned as [`Error::Usage`] naming `name`; in the browser such errors
    /// arrive asynchronously and surface from the next [`Gpu::take_error`] (at the latest when
    /// the plan first runs).
    pub fn custom_kernel(
        &self,
        name: &str,
        source: &str,
        entry: &str,
        storage: &[Binding],
        uniform_bytes: u64,
        constants: &[(&str, f64)],
    ) -> Result<Arc<Kernel>> {
        let mut bindings = vec![Binding::Uniform];
        bindings.extend_from_slice(storage);
        let module = ModuleKey::User { name: name.to_string(), source: source.to_string() };
        let key = kernel_key(module, entry, &bindings, Some(uniform_bytes), constants);
        if let Some(k) = self.kernels.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(k.clone());
        }
        // Capture what the device reports while compiling: a broken user shader is an error
        // value, never a panic, and must not be cached.
        #[cfg(not(target_arch = "wasm32"))]
        let scopes = (
            self.device.push_error_scope(wgpu::ErrorFilter::Validation),
            self.device.push_error_scope(wgpu::ErrorFilter::Internal),
        );
        let kernel =
            self.build(&key, name, || source.to_string().into(), entry, &bindings, Some(uniform_bytes), constants);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let internal = pollster::block_on(scopes.1.pop());
            let validation = pollster::block_on(scopes.0.pop());
            if let Some(e) = validation.or(internal) {
                self.modules.lock().unwrap_or_else(|p| p.into_inner()).remove(&key.0);
                return Err(Error::Usage(format!(
                    "custom op `{name}`: its WGSL (entry point `{entry}`) does not compile for the layout \
                     [uniform, {} read-only input(s), read_write output]: {e}",
                    storage.len().saturating_sub(1)
                )));
            }
        }
        self.kernels.lock().unwrap_or_else(|p| p.into_inner()).insert(key, kernel.clone());
        Ok(kernel)
    }

    #[allow(clippy::too_many_arguments)]
    fn cached(
        &self,
        key: KernelKey,
        label: &str,
        source: impl FnOnce() -> std::borrow::Cow<'static, str>,
        entry: &str,
        bindings: &[Binding],
        uniform_bytes: Option<u64>,
        constants: &[(&str, f64)],
    ) -> Arc<Kernel> {
        let mut kernels = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kernels.get(&key) {
            return k.clone();
        }
        let k = self.build(&key, label, source, entry, bindings, uniform_bytes, constants);
        kernels.insert(key, k.clone());
        k
    }

    /// Compiles (module cached per [`ModuleKey`]) the pipeline and layout of `key`.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        key: &KernelKey,
        label: &str,
        source: impl FnOnce() -> std::borrow::Cow<'static, str>,
        entry: &str,
        bindings: &[Binding],
        uniform_bytes: Option<u64>,
        constants: &[(&str, f64)],
    ) -> Arc<Kernel> {
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            modules
                .entry(key.0.clone())
                .or_insert_with(|| {
                    let desc =
                        wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(source()) };
                    match key.0 {
                        ModuleKey::Crate(_, false) | ModuleKey::Generated(_, false) => {
                            let checks = wgpu::ShaderRuntimeChecks {
                                force_loop_bounding: false,
                                ..wgpu::ShaderRuntimeChecks::checked()
                            };
                            // SAFETY: only `force_loop_bounding` is off, which requires that no
                            // loop is infinite: every loop of the crate's kernels runs to a
                            // bound from its uniform or override constants, which the Rust
                            // side keeps positive and within lavapipe's loop budget
                            // (LOOP_BUDGET in src/ops/conv.rs). User WGSL never comes here
                            // (`ModuleKey::User`).
                            unsafe { self.device.create_shader_module_trusted(desc, checks) }
                        }
                        _ => self.device.create_shader_module(desc),
                    }
                })
                .clone()
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b {
                    Binding::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: uniform_bytes.and_then(wgpu::BufferSize::new),
                    },
                    Binding::Read | Binding::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: *b == Binding::Read },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let label = format!("{label}::{entry}");
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let values: Vec<String> = constants.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let name = if values.is_empty() { label } else { format!("{label}({})", values.join(",")) };
        Arc::new(Kernel { pipeline, layout, name })
    }

    /// Waits until the GPU has finished all submitted work (native); a no-op in the browser,
    /// where completion is observed through mapping callbacks.
    pub fn wait_idle(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        Ok(())
    }
}

/// Picks an adapter: `WGPU_ADAPTER_NAME` (substring, case-insensitive) when set, otherwise
/// the instance's preferred one (high performance unless `WGPU_POWER_PREF` says otherwise).
/// Whether an adapter's name contains `want` (`WGPU_ADAPTER_NAME`), ignoring case.
#[cfg(not(target_arch = "wasm32"))]
fn name_matches(info: &wgpu::AdapterInfo, want: &str) -> bool {
    info.name.to_lowercase().contains(&want.to_lowercase())
}

async fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters.into_iter().find(|a| name_matches(&a.get_info(), &want)).ok_or_else(|| {
            Error::NoAdapter(format!("WGPU_ADAPTER_NAME={want:?} matches none of the adapters found: {names:?}"))
        });
    }
    let power_preference = wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance);
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter(format!("{} ({e})", no_adapter_hint())))
}

impl Gpu {
    /// The shared slot where device errors land (plans check it after each submit).
    pub(crate) fn error_slot(&self) -> Arc<Mutex<Option<String>>> {
        self.error.clone()
    }

    /// The shared slot set once the device is lost (plans refuse to run after that).
    pub(crate) fn lost_slot(&self) -> Arc<Mutex<Option<String>>> {
        self.lost.clone()
    }
}
