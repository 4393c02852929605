//! The encoder's blocks on the GPU: weights uploaded once, then per batch the same steps as
//! `model.rs`'s `Block::forward`, recorded into one compute pass.
//!
//! LoRA: every adapter a batch uses gets a slot; a slot's tensors are one block of floats in one
//! buffer (for each linear layer, its `A` then its `B`), copied on the device from the resident
//! built-in tasks or written from a custom adapter's host tensors. Each row names its slot, so
//! tasks mix in a batch as on the CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::kernels::{
    self, KernelShapes, Kernels, LinearDispatch, LoraBuffers, Recorder, WeightFormat,
};
use super::GpuContext;
use crate::adapters::{LinearSite, TaskAdapter};
use crate::config::Config;
use crate::device::DeviceMemory;
use crate::error::{Error, Result};
use crate::kernels::RotaryTable;
use crate::model::EncoderInput;
use crate::precision::Precision;
use crate::weights::Weights;

const NO_SLOT: u32 = u32::MAX;

/// A linear layer's weights on the device.
struct GpuLinear {
    /// `[n_out × n_in]` as f32 bits, or bf16 or f16 pairs.
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    n_in: usize,
    n_out: usize,
    /// Offsets of its `A` and `B` inside a slot's LoRA block.
    a_offset: usize,
    b_offset: usize,
}

struct GpuNorm {
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
}

struct GpuLayer {
    qkv: GpuLinear,
    out_proj: GpuLinear,
    norm1: GpuNorm,
    fc1: GpuLinear,
    fc2: GpuLinear,
    norm2: GpuNorm,
}

/// Every block of the encoder, on one device.
pub(crate) struct GpuBlocks {
    context: GpuContext,
    kernels: Kernels,
    layers: Vec<GpuLayer>,
    /// The checkpoint's tasks' LoRA blocks, one after another.
    builtin_lora: wgpu::Buffer,
    builtin_scaling: f32,
    /// Floats in one slot's LoRA block.
    block_len: usize,
    rotary: (wgpu::Buffer, wgpu::Buffer),
    hidden: usize,
    heads: usize,
    head_dim: usize,
    intermediate: usize,
    rank: usize,
    eps: f32,
    /// Tokens one pass may hold: its widest buffer (`tokens × max(3·hidden, intermediate)`
    /// f32) within the device's storage-buffer limit.
    max_tokens: usize,
    /// Adapters one pass may mix: their LoRA blocks within the same limit.
    max_slots: usize,
    weight_bytes: u64,
    peak_batch_bytes: AtomicU64,
    /// One pass at a time: concurrent requests share the device without doubling its memory.
    pass: Mutex<()>,
}

