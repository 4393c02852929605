//! The compute pipelines (one WGSL file per operation family, in `shaders/`) and their dispatch.
//!
//! Each shader's constants that fix array sizes (head width, key tile, LoRA rank bound, weight
//! storage) are written into its source at load, so one build serves every model shape.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

const LINEAR_WGSL: &str = include_str!("shaders/linear.wgsl");
const LINEAR_F16_WGSL: &str = include_str!("shaders/linear_f16.wgsl");
const NORM_WGSL: &str = include_str!("shaders/norm.wgsl");
const ROTARY_WGSL: &str = include_str!("shaders/rotary.wgsl");
const ATTENTION_WGSL: &str = include_str!("shaders/attention.wgsl");

/// Rows of the LoRA scratch in `lora_down`'s workgroup memory: the largest rank it takes.
pub(super) const MAX_RANK: usize = 16;

/// Queries (invocations) per attention workgroup, as in `attention.wgsl`.
pub(super) const ATTENTION_QUERIES: usize = 64;

/// Output tile of `matmul`, as in `linear.wgsl`.
const MATMUL_TILE: u32 = 64;

/// Largest workgroup count along one dimension (WebGPU's minimum limit); longer grids wrap.
const MAX_GROUPS_X: u32 = 65535;

/// How the linear weights sit in their buffers (`WEIGHT_FORMAT` in `linear.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WeightFormat {
    /// f32 bits, one per word.
    F32,
    /// bf16 pairs (the published checkpoint's values, exactly).
    Bf16,
    /// f16 pairs, for the f16 path.
    F16,
}

impl WeightFormat {
    fn code(self) -> u32 {
        match self {
            WeightFormat::F32 => 0,
            WeightFormat::Bf16 => 1,
            WeightFormat::F16 => 2,
        }
    }
}

/// The shapes and precision the shaders are specialised for.
pub(super) struct KernelShapes {
    /// How the linear weights are stored.
    pub weights: WeightFormat,
    /// The linear layers multiply in f16 (`linear_f16.wgsl`; needs `shader-f16`).
    pub f16: bool,
    /// Width of one attention head.
    pub head_dim: usize,
}

/// Every pipeline of the forward pass.
pub(super) struct Kernels {
    /// `matmul_f16` on the f16 path, else the f32 `matmul`.
    matmul: wgpu::ComputePipeline,
    lora_down: wgpu::ComputePipeline,
    add_layer_norm: wgpu::ComputePipeline,
    rotary: wgpu::ComputePipeline,
    attention: wgpu::ComputePipeline,
}

impl Kernels {
    /// Compiles the shaders for `shapes`; a shader the driver refuses is an error.
    pub fn compile(device: &wgpu::Device, shapes: &KernelShapes) -> Result<Self> {
        let max_shared = device.limits().max_compute_workgroup_storage_size as usize;
        // Keys and values of one tile in workgroup memory: 2 · tile · head_dim f32.
        let key_tile = (max_shared / (8 * shapes.head_dim.max(1))).clamp(1, 64);
        if shapes.head_dim == 0 || key_tile < 4 {
            return Err(Error::Device(format!(
                "heads of width {} do not fit the device's {max_shared} bytes of workgroup memory",
                shapes.head_dim
            )));
        }
        let mut linear = LINEAR_WGSL
            .replace("{{WEIGHT_FORMAT}}", &shapes.weights.code().to_string())
            .replace("{{MAX_RANK}}", &MAX_RANK.to_string());
        if shapes.f16 {
            linear = format!("enable f16;\n{linear}\n{LINEAR_F16_WGSL}");
        }
        let attention = ATTENTION_WGSL
            .replace("{{HEAD_DIM}}", &shapes.head_dim.to_string())
            .replace("{{KEY_TILE}}", &key_tile.to_string());
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let linear = module(device, "linear", &linear);
        let norm = module(device, "norm", NORM_WGSL);
        let rotary = module(device, "rotary", ROTARY_WGSL);
        let attention = module(device, "attention", &attention);
        let kernels = Kernels {
            matmul: pipeline(
                device,
                &linear,
                if shapes.f16 { "matmul_f16" } else { "matmul" },
            ),
            lora_down: pipeline(device, &linear, "lora_down"),
            add_layer_norm: pipeline(device, &norm, "add_layer_norm"),
            rotary: pipeline(device, &rotary, "rotary"),
            attention: pipeline(device, &attention, "attention"),
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!("a shader did not compile: {e}")));
        }
        Ok(kernels)
    }
}

fn module(device: &wgpu::Device, label: &str, source: &str) -> wgpu::ShaderModule {
    device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    })
}

fn pipeline(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    entry: &str,
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// `(x, y)` workgroups for `n` one-dimensional groups: x wraps at the device's limit and the
/// shader rebuilds the index as `y · x_count + x`.
fn grid(n: usize) -> (u32, u32) {
    let n = n.max(1) as u32;
    let x = n.min(MAX_GROUPS_X);
    (x, n.div_ceil(x))
}

/// One linear layer's dispatch: shapes and where its LoRA tensors sit in a slot's block.
pub(super) struct LinearDispatch<'a> {
    pub rows: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub rank: usize,
    pub a_offset: usize,
    pub b_offset: usize,
    pub block_len: usize,
    pub gelu: bool,
    pub weight: &'a wgpu::Buffer,
    pub bias: &'a wgpu::Buffer,
}

