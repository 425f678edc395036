//! Op families: each file owns the bind layout and dispatch geometry of its kernels in
//! `shaders/<family>.wgsl` and lowers graph nodes to dispatches.

pub(crate) mod activation;
pub(crate) mod conv;
pub(crate) mod custom;
pub(crate) mod data;
pub(crate) mod elementwise;
pub(crate) mod linear;
pub(crate) mod loss;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod pool;
pub(crate) mod reduce;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::gpu::{Binding, Gpu, Kernel};

/// A WGSL source file of the crate.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// File stem under `shaders/`.
    pub name: &'static str,
    /// WGSL text.
    pub source: &'static str,
}

macro_rules! shader {
    ($name:literal) => {
        Shader { name: $name, source: include_str!(concat!("../../shaders/", $name, ".wgsl")) }
    };
}

/// Batched GEMM kernels.
pub const LINEAR: Shader = shader!("linear");
/// Elementwise kernels.
pub const ELEMENTWISE: Shader = shader!("elementwise");
/// Sum and broadcast kernels.
pub const REDUCE: Shader = shader!("reduce");
/// Cross-entropy and top-k kernels.
pub const LOSS: Shader = shader!("loss");
/// Optimizer update kernels.
pub const OPTIM: Shader = shader!("optim");
/// Activation functions, softmax, dropout.
pub const ACTIVATION: Shader = shader!("activation");
/// Convolution kernels (implicit GEMM).
pub const CONV: Shader = shader!("conv");
/// Pooling kernels.
pub const POOL: Shader = shader!("pool");
/// Normalisation kernels.
pub const NORM: Shader = shader!("norm");
/// Dataset gather kernels.
pub const DATA: Shader = shader!("data");

/// Every shader of the crate (validated offline by the test suite).
pub const ALL_SHADERS: &[Shader] = &[LINEAR, ELEMENTWISE, REDUCE, LOSS, OPTIM, ACTIVATION, CONV, POOL, NORM, DATA];

/// WGSL the crate generates at plan compile time, `(name, source)`, in the variants the
/// test suite validates offline: the multi-tensor optimizer updates for 1, 2 and 16 tensors.
pub fn generated_shaders() -> Vec<(String, String)> {
    optim::generated_sources()
}

/// Dimensions of a batched image tensor `[G, N, C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Image {
    pub g: usize,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Image {
    pub fn of(shape: &[usize]) -> Image {
        Image { g: shape[0], n: shape[1], c: shape[2], h: shape[3], w: shape[4] }
    }

    pub fn numel(&self) -> usize {
        self.g * self.n * self.c * self.h * self.w
    }
}

/// One recorded compute dispatch: everything is created at plan compile time.
pub(crate) struct Dispatch {
    pub kernel: Arc<Kernel>,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    pub label: &'static str,
}

impl Dispatch {
    /// Records this dispatch into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass) {
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups[0], self.groups[1], self.groups[2]);
    }
}

/// What lowering needs: the device and a way to make uniforms and bind groups.
pub(crate) struct Lower<'a> {
    pub gpu: &'a Gpu,
    /// A 16-byte buffer bound where a kernel's optional operand is absent.
    pub dummy: &'a wgpu::Buffer,
    /// The same for an optional output (a buffer may not be bound both read-only and
    /// writable in one dispatch); never written.
    pub sink: &'a wgpu::Buffer,
    /// Buffers bound as a byte range `(offset, size)` instead of whole: the models of the
    /// chunk being lowered, when a plan splits its batch (see `plan`).
    pub ranges: RefCell<HashMap<wgpu::Buffer, (u64, u64)>>,
    /// Scratch buffers by size (split-K partial sums): dispatches run in order, so kernels
    /// of any chunk may share one.
    pub scratch: RefCell<HashMap<u64, wgpu::Buffer>>,
}

impl Lower<'_> {
    /// Builds a dispatch: `words` become the uniform at binding 0, `buffers` bind 1.. in order.
    pub fn dispatch(
        &self,
        kernel: Arc<Kernel>,
        label: &'static str,
        words: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Dispatch {
        let mut padded = words.to_vec();
        while padded.len() % 4 != 0 || padded.is_empty() {
            padded.push(0);
        }
        let uniform = self.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&padded),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in buffers.iter().enumerate() {
            let resource = match self.ranges.borrow().get(*b) {
                Some(&(offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b,
                    offset,
                    size: wgpu::BufferSize::new(size),
                }),
                None => b.as_entire_binding(),
            };
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource });
        }
        let bind_group = self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &kernel.layout,
            entries: &entries,
        });
        Dispatch { kernel, bind_group, groups, label }
    }

    /// A storage buffer of `size` bytes for intermediate results that live within one
    /// op's dispatches; created once per size and shared by every op that asks.
    pub fn scratch(&self, size: u64) -> wgpu::Buffer {
        self.scratch
            .borrow_mut()
            .entry(size)
            .or_insert_with(|| {
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("modelbatch scratch"),
                    size,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .clone()
    }

    /// A kernel whose binding 0 is the uniform followed by `storage` bindings.
    pub fn kernel(
        &self,
        shader: &Shader,
        entry: &'static str,
        storage: &[Binding],
        constants: &[(&str, f64)],
    ) -> Arc<Kernel> {
        let mut b = vec![Binding::Uniform];
        b.extend_from_slice(storage);
        self.gpu.kernel(shader, entry, &b, constants)
    }
}

/// Workgroups for `threads` invocations in groups of `wg`, folded into a 2-D grid so no
/// dimension passes 65,535. Kernels rebuild the flat index as `x + y * groups_x * wg`.
pub(crate) fn grid_1d(threads: usize, wg: u32) -> [u32; 3] {
    let groups = threads.div_ceil(wg as usize).max(1);
    grid_groups(groups)
}

/// `groups` workgroups (one per item) folded into a 2-D grid; kernels use `x + y * groups_x`.
pub(crate) fn grid_groups(groups: usize) -> [u32; 3] {
    const MAX: usize = 65_535;
    if groups <= MAX {
        [groups as u32, 1, 1]
    } else {
        [MAX as u32, groups.div_ceil(MAX) as u32, 1]
    }
}

/// Packs an f32 into a uniform word.
pub(crate) fn f(x: f32) -> u32 {
    x.to_bits()
}
