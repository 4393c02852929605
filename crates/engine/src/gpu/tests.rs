//! The matmul shaders alone against `kernels::reference` on shapes that are not multiples of
//! their tiles (64 rows and columns, K slices of 16, quads of four): partial tiles, odd K, one
//! row, rows without an adapter beside rows of two slots, odd LoRA rank, GELU on and off, in
//! each weight format (f32, bf16, f16) and on the f16 path. The end-to-end tests
//! (`tests/gpu.rs`) run only the model's shapes.

use super::blocks::{storage, storage_init};
use super::kernels::{KernelShapes, Kernels, LinearDispatch, LoraBuffers, Recorder, WeightFormat};
use super::GpuContext;
use crate::kernels::elementwise::gelu_fast;
use crate::kernels::reference::{matmul_transposed, noise};

const NO_SLOT: u32 = u32::MAX;

fn context() -> GpuContext {
    GpuContext::open(false)
        .unwrap()
        .expect("a GPU adapter (CI installs lavapipe: scripts/setup-lavapipe.sh)")
}

fn read(context: &GpuContext, buffer: &wgpu::Buffer, floats: usize) -> Vec<f32> {
    let bytes = (4 * floats) as u64;
    let readback = context.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = context.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &readback, 0, bytes);
    let submission = context.queue.submit([encoder.finish()]);
    readback
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    context.wait(submission).unwrap();
    let view = readback.slice(..).get_mapped_range().unwrap();
    bytemuck::cast_slice::<u8, f32>(&view).to_vec()
}

/// Rounds through f16 (the f16 path's inputs), or through bf16 (the bf16 format's weights).
fn to_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
}
fn to_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect()
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    rank: usize,
    gelu: bool,
}

/// One `Recorder::linear` on the device and the reference on the host: the largest difference
/// relative to the output's largest magnitude.
fn run(context: &GpuContext, format: WeightFormat, f16: bool, case: &Case) -> f32 {
    let Case {
        m,
        n,
        k,
        rank,
        gelu,
    } = *case;
    let shapes = KernelShapes {
        weights: format,
        f16,
        head_dim: 64,
    };
    let kernels = Kernels::compile(&context.device, &shapes).unwrap();
    let seed = (m * 1000 + n * 10 + k) as u64;
    let x = noise(m * k, seed);
    let mut w = noise(n * k, seed + 1);
    let bias = noise(n, seed + 2);
    // Two slots: each an A (rank × k) then a B (n × rank); rows cycle through 0, none, 1.
    let block_len = rank * k + n * rank;
    let blocks: Vec<f32> = noise(2 * block_len, seed + 3);
    let scales = [0.5f32, -2.0];
    let slots: Vec<u32> = (0..m).map(|r| [0, NO_SLOT, 1][r % 3]).collect();
    let stored: Vec<u32> = match format {
        WeightFormat::F32 => w.iter().map(|v| v.to_bits()).collect(),
        WeightFormat::Bf16 => {
            w = to_bf16(&w);
            super::blocks::bf16_words(&w)
        }
        WeightFormat::F16 => {
            w = to_f16(&w);
            super::blocks::f16_words(&w)
        }
    };
    // The reference: f16 inputs where the shader rounds them.
    let x_ref = if f16 { to_f16(&x) } else { x.clone() };
    let mut want = matmul_transposed(&x_ref, m, k, &w, n, Some(&bias));
    for r in 0..m {
        let Some(slot) = [Some(0), None, Some(1)][r % 3] else {
            continue;
        };
        let block = &blocks[slot * block_len..(slot + 1) * block_len];
        let (a, b) = block.split_at(rank * k);
        // LoRA reads the f32 activations on both paths.
        let low = matmul_transposed(&x[r * k..(r + 1) * k], 1, k, a, rank, None);
        for c in 0..n {
            let up: f32 = (0..rank)
                .map(|t| low[t] * scales[slot] * b[c * rank + t])
                .sum();
            want[r * n + c] += up;
        }
    }
    if gelu {
        want.iter_mut().for_each(|v| *v = gelu_fast(*v));
    }

    let buffer = |label: &str, bytes: &[u8]| storage_init(context, label, bytes);
    let (xb, wb, bb) = (
        buffer("x", bytemuck::cast_slice(&x)),
        buffer("w", bytemuck::cast_slice(&stored)),
        buffer("bias", bytemuck::cast_slice(&bias)),
    );
    let (sb, scb, lb) = (
        buffer("slots", bytemuck::cast_slice(&slots)),
        buffer("scales", bytemuck::cast_slice(&scales)),
        buffer("lora", bytemuck::cast_slice(&blocks)),
    );
    let low = storage(&context.device, m * rank);
    let out = storage(&context.device, m * n);
    let mut encoder = context.device.create_command_encoder(&Default::default());
    {
        let mut pass = Recorder::new(&context.device, &kernels, &mut encoder);
        let layer = LinearDispatch {
            rows: m,
            n_in: k,
            n_out: n,
            rank,
            a_offset: 0,
            b_offset: rank * k,
            block_len,
            gelu,
            weight: &wb,
            bias: &bb,
        };
        let lora = LoraBuffers {
            slots: &sb,
            scales: &scb,
            tensors: &lb,
            low: &low,
        };
        pass.linear(&xb, &layer, &lora, &out);
    }
    context.queue.submit([encoder.finish()]);
    let got = read(context, &out, m * n);
    context.check().unwrap();
    let scale = want.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
    got.iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0.0, f32::max)
}

const CASES: [Case; 4] = [
    Case {
        m: 1,
        n: 1,
        k: 1,
        rank: 1,
        gelu: false,
    },
    Case {
        m: 70,
        n: 45,
        k: 37,
        rank: 3,
        gelu: true,
    },
    Case {
        m: 130,
        n: 67,
        k: 64,
        rank: 4,
        gelu: false,
    },
    Case {
        m: 3,
        n: 129,
        k: 18,
        rank: 16,
        gelu: true,
    },
];

#[test]
fn matmul_in_every_weight_format_matches_the_reference_on_odd_shapes() {
    let context = context();
    for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::F16] {
        for case in &CASES {
            let diff = run(&context, format, false, case);
            println!(
                "{format:?} f32 path {}x{}x{}: {diff:.2e}",
                case.m, case.n, case.k
            );
            assert!(
                diff <= 1e-5,
                "{format:?}, {}×{}×{}: {diff:e}",
                case.m,
                case.n,
                case.k
            );
        }
    }
}

#[test]
fn the_f16_matmul_matches_the_reference_on_f16_inputs_on_odd_shapes() {
    let context = context();
    assert!(
        context.info().shader_f16,
        "{} offers no shader-f16 (lavapipe from Mesa 25 does)",
        context.info().name
    );
    for case in &CASES {
        let diff = run(&context, WeightFormat::F16, true, case);
        println!("f16 path {}x{}x{}: {diff:.2e}", case.m, case.n, case.k);
        // Inputs are the same f16 values; what remains is four products rounded to f16 per dot.
        assert!(diff <= 1e-3, "{}×{}×{}: {diff:e}", case.m, case.n, case.k);
    }
}