impl GpuBlocks {
    /// Uploads every block's weights for `precision` (f16 or f32, as the device plan chose):
    /// at f16 the linear weights as f16; at f32 as bf16 when the checkpoint's values are bf16,
    /// as the published one's are, else f32.
    pub fn load(
        context: GpuContext,
        weights: &Weights,
        config: &Config,
        rotary: &RotaryTable,
        precision: Precision,
    ) -> Result<Self> {
        let rank = config.lora_rank;
        if rank > kernels::MAX_RANK {
            return Err(Error::Device(format!(
                "LoRA rank {rank} is above the GPU kernels' limit of {}",
                kernels::MAX_RANK
            )));
        }
        let f16 = precision == Precision::F16;
        let format = if f16 {
            WeightFormat::F16
        } else if weights.linear_weights_are_bf16() {
            WeightFormat::Bf16
        } else {
            WeightFormat::F32
        };
        let shapes = KernelShapes {
            weights: format,
            f16,
            head_dim: config.head_dim(),
        };
        let kernels = Kernels::compile(&context.device, &shapes)?;
        let device = &context.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut uploaded = 0u64;
        let mut upload = |label: &str, bytes: &[u8]| {
            uploaded += bytes.len() as u64;
            storage_init(&context, label, bytes)
        };
        let tasks = config.num_adapters();
        let mut block_len = 0;
        let mut task_blocks = vec![Vec::new(); tasks];
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let mut linear = |site: LinearSite| -> Result<GpuLinear> {
                let prefix = format!("roberta.encoder.layers.{layer}.{}", site.module());
                let base = format!("{prefix}.parametrizations.weight");
                let w = weights.f32(&format!("{base}.original"))?;
                let bias = weights.f32(&format!("{prefix}.bias"))?;
                let (n_in, n_out) = (w.len() / bias.len().max(1), bias.len());
                let lora_a = weights.f32(&format!("{base}.0.lora_A"))?;
                let lora_b = weights.f32(&format!("{base}.0.lora_B"))?;
                let (a_len, b_len) = (rank * n_in, n_out * rank);
                for (t, block) in task_blocks.iter_mut().enumerate() {
                    block.extend_from_slice(&lora_a[t * a_len..(t + 1) * a_len]);
                    block.extend_from_slice(&lora_b[t * b_len..(t + 1) * b_len]);
                }
                let a_offset = block_len;
                block_len += a_len + b_len;
                let stored = match format {
                    WeightFormat::F32 => w.iter().map(|v| v.to_bits()).collect(),
                    WeightFormat::Bf16 => bf16_words(&w),
                    WeightFormat::F16 => f16_words(&w),
                };
                Ok(GpuLinear {
                    weight: upload(&prefix, bytemuck::cast_slice(&stored)),
                    bias: upload(&prefix, bytemuck::cast_slice(&bias)),
                    n_in,
                    n_out,
                    a_offset,
                    b_offset: a_offset + a_len,
                })
            };
            let qkv = linear(LinearSite::Qkv)?;
            let out_proj = linear(LinearSite::OutProj)?;
            let fc1 = linear(LinearSite::Fc1)?;
            let fc2 = linear(LinearSite::Fc2)?;
            let mut norm = |name: &str| -> Result<GpuNorm> {
                let prefix = format!("roberta.encoder.layers.{layer}.{name}");
                Ok(GpuNorm {
                    weight: upload(
                        &prefix,
                        bytemuck::cast_slice(&weights.f32(&format!("{prefix}.weight"))?),
                    ),
                    bias: upload(
                        &prefix,
                        bytemuck::cast_slice(&weights.f32(&format!("{prefix}.bias"))?),
                    ),
                })
            };
            layers.push(GpuLayer {
                qkv,
                out_proj,
                norm1: norm("norm1")?,
                fc1,
                fc2,
                norm2: norm("norm2")?,
            });
        }
        let builtin: Vec<f32> = task_blocks.concat();
        let builtin_lora = upload("builtin lora", bytemuck::cast_slice(&builtin));
        let (cos, sin) = rotary.tables();
        let rotary = (
            upload("rotary cos", bytemuck::cast_slice(cos)),
            upload("rotary sin", bytemuck::cast_slice(sin)),
        );
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device(format!(
                "{}: the weights ({} MiB) do not fit: {e}",
                context.info.name,
                uploaded >> 20
            )));
        }
        let limit = context
            .limits
            .max_storage_buffer_binding_size
            .min(context.limits.max_buffer_size) as usize;
        let h = config.hidden_size;
        let widest = (3 * h).max(config.intermediate_size) * 4;
        let max_tokens = limit / widest;
        let max_slots = limit / (block_len * 4).max(1);
        context.check()?;
        Ok(GpuBlocks {
            kernels,
            layers,
            builtin_lora,
            builtin_scaling: config.lora_scaling(),
            block_len,
            rotary,
            hidden: h,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
            intermediate: config.intermediate_size,
            rank,
            eps: config.layer_norm_eps as f32,
            max_tokens,
            max_slots: max_slots.max(1),
            weight_bytes: uploaded,
            peak_batch_bytes: AtomicU64::new(0),
            pass: Mutex::new(()),
            context,
        })
    }

    /// Destroys the device (see [`GpuContext::destroy`]).
    pub fn destroy_device(&self) {
        self.context.destroy();
    }

    /// Tokens one pass holds at most (a longer batch runs as several passes).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Device memory used so far.
    pub fn memory(&self) -> DeviceMemory {
        DeviceMemory {
            weight_bytes: self.weight_bytes,
            peak_batch_bytes: self.peak_batch_bytes.load(Ordering::Relaxed),
        }
    }

    /// Runs every block on `x` (the embeddings, `tokens × hidden`, sequence after sequence as
    /// in `batch`) and returns the last layer's token vectors. A batch beyond one pass's tokens
    /// or adapters runs as several passes (sequences are independent).
    pub fn forward(&self, x: &[f32], batch: &[EncoderInput]) -> Result<Vec<f32>> {
        // wgpu panics on some failures of a lost device instead of returning them: one pass's
        // panic is that device's error, not the process's.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.forward_passes(x, batch)
        }))
        .unwrap_or_else(|panic| {
            let what = crate::error::panic_message(panic.as_ref())
                .unwrap_or_else(|| "unknown failure".into());
            Err(Error::Device(format!("{}: {what}", self.context.info.name)))
        })
    }

    fn forward_passes(&self, x: &[f32], batch: &[EncoderInput]) -> Result<Vec<f32>> {
        let h = self.hidden;
        let mut out = Vec::with_capacity(x.len());
        let mut first = 0;
        while first < batch.len() {
            let (end, tokens) = self.pass_end(batch, first)?;
            let offset = out.len();
            out.extend(self.forward_pass(&x[offset..offset + tokens * h], &batch[first..end])?);
            first = end;
        }
        Ok(out)
    }

    /// The end of the pass that starts at `first`, and its tokens.
    fn pass_end(&self, batch: &[EncoderInput], first: usize) -> Result<(usize, usize)> {
        let mut tokens = 0;
        let mut slots: Vec<&TaskAdapter> = Vec::new();
        for (i, seq) in batch.iter().enumerate().skip(first) {
            let new_slot = seq.adapter.filter(|a| !slots.contains(a));
            let too_many = tokens + seq.ids.len() > self.max_tokens
                || (new_slot.is_some() && slots.len() == self.max_slots);
            if too_many {
                if i == first {
                    return Err(Error::Device(format!(
                        "a sequence of {} tokens does not fit one pass on {} (at most {} tokens)",
                        seq.ids.len(),
                        self.context.info.name,
                        self.max_tokens
                    )));
                }
                return Ok((i, tokens));
            }
            tokens += seq.ids.len();
            slots.extend(new_slot);
        }
        Ok((batch.len(), tokens))
    }

    /// One pass: upload, record every block, run, read back.
    fn forward_pass(&self, x_host: &[f32], batch: &[EncoderInput]) -> Result<Vec<f32>> {
        let _pass = self.pass.lock().unwrap_or_else(|e| e.into_inner());
        self.context.check()?;
        let device = &self.context.device;
        let (h, r) = (self.hidden, self.rank);
        let tokens = x_host.len() / h;
        let plan = BatchPlan::new(batch, self.builtin_scaling);

        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut allocated = 0u64;
        let mut scratch = |floats: usize| {
            allocated += 4 * floats.max(4) as u64;
            storage(device, floats)
        };
        let x = scratch(tokens * h);
        let y = scratch(tokens * h);
        let qkv = scratch(tokens * 3 * h);
        let ctx = scratch(tokens * h);
        let mlp = scratch(tokens * self.intermediate);
        let low = scratch(tokens * r);
        let lora = scratch(plan.slots.len() * self.block_len);
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (4 * tokens * h) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let queue = &self.context.queue;
        queue.write_buffer(&x, 0, bytemuck::cast_slice(x_host));
        let slots = storage_init(
            &self.context,
            "slots",
            bytemuck::cast_slice(&plan.row_slots),
        );
        let scales = storage_init(&self.context, "scales", bytemuck::cast_slice(&plan.scales));
        let positions = storage_init(
            &self.context,
            "positions",
            bytemuck::cast_slice(&plan.positions),
        );
        let blocks = storage_init(
            &self.context,
            "query blocks",
            bytemuck::cast_slice(&plan.query_blocks),
        );
        allocated +=
            4 * (plan.row_slots.len() + plan.positions.len() + plan.query_blocks.len()) as u64;
        self.peak_batch_bytes
            .fetch_max(allocated + 4 * (tokens * h) as u64, Ordering::Relaxed);

        let mut encoder = device.create_command_encoder(&Default::default());
        let block_bytes = (4 * self.block_len) as u64;
        for (slot, adapter) in plan.slots.iter().enumerate() {
            let at = slot as u64 * block_bytes;
            match adapter {
                TaskAdapter::Builtin(t) => encoder.copy_buffer_to_buffer(
                    &self.builtin_lora,
                    *t as u64 * block_bytes,
                    &lora,
                    at,
                    block_bytes,
                ),
                TaskAdapter::Custom(c) => {
                    let block = self.custom_block(c);
                    queue.write_buffer(&lora, at, bytemuck::cast_slice(&block));
                }
            }
        }
        let lora = LoraBuffers {
            slots: &slots,
            scales: &scales,
            tensors: &lora,
            low: &low,
        };
        {
            let mut pass = Recorder::new(device, &self.kernels, &mut encoder);
            for layer in &self.layers {
                self.record_layer(
                    &mut pass,
                    layer,
                    tokens,
                    &plan,
                    &lora,
                    [&x, &y, &qkv, &ctx, &mlp],
                    (&positions, &blocks),
                );
            }
        }
        encoder.copy_buffer_to_buffer(&x, 0, &readback, 0, (4 * tokens * h) as u64);
        let submission = queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        readback.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.context.wait(submission)?;
        for (scope, what) in [
            (validation, "invalid forward pass"),
            (oom, "out of device memory"),
        ] {
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(Error::Device(format!(
                    "{}: {what} ({tokens} tokens): {e}",
                    self.context.info.name
                )));
            }
        }
        match receiver.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Device(format!("reading the result back: {e}"))),
            Err(_) => return Err(Error::Device("the result was not read back".into())),
        }
        let view = readback
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Device(format!("reading the result back: {e}")))?;
        let out = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        readback.unmap();
        Ok(out)
    }

    /// One post-LN block, as `model.rs`: `x = LN(attention(x) + x)`, then `x = LN(mlp(x) + x)`.
    #[allow(clippy::too_many_arguments)]
    fn record_layer(
        &self,
        pass: &mut Recorder,
        layer: &GpuLayer,
        tokens: usize,
        plan: &BatchPlan,
        lora: &LoraBuffers,
        [x, y, qkv, ctx, mlp]: [&wgpu::Buffer; 5],
        (positions, blocks): (&wgpu::Buffer, &wgpu::Buffer),
    ) {
        let (h, d) = (self.hidden, self.head_dim);
        // Attention: QKV with its LoRA, rotary on Q and K, attention per head, output projection.
        pass.linear(x, &self.dispatch(&layer.qkv, tokens, false), lora, qkv);
        pass.rotary(
            qkv,
            tokens,
            self.heads,
            d / 2,
            positions,
            (&self.rotary.0, &self.rotary.1),
        );
        pass.attention(qkv, blocks, plan.query_blocks.len(), self.heads, h, d, ctx);
        pass.linear(ctx, &self.dispatch(&layer.out_proj, tokens, false), lora, y);
        pass.add_layer_norm(
            y,
            x,
            tokens,
            h,
            self.eps,
            (&layer.norm1.weight, &layer.norm1.bias),
        );
        // MLP: fc1 with GELU fused, fc2.
        pass.linear(x, &self.dispatch(&layer.fc1, tokens, true), lora, mlp);
        pass.linear(mlp, &self.dispatch(&layer.fc2, tokens, false), lora, y);
        pass.add_layer_norm(
            y,
            x,
            tokens,
            h,
            self.eps,
            (&layer.norm2.weight, &layer.norm2.bias),
        );
    }

    fn dispatch<'a>(&self, linear: &'a GpuLinear, rows: usize, gelu: bool) -> LinearDispatch<'a> {
        LinearDispatch {
            rows,
            n_in: linear.n_in,
            n_out: linear.n_out,
            rank: self.rank,
            a_offset: linear.a_offset,
            b_offset: linear.b_offset,
            block_len: self.block_len,
            gelu,
            weight: &linear.weight,
            bias: &linear.bias,
        }
    }

    /// A custom adapter's LoRA tensors in a slot's layout.
    fn custom_block(&self, adapter: &crate::adapters::CustomAdapter) -> Vec<f32> {
        let mut block = Vec::with_capacity(self.block_len);
        for index in 0..self.layers.len() * LinearSite::ALL.len() {
            let (a, b, _) = adapter.linear_parts(index);
            block.extend_from_slice(a);
            block.extend_from_slice(b);
        }
        block
    }
}