/// The buffers one batch's LoRA side path reads: each row's slot, each slot's scaling and
/// tensors, and the `rows × rank` scratch of `s·x·Aᵀ`.
pub(super) struct LoraBuffers<'a> {
    pub slots: &'a wgpu::Buffer,
    pub scales: &'a wgpu::Buffer,
    pub tensors: &'a wgpu::Buffer,
    pub low: &'a wgpu::Buffer,
}

/// Records the dispatches of one forward pass into a compute pass.
pub(super) struct Recorder<'a> {
    device: &'a wgpu::Device,
    kernels: &'a Kernels,
    pass: wgpu::ComputePass<'static>,
}

impl<'a> Recorder<'a> {
    pub fn new(
        device: &'a wgpu::Device,
        kernels: &'a Kernels,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Self {
        let pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            })
            .forget_lifetime();
        Recorder {
            device,
            kernels,
            pass,
        }
    }

    fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) {
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, buffer) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: buffer.as_entire_binding(),
            });
        }
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.pass.set_pipeline(pipeline);
        self.pass.set_bind_group(0, &group, &[]);
        self.pass.dispatch_workgroups(groups.0, groups.1, 1);
    }

    /// `out = x·Wᵀ + b + s·(x·A[slot]ᵀ)·B[slot]ᵀ` per row, then GELU when asked.
    pub fn linear(
        &mut self,
        x: &wgpu::Buffer,
        layer: &LinearDispatch,
        lora: &LoraBuffers,
        out: &wgpu::Buffer,
    ) {
        let (gx, gy) = grid(layer.rows);
        let down = [
            layer.rows as u32,
            layer.n_in as u32,
            layer.rank as u32,
            layer.a_offset as u32,
            layer.block_len as u32,
            gx,
            0,
            0,
        ];
        let kernels = self.kernels;
        self.dispatch(
            &kernels.lora_down,
            &down,
            &[x, lora.slots, lora.scales, lora.tensors, lora.low],
            (gx, gy),
        );
        let params = [
            layer.rows as u32,
            layer.n_out as u32,
            layer.n_in as u32,
            layer.rank as u32,
            layer.b_offset as u32,
            layer.block_len as u32,
            layer.gelu as u32,
            0,
        ];
        let groups = (
            (layer.n_out as u32).div_ceil(MATMUL_TILE),
            (layer.rows as u32).div_ceil(MATMUL_TILE),
        );
        self.dispatch(
            &kernels.matmul,
            &params,
            &[
                x,
                layer.weight,
                layer.bias,
                lora.low,
                lora.slots,
                lora.tensors,
                out,
            ],
            groups,
        );
    }

    /// Rotary positions on Q and K of every row of `qkv` (`rows × 3·heads·2·half`).
    pub fn rotary(
        &mut self,
        qkv: &wgpu::Buffer,
        rows: usize,
        heads: usize,
        half: usize,
        positions: &wgpu::Buffer,
        table: (&wgpu::Buffer, &wgpu::Buffer),
    ) {
        let (gx, gy) = grid(rows);
        let params = [
            rows as u32,
            heads as u32,
            half as u32,
            (3 * heads * 2 * half) as u32,
            gx,
            0,
            0,
            0,
        ];
        let kernels = self.kernels;
        self.dispatch(
            &kernels.rotary,
            &params,
            &[qkv, positions, table.0, table.1],
            (gx, gy),
        );
    }

    /// Attention of every query block (`blocks`: `[start, len, first query, 0]` each) and head.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        qkv: &wgpu::Buffer,
        blocks: &wgpu::Buffer,
        block_count: usize,
        heads: usize,
        hidden: usize,
        head_dim: usize,
        ctx: &wgpu::Buffer,
    ) {
        let scale = 1.0 / (head_dim as f32).sqrt();
        let params = [hidden as u32, scale.to_bits(), 0, 0];
        let kernels = self.kernels;
        self.dispatch(
            &kernels.attention,
            &params,
            &[qkv, blocks, ctx],
            (block_count as u32, heads as u32),
        );
    }

    /// `x = LayerNorm(y + x)` per row of `width`; `y` keeps the sum.
    pub fn add_layer_norm(
        &mut self,
        y: &wgpu::Buffer,
        x: &wgpu::Buffer,
        rows: usize,
        width: usize,
        eps: f32,
        norm: (&wgpu::Buffer, &wgpu::Buffer),
    ) {
        let (gx, gy) = grid(rows);
        let params = [rows as u32, width as u32, eps.to_bits(), gx];
        let kernels = self.kernels;
        self.dispatch(
            &kernels.add_layer_norm,
            &params,
            &[y, x, norm.0, norm.1],
            (gx, gy),
        );
    }
}
