//! Every test that checks numbers runs once per variant this CPU has ([`variants`]: the
//! detected CPU capped to each instruction-set level), its failures labelled with the variant,
//! against the reference kernel or an f64 product at a tolerance stated per storage.

use half::bf16;

use super::activations::{bf16_part, interleave_row_pairs, quantize_row, split_row};
use super::*;
use crate::kernels::cpu::{record_variant, Isa};

fn noise(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| crate::fixture::value(seed, "noise", i as u64) * 20.0)
        .collect()
}

fn round_bf16(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The variants of this CPU, each recorded as run by `test` (see [`record_variant`]).
fn variants(test: &str) -> Vec<(Isa, Cpu)> {
    let cpu = Cpu::detected();
    cpu.test_variants()
        .into_iter()
        .map(|isa| {
            record_variant(test, isa);
            (isa, cpu.capped(isa))
        })
        .collect()
}

const ALL_TYPES: [PackedType; 4] = [
    PackedType::F32,
    PackedType::Bf16,
    PackedType::Bf16x3,
    PackedType::Int8,
];

/// `x · Wᵀ (+ bias)` with the packed weights of `ty` on `cpu`.
fn product(
    x: &[f32],
    rows: usize,
    w: &[f32],
    (n, k): (usize, usize),
    ty: PackedType,
    cpu: Cpu,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let packed = PackedMatrix::pack(w, n, k, ty, cpu);
    let mut out = vec![f32::NAN; rows * n];
    let init = bias.map_or(MatmulInit::Zero, MatmulInit::Bias);
    matmul(x, k, rows, &packed, &mut out, n, init, true);
    out
}

/// Whether the kernel `cpu` runs for `ty` sums in the reference's order (same bits) or in an
/// order of its own (bf16 dot products, tiles): the tolerance of [`kernels_match_the_reference_kernel`].
fn sums_in_reference_order(ty: PackedType, rows: usize, cpu: Cpu) -> bool {
    let path = Path::choose(&PackedMatrix::empty(ty, cpu), rows);
    ty == PackedType::Int8
        || matches!(path, Path::Reference | Path::Avx2 | Path::Neon)
        // Every AVX-512 kernel but VDPBF16PS's is one FMA per input in input order.
        || (path == Path::Avx512 && !(ty == PackedType::Bf16 && cpu.avx512_bf16))
}

#[test]
fn kernels_match_the_reference_kernel() {
    // Rows below and above 6, 16 and 32; k odd, not a multiple of 64, past one 2048-input int8
    // chunk; n inside one panel and past one.
    let shapes = [
        (1, 1, 1),
        (1, 2, 3),
        (5, 7, 3),
        (6, 64, 64),
        (7, 129, 65),
        (13, 1024, 130),
        (40, 33, 200),
        (33, 4100, 70),
        // k odd and past 1024: in parts on AVX2, carried in registers (9 rows) and widened
        // into a buffer (14 rows).
        (9, 1025, 70),
        (14, 1027, 70),
    ];
    for (isa, cpu) in variants("linear::kernels_match_the_reference_kernel") {
        for ty in ALL_TYPES {
            for &(rows, k, n) in &shapes {
                let x = noise(rows * k, 2);
                let w = round_bf16(noise(n * k, 3));
                let bias = noise(n, 4);
                let want = product(&x, rows, &w, (n, k), ty, Cpu::SCALAR, Some(&bias));
                let got = product(&x, rows, &w, (n, k), ty, cpu, Some(&bias));
                let label = format!("{isa}: {ty:?} {rows}x{k}x{n}");
                if sums_in_reference_order(ty, rows, cpu) {
                    assert!(
                        bits(&got) == bits(&want),
                        "{label}: not the reference's bits"
                    );
                    continue;
                }
                // Another order of the same exact products: f32 rounding of the sums.
                let scale: f32 = x.iter().map(|v| v.abs()).sum::<f32>() * 20.0 / rows as f32;
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale + 1e-6,
                        "{label} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// Each variant runs its own kernel (not the reference under another name), so the parity
/// tests above test it.
#[test]
fn each_variant_takes_its_own_kernel() {
    for (isa, cpu) in variants("linear::each_variant_takes_its_own_kernel") {
        let path = |ty| Path::choose(&PackedMatrix::empty(ty, cpu), 8);
        let (f32_on_bf16, bf16, int8) = match isa {
            Isa::Scalar => (Path::Reference, Path::Reference, Path::Reference),
            Isa::Avx2 => (Path::Avx2, Path::Avx2, Path::Avx2),
            Isa::AvxVnni => (Path::Avx2, Path::Avx2, Path::AvxVnni { vex: cpu.avx_vnni }),
            Isa::Neon => (Path::Neon, Path::Neon, Path::Reference),
            Isa::Dotprod => (Path::Neon, Path::Neon, Path::Dotprod),
            Isa::I8mm => (Path::Neon, Path::Neon, Path::I8mm),
            Isa::Bf16 => (Path::Neon, Path::Bfmmla, Path::I8mm),
            // The AVX-512 and AMX levels choose by rows and tiles (tested with their kernels).
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => continue,
        };
        assert_eq!(
            (
                path(PackedType::Bf16x3),
                path(PackedType::Bf16),
                path(PackedType::Int8)
            ),
            (f32_on_bf16, bf16, int8),
            "{isa}"
        );
    }
}

#[test]
fn products_match_an_f64_product_on_awkward_shapes() {
    for (isa, cpu) in variants("linear::products_match_an_f64_product_on_awkward_shapes") {
        for ty in [PackedType::F32, PackedType::Bf16, PackedType::Bf16x3] {
            for &(rows, k, n) in &[
                (1, 1, 1),
                (1, 2, 1),
                (5, 7, 3),
                (6, 64, 64),
                (7, 129, 65),
                (13, 1024, 130),
                (40, 33, 200),
                (16, 32, 32),
                (70, 1024, 129),
            ] {
                // bf16-exact inputs, so every storage can be held to f32 rounding error.
                let x = round_bf16(noise(rows * k, 2));
                let w = round_bf16(noise(n * k, 3));
                let bias = noise(n, 4);
                let packed = PackedMatrix::pack(&w, n, k, ty, cpu);
                let want =
                    crate::kernels::reference::matmul_transposed(&x, rows, k, &w, n, Some(&bias));
                let tol = 2e-5 * (1.0 + (k as f32).sqrt() * 4.0);
                for parallel in [false, true] {
                    let mut out = vec![f32::NAN; rows * n];
                    matmul(
                        &x,
                        k,
                        rows,
                        &packed,
                        &mut out,
                        n,
                        MatmulInit::Bias(&bias),
                        parallel,
                    );
                    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= tol,
                            "{isa}: {ty:?} {rows}x{k}x{n} [{i}]: {a} vs {b}"
                        );
                    }
                }
                // Accumulating onto (x·Wᵀ + b) gives 2·x·Wᵀ + b; a wider output stride works.
                let mut acc = vec![0f32; rows * (n + 3)];
                for r in 0..rows {
                    acc[r * (n + 3)..r * (n + 3) + n].copy_from_slice(&want[r * n..(r + 1) * n]);
                }
                matmul(
                    &x,
                    k,
                    rows,
                    &packed,
                    &mut acc,
                    n + 3,
                    MatmulInit::Accumulate,
                    true,
                );
                for r in 0..rows {
                    for c in 0..n {
                        let expected = 2.0 * want[r * n + c] - bias[c];
                        let got = acc[r * (n + 3) + c];
                        assert!(
                            (got - expected).abs() <= 2.0 * tol,
                            "{isa}: {ty:?} accumulate ({r},{c}): {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}

/// Worst `|out − exact| / Σ|x·w|` of one product against an f64 reference.
fn relative_error(
    ty: PackedType,
    cpu: Cpu,
    x: &[f32],
    w: &[f32],
    rows: usize,
    k: usize,
    n: usize,
) -> f64 {
    let out = product(x, rows, w, (n, k), ty, cpu, None);
    let mut worst = 0f64;
    for r in 0..rows {
        for c in 0..n {
            let terms = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64);
            let (exact, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
            worst = worst.max((out[r * n + c] as f64 - exact).abs() / scale.max(f64::MIN_POSITIVE));
        }
    }
    worst
}

#[test]
fn bf16x3_products_are_as_exact_as_f32_ones() {
    for (isa, cpu) in variants("linear::bf16x3_products_are_as_exact_as_f32_ones") {
        // f32 activations with all their bits, weights from a bf16 checkpoint. Shapes with
        // rows ≥ 16 and k a multiple of 32 run on AMX where the CPU has it.
        for &(rows, k, n) in &[
            (1, 64, 64),
            (5, 7, 3),
            (20, 96, 70),
            (33, 1024, 130),
            (32, 4096, 64),
        ] {
            let x = noise(rows * k, 12);
            let w = round_bf16(noise(n * k, 13));
            let f32_error = relative_error(PackedType::F32, cpu, &x, &w, rows, k, n);
            let x3_error = relative_error(PackedType::Bf16x3, cpu, &x, &w, rows, k, n);
            let bf16_error = relative_error(PackedType::Bf16, cpu, &x, &w, rows, k, n);
            assert!(
                f32_error < 1e-6 && x3_error < 1e-6,
                "{isa}: {rows}x{k}x{n}: f32 {f32_error:e}, bf16x3 {x3_error:e}"
            );
            // The bound separates the paths: bf16 activations lose ~8 bits.
            assert!(
                bf16_error > 1e-4,
                "{isa}: {rows}x{k}x{n}: bf16 {bf16_error:e}"
            );
        }
    }
}

#[test]
fn the_epilogue_adds_the_low_rank_term_then_gelu() {
    for (isa, cpu) in variants("linear::the_epilogue_adds_the_low_rank_term_then_gelu") {
        // Rows below and above AMX's 16, k past one 1024-wide chunk, rows without a term, and
        // on AMX several blocks of 32 rows and partial ones, in both weight layouts.
        for &(rows, k, n) in &[(5, 96, 70), (40, 2048, 64), (100, 1024, 130)] {
            let rank = 4;
            let x = noise(rows * k, 31);
            let w = round_bf16(noise(n * k, 32));
            let bias = noise(n, 33);
            let low = noise(rows * rank, 34);
            let up_t = noise(rank * n, 35);
            let up: Vec<Option<&[f32]>> = (0..rows)
                .map(|r| (r % 3 != 0).then_some(&up_t[..]))
                .collect();
            for ty in ALL_TYPES {
                let packed = PackedMatrix::pack(&w, n, k, ty, cpu);
                let mut plain = vec![0f32; rows * n];
                matmul(
                    &x,
                    k,
                    rows,
                    &packed,
                    &mut plain,
                    n,
                    MatmulInit::Bias(&bias),
                    false,
                );
                let low_rank = LowRank {
                    low: &low,
                    rank,
                    up: &up,
                };
                let epilogue = Epilogue {
                    low_rank: Some(low_rank),
                    gelu: true,
                };
                let mut fused = vec![0f32; rows * n];
                matmul_with(
                    &x,
                    k,
                    rows,
                    &packed,
                    &mut fused,
                    n,
                    MatmulInit::Bias(&bias),
                    epilogue,
                    true,
                );
                for r in 0..rows {
                    for c in 0..n {
                        let term: f32 = match up[r] {
                            Some(u) => (0..rank).map(|j| low[r * rank + j] * u[j * n + c]).sum(),
                            None => 0.0,
                        };
                        let want = crate::kernels::elementwise::gelu_erf(plain[r * n + c] + term);
                        let got = fused[r * n + c];
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{isa}: {ty:?} {rows}x{k}x{n} ({r},{c}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn extra_inputs_give_the_bits_of_rows_extended_by_hand() {
    let (rank, slots) = (4, 5);
    for (isa, cpu) in variants("linear::extra_inputs_give_the_bits_of_rows_extended_by_hand") {
        // k_x a whole number of AMX tile steps (1024, 64) or not (100); rows for the AVX512_BF16
        // kernel (5) and for AMX (40, 100: several blocks and a partial one).
        for (rows, k_x, n) in [(5, 64, 70), (40, 1024, 96), (100, 64, 130), (40, 100, 64)] {
            let k = k_x + slots * rank;
            let x = noise(rows * k_x, 1);
            let low = noise(rows * rank, 2);
            let slot: Vec<Option<usize>> = (0..rows)
                .map(|r| (r % 7 != 3).then_some(r % slots))
                .collect();
            let extra = LowRankInputs {
                low: &low,
                rank,
                slot: &slot,
                slots,
            };
            let mut by_hand = vec![0f32; rows * k];
            for (r, row) in by_hand.chunks_exact_mut(k).enumerate() {
                row[..k_x].copy_from_slice(&x[r * k_x..][..k_x]);
                if let Some(s) = slot[r] {
                    row[k_x + s * rank..][..rank].copy_from_slice(&low[r * rank..][..rank]);
                }
            }
            let w = round_bf16(noise(n * k, 3));
            let bias = noise(n, 4);
            for ty in [PackedType::Bf16, PackedType::Bf16x3] {
                let packed = PackedMatrix::pack(&w, n, k, ty, cpu);
                let mut want = vec![0f32; rows * n];
                matmul(
                    &by_hand,
                    k,
                    rows,
                    &packed,
                    &mut want,
                    n,
                    MatmulInit::Bias(&bias),
                    true,
                );
                let mut got = vec![f32::NAN; rows * n];
                let epilogue = Epilogue::default();
                matmul_extended(
                    &x,
                    k_x,
                    rows,
                    Some(extra),
                    &packed,
                    &mut got,
                    n,
                    MatmulInit::Bias(&bias),
                    epilogue,
                    true,
                );
                assert!(
                    bits(&got) == bits(&want),
                    "{isa}: {ty:?}, {rows}×{k_x}+{}×{n}",
                    slots * rank
                );
            }
        }
    }
}

#[test]
fn rows_do_not_depend_on_the_batch() {
    for (isa, cpu) in variants("linear::rows_do_not_depend_on_the_batch") {
        // 40 rows take AMX where the CPU has it, one row the vector kernels: the same bits.
        for ty in ALL_TYPES {
            let (rows, k, n) = (40, 96, 70);
            let x = noise(rows * k, 5);
            let w = round_bf16(noise(n * k, 6));
            let packed = PackedMatrix::pack(&w, n, k, ty, cpu);
            let mut all = vec![0f32; rows * n];
            matmul(&x, k, rows, &packed, &mut all, n, MatmulInit::Zero, true);
            let alone_same =
                sums_in_reference_order(ty, 1, cpu) == sums_in_reference_order(ty, rows, cpu);
            if !alone_same && !matches!(ty, PackedType::Int8) {
                // bf16 on AMX (≥ 16 rows) against AVX512_BF16 (fewer): the model never splits
                // a batch by rows, so only the rows of one product are held to each other.
                continue;
            }
            for r in 0..rows {
                let mut one = vec![0f32; n];
                matmul(
                    &x[r * k..],
                    k,
                    1,
                    &packed,
                    &mut one,
                    n,
                    MatmulInit::Zero,
                    false,
                );
                assert_eq!(one, all[r * n..(r + 1) * n], "{isa}: {ty:?} row {r}");
            }
        }
    }
}

#[test]
fn tiled_and_linear_layouts_give_the_same_bits() {
    // Every kernel reads the same weights in the same order from either layout: 5 rows take
    // the vector kernels, 40 rows AMX where present.
    let (k, n) = (1024, 130);
    let w = round_bf16(noise(n * k, 3));
    for (isa, cpu) in variants("linear::tiled_and_linear_layouts_give_the_same_bits") {
        for ty in [PackedType::Bf16, PackedType::Bf16x3, PackedType::Int8] {
            let packs = [
                PackedMatrix::pack_tiled(&w, n, k, ty, true, cpu),
                PackedMatrix::pack_tiled(&w, n, k, ty, false, cpu),
            ];
            assert_eq!(
                packs[0].layout(),
                PanelLayout::Tiled {
                    steps: packs[0].steps
                }
            );
            assert_eq!(packs[1].layout(), PanelLayout::Linear);
            assert_eq!(packs[0].col_sums, packs[1].col_sums, "{ty:?}");
            for rows in [5, 40] {
                let x = noise(rows * k, 4);
                let outs = packs.each_ref().map(|p| {
                    let mut out = vec![0f32; rows * n];
                    matmul(&x, k, rows, p, &mut out, n, MatmulInit::Zero, false);
                    out
                });
                assert!(
                    bits(&outs[0]) == bits(&outs[1]),
                    "{isa}: {ty:?} {rows} rows"
                );
            }
        }
    }
}

/// Rows (below and above 6, 16 and 32), k (a single input, not a multiple of 64, past one
/// 2048-input chunk) and n (inside one panel, past one) for the int8 kernels.
const INT8_SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 3),
    (1, 100, 70),
    (5, 7, 130),
    (5, 4100, 64),
    (17, 1000, 70),
    (17, 2048, 3),
    (33, 4100, 130),
    (33, 64, 65),
];

/// Activations for the int8 tests: noise with one row all zeros and one with a lone spike
/// (a scale set by a single value, the rest rounding to 0).
fn int8_activations(rows: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x = noise(rows * k, seed);
    if rows > 2 {
        x[k..2 * k].fill(0.0);
        x[2 * k..3 * k].iter_mut().for_each(|v| *v *= 1e-4);
        x[2 * k] = 1e3;
    }
    x
}

/// The int8 product as every kernel defines it, written out: per row and column, the i32 sum
/// of the quantised products over each chunk of [`INT8_CHUNK_STEPS`] steps times the row scale
/// times the column scale; the first chunk is stored with the bias, the others added.
fn int8_by_hand(x: &[f32], rows: usize, w: &PackedMatrix, bias: &[f32]) -> Vec<f32> {
    let (n, k, steps) = (w.n, w.k, w.steps);
    let chunk_inputs = 4 * INT8_CHUNK_STEPS;
    let weight = |c: usize, i: usize| {
        (w.data[(c / PANEL) * steps * PANEL + w.layout().at(i / 4, c % PANEL)] >> (8 * (i % 4)))
            as u8 as i8
    };
    let mut out = vec![0f32; rows * n];
    let mut quads = vec![0u32; steps];
    for r in 0..rows {
        let row_scale = quantize_row(&x[r * k..(r + 1) * k], &mut quads);
        let act = |i: usize| (quads[i / 4] >> (8 * (i % 4))) as u8 as i8;
        for c in 0..n {
            for (chunk, start) in (0..k.max(1)).step_by(chunk_inputs).enumerate() {
                let inputs = start..k.min(start + chunk_inputs);
                let sum: i32 = inputs.map(|i| act(i) as i32 * weight(c, i) as i32).sum();
                let v = sum as f32 * row_scale * w.scales[c];
                let o = &mut out[r * n + c];
                *o = if chunk == 0 { v + bias[c] } else { *o + v };
            }
        }
    }
    out
}

#[test]
fn int8_kernels_give_the_quantised_products_bits() {
    let rank = 4;
    for (isa, cpu) in variants("linear::int8_kernels_give_the_quantised_products_bits") {
        for &(rows, k, n) in &INT8_SHAPES {
            let x = int8_activations(rows, k, 45);
            let packed = PackedMatrix::pack(&noise(n * k, 46), n, k, PackedType::Int8, cpu);
            let bias = noise(n, 47);
            let want = int8_by_hand(&x, rows, &packed, &bias);
            for parallel in [false, true] {
                let mut out = vec![f32::NAN; rows * n];
                matmul(
                    &x,
                    k,
                    rows,
                    &packed,
                    &mut out,
                    n,
                    MatmulInit::Bias(&bias),
                    parallel,
                );
                assert!(bits(&out) == bits(&want), "{isa}: {rows}x{k}x{n}");
            }
            // Every init and the epilogue, through a wider output stride: the reference kernel's bits.
            let reference =
                PackedMatrix::pack(&noise(n * k, 46), n, k, PackedType::Int8, Cpu::SCALAR);
            let low = noise(rows * rank, 51);
            let up_t = noise(rank * n, 52);
            let up: Vec<Option<&[f32]>> = (0..rows)
                .map(|r| (r % 3 != 0).then_some(&up_t[..]))
                .collect();
            let epilogue = Epilogue {
                low_rank: Some(LowRank {
                    low: &low,
                    rank,
                    up: &up,
                }),
                gelu: true,
            };
            let start = noise(rows * (n + 3), 53);
            for (init, epilogue) in [
                (MatmulInit::Zero, Epilogue::default()),
                (MatmulInit::Accumulate, Epilogue::default()),
                (MatmulInit::Bias(&bias), epilogue),
            ] {
                let run = |w: &PackedMatrix| {
                    let mut out = start.clone();
                    matmul_with(&x, k, rows, w, &mut out, n + 3, init, epilogue, true);
                    bits(&out)
                };
                assert!(
                    run(&packed) == run(&reference),
                    "{isa}: {rows}x{k}x{n} with init and epilogue"
                );
            }
        }
    }
}

/// The operands that would saturate `VPMADDUBSW`'s 16-bit pair sums (2·127·127 = 32258 at
/// the signed extremes, and more for unsigned activations): every kernel still sums exactly.
#[test]
fn int8_worst_case_operands_do_not_saturate() {
    let (rows, k, n) = (7, 4096, 70);
    // Activations and weights at ±max in every position, with matching signs: each quantises to
    // ±127 and every product is +127·127.
    let sign = |i: usize| if (i / 3).is_multiple_of(2) { 1.0 } else { -1.0 };
    let x: Vec<f32> = (0..rows * k).map(|i| sign(i % k) * 3.5).collect();
    let w: Vec<f32> = (0..n * k).map(|i| sign(i % k) * 0.25).collect();
    for (isa, cpu) in variants("linear::int8_worst_case_operands_do_not_saturate") {
        let packed = PackedMatrix::pack(&w, n, k, PackedType::Int8, cpu);
        let out = product(&x, rows, &w, (n, k), PackedType::Int8, cpu, None);
        let want = int8_by_hand(&x, rows, &packed, &vec![0.0; n]);
        assert!(bits(&out) == bits(&want), "{isa}: saturated");
        // 4096 products of 127·127 in two chunks, each scaled back: k · 3.5 · 0.25.
        let exact = k as f32 * 3.5 * 0.25;
        assert!(
            out.iter().all(|v| (v - exact).abs() <= 1e-3 * exact),
            "{isa}: {} vs {exact}",
            out[0]
        );
    }
}

#[test]
fn int8_products_are_within_quantisation_error() {
    for (isa, cpu) in variants("linear::int8_products_are_within_quantisation_error") {
        // k not a multiple of 64 (padded steps), rows below and above 32 (VNNI below 20 where
        // AMX-INT8 is there too), n past a panel.
        for &(rows, k, n) in &[
            (1, 64, 64),
            (5, 7, 3),
            (33, 100, 70),
            (40, 1024, 130),
            (3, 4096, 64),
        ] {
            let x = noise(rows * k, 41);
            let w = noise(n * k, 42);
            let error = relative_error(PackedType::Int8, cpu, &x, &w, rows, k, n);
            // Two 8-bit roundings: well under a percent of Σ|x·w| for noise, and not exact.
            assert!(
                error < 1e-2 && error > 1e-6,
                "{isa}: {rows}x{k}x{n}: int8 {error:e}"
            );
        }
    }
    // Dequantised weights round-trip through `get` within half a step.
    let (n, k) = (70, 9);
    let w = noise(n * k, 43);
    let packed = PackedMatrix::pack(&w, n, k, PackedType::Int8, Cpu::SCALAR);
    for c in 0..n {
        let step = w[c * k..(c + 1) * k]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            / 127.0;
        for i in 0..k {
            assert!(
                (packed.get(c, i) - w[c * k + i]).abs() <= 0.5 * step * 1.0001,
                "({c}, {i})"
            );
        }
    }
}

#[test]
fn int8_column_sums_add_up_each_chunk() {
    let (n, k) = (70, 4100);
    let packed = PackedMatrix::pack(&noise(n * k, 44), n, k, PackedType::Int8, Cpu::SCALAR);
    let chunks = int8_chunks(packed.steps);
    assert_eq!(chunks, 3);
    let weight = |c: usize, i: usize| (packed.get(c, i) / packed.scales[c]).round() as i32;
    for c in 0..n {
        for chunk in 0..chunks {
            let inputs = chunk * 2048..k.min((chunk + 1) * 2048);
            let want: i32 = inputs.map(|i| weight(c, i)).sum();
            assert_eq!(
                packed.col_sums[((c / PANEL) * chunks + chunk) * PANEL + c % PANEL],
                want,
                "({c}, {chunk})"
            );
        }
    }
    // Columns past n in the last panel sum to zero.
    let last_panel = &packed.col_sums[(n / PANEL) * chunks * PANEL..];
    assert!(last_panel
        .chunks_exact(PANEL)
        .all(|sums| sums[n % PANEL..].iter().all(|&s| s == 0)));
}

#[test]
fn tiled_panels_hold_amx_weight_tiles() {
    // 32 pair steps: two tile steps. Column c of step s, half h = c / 32: tile (s / 16) of
    // the half, the half's two 16-column tiles side by side, each 16 rows of 16 pairs.
    let layout = PanelLayout::Tiled { steps: 32 };
    assert_eq!(layout.at(0, 0), 0);
    assert_eq!(layout.at(1, 0), 16);
    assert_eq!(layout.at(0, 17), 256 + 1);
    assert_eq!(layout.at(16, 0), 512);
    assert_eq!(layout.at(0, 32), 32 * 32);
    assert_eq!(layout.at(31, 63), 32 * 32 + 512 + 256 + 15 * 16 + 15);
    let mut seen = vec![false; 32 * PANEL];
    for s in 0..32 {
        for c in 0..PANEL {
            assert!(
                !std::mem::replace(&mut seen[layout.at(s, c)], true),
                "({s}, {c}) twice"
            );
        }
    }
}

#[test]
fn packing_round_trips() {
    // bf16 steps are padded to whole tiles of 16 pair steps (k = 5 too): bf16 is tiled.
    for (n, k) in [(70, 5), (70, 64)] {
        let w = round_bf16(noise(n * k, 1));
        for ty in [PackedType::F32, PackedType::Bf16, PackedType::Bf16x3] {
            let packed = PackedMatrix::pack(&w, n, k, ty, Cpu::SCALAR);
            let tiled = ty == PackedType::Bf16;
            assert_eq!(packed.layout() != PanelLayout::Linear, tiled, "{ty:?} {k}");
            for c in 0..n {
                for i in 0..k {
                    assert_eq!(packed.get(c, i), w[c * k + i], "{ty:?} ({c}, {i})");
                }
            }
        }
    }
}

#[test]
fn transposed_packing_reads_columns() {
    let (k, n, stride) = (5, 70, 75);
    let v = round_bf16(noise(k * stride, 9));
    for ty in [PackedType::F32, PackedType::Bf16] {
        let mut packed = PackedMatrix::empty(ty, Cpu::SCALAR);
        packed.repack_transposed(&v, stride, k, n);
        for c in 0..n {
            for s in 0..k {
                assert_eq!(packed.get(c, s), v[s * stride + c], "{ty:?} ({c}, {s})");
            }
        }
    }
}

/// `BFMMLA`'s operand: two rows × two steps a register, an odd last row paired with zeros.
#[test]
fn row_pairs_interleave_two_steps_of_two_rows() {
    // Row r, step s holds 100·r + s.
    let (rows, steps) = (3, 4);
    let pairs: Vec<u32> = (0..rows * steps)
        .map(|i| (100 * (i / steps) + i % steps) as u32)
        .collect();
    let want = [
        0, 1, 100, 101, 2, 3, 102, 103, // rows 0 and 1
        200, 201, 0, 0, 202, 203, 0, 0, // row 2 and zeros
    ];
    assert_eq!(interleave_row_pairs(&pairs, rows, steps), want);
}

#[test]
fn three_bf16_parts_sum_to_the_value_exactly() {
    // Values over many magnitudes, in rows of awkward lengths (the masked tail included).
    // Below about 2^-100 the last part would be subnormal, which the conversion flushes:
    // a loss of less than 2^-126 in absolute terms.
    let values: Vec<f32> = noise(4099, 21)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 10f32.powi((i % 60) as i32 - 28))
        .collect();
    for (isa, cpu) in variants("linear::three_bf16_parts_sum_to_the_value_exactly") {
        for len in [1, 2, 15, 16, 17, 33, 4099] {
            let row = &values[..len];
            let steps = len.div_ceil(2);
            let mut dst = vec![0u32; 3 * steps];
            split_row(row, &mut dst, steps, 3, cpu);
            let half = |p: usize, i: usize| {
                let pair = dst[p * steps + i / 2];
                bf16::from_bits(if i.is_multiple_of(2) {
                    pair as u16
                } else {
                    (pair >> 16) as u16
                })
            };
            for (i, &v) in row.iter().enumerate() {
                let sum: f64 = (0..3).map(|p| half(p, i).to_f32() as f64).sum();
                assert_eq!(sum, v as f64, "{isa}: value {i} of {len}: {v:e}");
                for p in 0..3 {
                    assert_eq!(
                        half(p, i).to_bits(),
                        bf16_part(v, p),
                        "{isa}: part {p} of {v:e}"
                    );
                }
            }
            if len % 2 == 1 {
                assert!(
                    (0..3).all(|p| dst[p * steps + steps - 1] >> 16 == 0),
                    "padding stays zero"
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn rows_split_straight_into_tiles_give_the_row_buffers_bits() {
    // The direct conversion exists for AVX512_BF16 alone: it runs on the variants that have it.
    for (isa, cpu) in variants("linear::rows_split_straight_into_tiles")
        .into_iter()
        .filter(|(_, cpu)| cpu.avx512_bf16)
    {
        for k in [1usize, 17, 32, 33, 100, 1024] {
            let tile_steps = k.div_ceil(32);
            let steps = 16 * tile_steps;
            let row = noise(k, k as u64);
            for parts in [1, 3] {
                let mut buffer = vec![0u32; parts * steps];
                split_row(&row, &mut buffer, steps, parts, cpu);
                // Tiles of two rows, this row second: part p of step s at (s·parts + p)·32 + 16.
                let mut tiles = vec![u32::MAX; tile_steps * parts * 32];
                // SAFETY: the variant has AVX512_BF16; every offset + 16 lies inside `tiles`.
                unsafe {
                    activations::split_row_into_tiles(
                        &row,
                        tile_steps,
                        parts,
                        tiles[16..].as_mut_ptr(),
                        32,
                    )
                };
                for s in 0..tile_steps {
                    for p in 0..parts {
                        let want = &buffer[p * steps + 16 * s..][..16];
                        assert_eq!(
                            &tiles[(s * parts + p) * 32 + 16..][..16],
                            want,
                            "{isa}: k {k}, parts {parts}, step {s}"
                        );
                        assert!(
                            tiles[(s * parts + p) * 32..][..16]
                                .iter()
                                .all(|&v| v == u32::MAX),
                            "other row touched"
                        );
                    }
                }
            }
        }
    }
}