/// What one pass needs to know of its sequences, uploaded beside the embeddings.
struct BatchPlan<'a> {
    /// The distinct adapters of the batch, in order of appearance.
    slots: Vec<&'a TaskAdapter>,
    /// Each slot's LoRA scaling.
    scales: Vec<f32>,
    /// Each token's slot ([`NO_SLOT`] for the base weights).
    row_slots: Vec<u32>,
    /// Each token's position in its sequence.
    positions: Vec<u32>,
    /// `[first row, length, first query, 0]` of each block of 64 queries of a sequence.
    query_blocks: Vec<[u32; 4]>,
}

impl<'a> BatchPlan<'a> {
    fn new(batch: &[EncoderInput<'a>], builtin_scaling: f32) -> Self {
        let mut plan = BatchPlan {
            slots: Vec::new(),
            scales: Vec::new(),
            row_slots: Vec::new(),
            positions: Vec::new(),
            query_blocks: Vec::new(),
        };
        let mut start = 0u32;
        for seq in batch {
            let len = seq.ids.len() as u32;
            let slot = match seq.adapter {
                None => NO_SLOT,
                Some(adapter) => match plan.slots.iter().position(|s| *s == adapter) {
                    Some(i) => i as u32,
                    None => {
                        plan.slots.push(adapter);
                        plan.scales.push(match adapter {
                            TaskAdapter::Builtin(_) => builtin_scaling,
                            TaskAdapter::Custom(c) => c.weights().scaling,
                        });
                        plan.slots.len() as u32 - 1
                    }
                },
            };
            plan.row_slots
                .extend(std::iter::repeat_n(slot, len as usize));
            plan.positions.extend(0..len);
            for first in (0..len).step_by(kernels::ATTENTION_QUERIES) {
                plan.query_blocks.push([start, len, first, 0]);
            }
            start += len;
        }
        if plan.scales.is_empty() {
            plan.scales.push(0.0);
        }
        plan
    }
}

/// A storage buffer of `floats` f32 (at least one 16-byte word: bindings cannot be empty).
pub(super) fn storage(device: &wgpu::Device, floats: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (4 * floats.max(4)) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// A storage buffer holding `bytes` (padded to 16 bytes), written through the queue.
pub(super) fn storage_init(context: &GpuContext, label: &str, bytes: &[u8]) -> wgpu::Buffer {
    let buffer = context.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.len().next_multiple_of(16).max(16) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let whole = bytes.len() / 4 * 4;
    context.queue.write_buffer(&buffer, 0, &bytes[..whole]);
    if whole < bytes.len() {
        let mut tail = bytes[whole..].to_vec();
        tail.resize(4, 0);
        context.queue.write_buffer(&buffer, whole as u64, &tail);
    }
    buffer
}

/// f32 values rounded to f16 (to nearest; beyond ±65504 clamped), as f16 pairs in words
/// (element `2j` in word `j`'s low half).
pub(super) fn f16_words(values: &[f32]) -> Vec<u32> {
    let half = |v: f32| u32::from(half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits());
    values
        .chunks(2)
        .map(|pair| half(pair[0]) | (pair.get(1).map_or(0, |v| half(*v)) << 16))
        .collect()
}

/// f32 values that are bf16 values, as bf16 pairs in words (element `2j` in word `j`'s low half).
pub(super) fn bf16_words(values: &[f32]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|pair| {
            let lo = pair[0].to_bits() >> 16;
            let hi = pair.get(1).map_or(0, |v| v.to_bits() >> 16);
            lo | (hi << 16)
        })
        .collect()
}
