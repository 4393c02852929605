//! Precision × CPU → what each operation runs, decided once at load, with the reason for any
//! fallback. The model asks for a [`KernelPlan`] and never looks at CPU features itself; the table test
//! below lists every decision.

use std::fmt;

use super::cpu::{Cpu, Isa};
use super::linear::PackedType;
use crate::precision::Precision;

/// How the linear layers store their weights and which kernel family multiplies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKernel {
    /// Plain loops over packed weights (the reference: any CPU, any storage).
    Reference(PackedType),
    /// f32 weights multiplied by the `gemm` crate (its own AVX2/NEON micro-kernels): for
    /// checkpoints whose weights are not bf16 values, where no packed kernel of ours fits. On
    /// macOS by Accelerate's `cblas_sgemm` instead, which f32 takes there (the matrix unit beats
    /// NEON, at twice the weights' memory).
    Gemm,
    /// AVX2 + FMA: f32 products, the bf16 weights widened in registers (exact), or int8 pairs
    /// summed with `vpmaddwd`.
    Avx2(PackedType),
    /// AVX2 with 256-bit `vpdpbusd` (AVX-VNNI, or AVX512_VNNI's EVEX form under a cap): int8.
    AvxVnni(PackedType),
    /// AVX-512: f32 FMA on f32 or widened bf16 weights, `vdpbf16ps` on bf16, `vpdpbusd` on int8.
    Avx512(PackedType),
    /// AMX tiles (AVX-512 for rows too few for a tile): bf16, bf16x3 (exact f32) or int8.
    Amx(PackedType),
    /// aarch64 NEON: f32 FMA on the bf16 weights widened in registers (exact).
    Neon(PackedType),
    /// aarch64 `SDOT` (FEAT_DotProd): int8.
    Dotprod(PackedType),
    /// aarch64 `SMMLA` (FEAT_I8MM): int8.
    I8mm(PackedType),
    /// aarch64 `BFMMLA` (FEAT_BF16): bf16.
    Bfmmla(PackedType),
}

impl LinearKernel {
    /// The packed storage, or `None` for the `gemm` crate's f32 rows.
    pub fn storage(self) -> Option<PackedType> {
        match self {
            LinearKernel::Gemm => None,
            LinearKernel::Reference(ty)
            | LinearKernel::Avx2(ty)
            | LinearKernel::AvxVnni(ty)
            | LinearKernel::Avx512(ty)
            | LinearKernel::Amx(ty)
            | LinearKernel::Neon(ty)
            | LinearKernel::Dotprod(ty)
            | LinearKernel::I8mm(ty)
            | LinearKernel::Bfmmla(ty) => Some(ty),
        }
    }

    /// The arithmetic the products are computed in.
    pub fn precision(self) -> Precision {
        match self.storage() {
            None | Some(PackedType::F32) | Some(PackedType::Bf16x3) => Precision::F32,
            Some(PackedType::Bf16) => Precision::Bf16,
            Some(PackedType::Int8) => Precision::Int8,
        }
    }
}

impl fmt::Display for LinearKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let storage = |ty: PackedType| match ty {
            PackedType::F32 => "f32 weights",
            PackedType::Bf16 => "bf16 weights and activations",
            PackedType::Bf16x3 => "bf16 weights, exact f32 products",
            PackedType::Int8 => "int8 weights and activations",
        };
        match *self {
            LinearKernel::Reference(ty) => write!(f, "reference loops ({})", storage(ty)),
            LinearKernel::Gemm => write!(f, "{} (f32 weights)", super::matmul::F32_GEMM),
            LinearKernel::Avx2(ty) => write!(f, "avx2 ({})", storage(ty)),
            LinearKernel::AvxVnni(ty) => write!(f, "avxvnni ({})", storage(ty)),
            LinearKernel::Avx512(ty) => write!(f, "avx512 ({})", storage(ty)),
            LinearKernel::Amx(ty) => write!(f, "amx ({})", storage(ty)),
            LinearKernel::Neon(ty) => write!(f, "neon ({})", storage(ty)),
            LinearKernel::Dotprod(ty) => write!(f, "dotprod sdot ({})", storage(ty)),
            LinearKernel::I8mm(ty) => write!(f, "i8mm smmla ({})", storage(ty)),
            LinearKernel::Bfmmla(ty) => write!(f, "bf16 bfmmla ({})", storage(ty)),
        }
    }
}

/// Which attention kernel runs, and in what precision its products are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// Plain loops, online softmax (any CPU).
    Reference,
    /// Key tiles multiplied by the `gemm` crate (Accelerate on macOS), online softmax in f32
    /// (macOS, for Accelerate's matrix unit; x86 CPUs without AVX2).
    Gemm,
    /// AVX2 + FMA: tiled online softmax in registers, f32.
    Avx2,
    /// aarch64 NEON: the AVX2 kernel's loop in 128-bit registers, f32.
    Neon,
    /// AVX-512: K and V packed once per head for the packed product kernels; `bf16` rounds Q, K,
    /// P and V for sequences over 512 tokens (shorter ones are as fast in f32).
    Avx512 {
        /// Whether long sequences round their products to bf16.
        bf16: bool,
    },
    /// The fused AMX flash kernel for heads of 64 (other head sizes take `Avx512`).
    Amx {
        /// Whether the products are bf16 (else exact f32 in three bf16 parts).
        bf16: bool,
    },
}

impl AttentionKernel {
    /// Whether products may be rounded to bf16 (for some sequences, see the variants).
    pub fn bf16(self) -> bool {
        matches!(
            self,
            AttentionKernel::Avx512 { bf16: true } | AttentionKernel::Amx { bf16: true }
        )
    }
}

impl fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let precision = |bf16: bool| if bf16 { "bf16" } else { "f32" };
        match *self {
            AttentionKernel::Reference => write!(f, "reference loops (f32)"),
            AttentionKernel::Gemm => write!(f, "{} tiles (f32)", super::matmul::F32_GEMM),
            AttentionKernel::Avx2 => write!(f, "avx2 (f32)"),
            AttentionKernel::Neon => write!(f, "neon (f32)"),
            AttentionKernel::Avx512 { bf16 } => write!(f, "avx512 ({})", precision(bf16)),
            AttentionKernel::Amx { bf16 } => write!(f, "amx ({})", precision(bf16)),
        }
    }
}

/// What a model runs, resolved once at load from the requested precision and the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelPlan {
    /// The precision asked for.
    pub requested: Precision,
    /// The CPU features the kernels may use (after any cap).
    pub cpu: Cpu,
    /// The linear layers' storage and kernel.
    pub linear: LinearKernel,
    /// The attention kernel.
    pub attention: AttentionKernel,
    /// Why what runs differs from what was asked for, one line per operation that differs.
    pub fallbacks: Vec<String>,
}

impl KernelPlan {
    /// Resolves `requested` on `cpu`. `bf16_weights`: every linear weight of the checkpoint is a
    /// bf16 value (true of the published one), so bf16 storage loses nothing and exact f32
    /// products may read it.
    pub fn resolve(requested: Precision, cpu: Cpu, bf16_weights: bool) -> KernelPlan {
        let mut fallbacks = Vec::new();
        let linear = match requested {
            Precision::F32 => exact_linear(cpu, bf16_weights),
            Precision::F16 => {
                let kernel = exact_linear(cpu, bf16_weights);
                fallbacks.push(format!(
                    "f16: f16 runs on a GPU with shader-f16 (--device gpu); the CPU kernels have no f16 path: f32 ({kernel})"
                ));
                kernel
            }
            Precision::Bf16 if cpu.avx512_bf16 && cpu.amx_bf16 => {
                LinearKernel::Amx(PackedType::Bf16)
            }
            Precision::Bf16 if cpu.avx512_bf16 => LinearKernel::Avx512(PackedType::Bf16),
            Precision::Bf16 if cpu.neon && cpu.bf16 => LinearKernel::Bfmmla(PackedType::Bf16),
            Precision::Bf16 => {
                // Where a kernel of ours reads them, the weights stay bf16 (read exactly): the
                // memory of bf16 is kept and only the arithmetic is f32.
                let kernel = exact_bf16_weights(cpu);
                let storage = if kernel == LinearKernel::Gemm {
                    "f32 weights"
                } else {
                    "bf16 weights"
                };
                fallbacks.push(format!(
                    "bf16: {NO_BF16_DOT} ({}): {storage}, f32 arithmetic",
                    cpu.level()
                ));
                kernel
            }
            Precision::Int8 if cpu.amx_int8 => LinearKernel::Amx(PackedType::Int8),
            Precision::Int8 if cpu.avx512 && cpu.avx512_vnni => {
                LinearKernel::Avx512(PackedType::Int8)
            }
            Precision::Int8 if cpu.vnni_256() => LinearKernel::AvxVnni(PackedType::Int8),
            Precision::Int8 if cpu.avx2 => LinearKernel::Avx2(PackedType::Int8),
            Precision::Int8 if cpu.neon && cpu.dotprod && cpu.i8mm => {
                LinearKernel::I8mm(PackedType::Int8)
            }
            Precision::Int8 if cpu.neon && cpu.dotprod => LinearKernel::Dotprod(PackedType::Int8),
            Precision::Int8 if cpu.level() == Isa::Scalar => {
                LinearKernel::Reference(PackedType::Int8)
            }
            Precision::Int8 => {
                // aarch64 without SDOT (Cortex-A53/A72, say): the reference loops would be
                // slower than f32 there.
                let kernel = exact_linear(cpu, bf16_weights);
                fallbacks.push(format!(
                    "int8: no int8 kernel for this CPU ({}) yet: f32 ({kernel})",
                    cpu.level()
                ));
                kernel
            }
        };
        // Attention's operands are activations: int8 runs it in bf16, as bf16 does.
        let wants_bf16 = matches!(requested, Precision::Bf16 | Precision::Int8);
        let attention = if cpu.amx_bf16 {
            AttentionKernel::Amx { bf16: wants_bf16 }
        } else if cpu.avx512 {
            AttentionKernel::Avx512 {
                bf16: wants_bf16 && cpu.avx512_bf16,
            }
        } else if cpu.avx2 {
            AttentionKernel::Avx2
        } else if cpu.neon && !cpu.accelerate {
            // On a Mac the key tiles go to Accelerate (the matrix unit), as the f32 products do.
            AttentionKernel::Neon
        } else if cpu.level() == Isa::Scalar {
            AttentionKernel::Reference
        } else {
            AttentionKernel::Gemm
        };
        if wants_bf16 && !attention.bf16() {
            let why = if cpu.neon && cpu.bf16 {
                // The aarch64 attention kernels are f32 (a BFMMLA one is not written yet).
                "no bf16 attention kernel of ours for aarch64 yet"
            } else {
                NO_BF16_DOT
            };
            fallbacks.push(format!("attention: {why} ({}): f32", cpu.level()));
        }
        KernelPlan {
            requested,
            cpu,
            linear,
            attention,
            fallbacks,
        }
    }

    /// The arithmetic of the linear layers, what `--precision` reports as run.
    pub fn precision(&self) -> Precision {
        self.linear.precision()
    }

    /// The instruction-set level in use.
    pub fn isa(&self) -> Isa {
        self.cpu.level()
    }

    /// One line for logs and reports: `int8 (requested int8) on avx2: linear …; attention …`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} (requested {}) on {}: linear {}; attention {}",
            self.precision().name(),
            self.requested.name(),
            self.isa(),
            self.linear,
            self.attention
        );
        for reason in &self.fallbacks {
            line.push_str("; ");
            line.push_str(reason);
        }
        line
    }
}

/// Why bf16 products do not run as bf16: every CPU with a bf16 dot product has a linear kernel
/// of ours for it (VDPBF16PS, AMX, BFMMLA).
const NO_BF16_DOT: &str = "no bf16 dot product on this CPU";

/// The f32 path: exact products.
fn exact_linear(cpu: Cpu, bf16_weights: bool) -> LinearKernel {
    match () {
        // A Mac: Accelerate's f32 GEMM on the matrix unit (f32 weights).
        _ if cpu.accelerate => LinearKernel::Gemm,
        // bf16x3 is exact on bf16 weights and runs on the tiles.
        _ if cpu.amx_bf16 && bf16_weights => LinearKernel::Amx(PackedType::Bf16x3),
        // The checkpoint's bf16 weights widened in registers: the products of f32 weights at
        // half the memory and bandwidth.
        _ if bf16_weights => exact_bf16_weights(cpu),
        _ if cpu.avx512 => LinearKernel::Avx512(PackedType::F32),
        _ if cpu.level() == Isa::Scalar => LinearKernel::Reference(PackedType::F32),
        // x86 AVX2 without bf16 weights, and aarch64.
        _ => LinearKernel::Gemm,
    }
}

/// Exact f32 products on bf16 weights, without a bf16 dot product: the weights widened in
/// registers by the AVX2 or NEON kernel.
fn exact_bf16_weights(cpu: Cpu) -> LinearKernel {
    match cpu.level() {
        _ if cpu.avx512 => LinearKernel::Avx512(PackedType::Bf16x3),
        _ if cpu.avx2 => LinearKernel::Avx2(PackedType::Bf16x3),
        _ if cpu.neon => LinearKernel::Neon(PackedType::Bf16x3),
        Isa::Scalar => LinearKernel::Reference(PackedType::Bf16x3),
        _ => LinearKernel::Gemm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every decision of the table, on the CPU classes users have.
    #[test]
    fn the_table() {
        let amx = Cpu {
            avx2: true,
            avx512: true,
            avx512_vnni: true,
            avx512_bf16: true,
            amx_bf16: true,
            amx_int8: true,
            ..Cpu::SCALAR
        };
        let zen4 = Cpu {
            amx_bf16: false,
            amx_int8: false,
            ..amx
        };
        let icelake = Cpu {
            avx512_bf16: false,
            ..zen4
        };
        let zen3 = Cpu {
            avx2: true,
            ..Cpu::SCALAR
        };
        let alder_lake = Cpu {
            avx_vnni: true,
            ..zen3
        };
        use AttentionKernel as A;
        use LinearKernel as L;
        use PackedType as T;
        use Precision as P;
        let neon = Cpu {
            neon: true,
            ..Cpu::SCALAR
        };
        let graviton2 = Cpu {
            dotprod: true,
            ..neon
        };
        let graviton3 = Cpu {
            i8mm: true,
            bf16: true,
            ..graviton2
        };
        // An Apple M2 (FEAT_I8MM and FEAT_BF16) on macOS, with Accelerate.
        let apple_m2 = Cpu {
            accelerate: true,
            ..graviton3
        };
        #[rustfmt::skip]
        let table: [(Cpu, P, L, A, usize); 31] = [
            (amx, P::F32, L::Amx(T::Bf16x3), A::Amx { bf16: false }, 0),
            (amx, P::Bf16, L::Amx(T::Bf16), A::Amx { bf16: true }, 0),
            (amx, P::Int8, L::Amx(T::Int8), A::Amx { bf16: true }, 0),
            (zen4, P::F32, L::Avx512(T::Bf16x3), A::Avx512 { bf16: false }, 0),
            (zen4, P::Bf16, L::Avx512(T::Bf16), A::Avx512 { bf16: true }, 0),
            (zen4, P::Int8, L::Avx512(T::Int8), A::Avx512 { bf16: true }, 0),
            (icelake, P::Bf16, L::Avx512(T::Bf16x3), A::Avx512 { bf16: false }, 2),
            (icelake, P::Int8, L::Avx512(T::Int8), A::Avx512 { bf16: false }, 1),
            (zen3, P::F32, L::Avx2(T::Bf16x3), A::Avx2, 0),
            (zen3, P::Bf16, L::Avx2(T::Bf16x3), A::Avx2, 2),
            (zen3, P::Int8, L::Avx2(T::Int8), A::Avx2, 1),
            (alder_lake, P::F32, L::Avx2(T::Bf16x3), A::Avx2, 0),
            (alder_lake, P::Int8, L::AvxVnni(T::Int8), A::Avx2, 1),
            (zen4.capped(Isa::AvxVnni), P::Int8, L::AvxVnni(T::Int8), A::Avx2, 1),
            (Cpu::SCALAR, P::F32, L::Reference(T::Bf16x3), A::Reference, 0),
            (Cpu::SCALAR, P::Int8, L::Reference(T::Int8), A::Reference, 1),
            (neon, P::F32, L::Neon(T::Bf16x3), A::Neon, 0),
            (neon, P::Bf16, L::Neon(T::Bf16x3), A::Neon, 2),
            (neon, P::Int8, L::Neon(T::Bf16x3), A::Neon, 2),
            (graviton2, P::F32, L::Neon(T::Bf16x3), A::Neon, 0),
            (graviton2, P::Bf16, L::Neon(T::Bf16x3), A::Neon, 2),
            (graviton2, P::Int8, L::Dotprod(T::Int8), A::Neon, 1),
            (graviton3, P::F32, L::Neon(T::Bf16x3), A::Neon, 0),
            (graviton3, P::Bf16, L::Bfmmla(T::Bf16), A::Neon, 1),
            (graviton3, P::Int8, L::I8mm(T::Int8), A::Neon, 1),
            // f32 on Accelerate; bf16 on BFMMLA.
            (apple_m2, P::F32, L::Gemm, A::Gemm, 0),
            (apple_m2, P::Bf16, L::Bfmmla(T::Bf16), A::Gemm, 1),
            (apple_m2, P::Int8, L::I8mm(T::Int8), A::Gemm, 1),
            // f16 is the GPU's: every CPU runs its f32 kernels and says so.
            (amx, P::F16, L::Amx(T::Bf16x3), A::Amx { bf16: false }, 1),
            (zen3, P::F16, L::Avx2(T::Bf16x3), A::Avx2, 1),
            (graviton3, P::F16, L::Neon(T::Bf16x3), A::Neon, 1),
        ];
        for (i, (cpu, requested, linear, attention, fallbacks)) in table.into_iter().enumerate() {
            let plan = KernelPlan::resolve(requested, cpu, true);
            assert_eq!(
                (plan.linear, plan.attention, plan.fallbacks.len()),
                (linear, attention, fallbacks),
                "row {i}: {}",
                plan.summary()
            );
        }
        // A checkpoint with f32 weights keeps them f32 where no packed f32 kernel fits.
        assert_eq!(KernelPlan::resolve(P::F32, zen3, false).linear, L::Gemm);
        assert_eq!(
            KernelPlan::resolve(P::F32, graviton3, false).linear,
            L::Gemm
        );
        assert_eq!(
            KernelPlan::resolve(P::F32, amx, false).linear,
            L::Avx512(T::F32)
        );
        assert_eq!(
            KernelPlan::resolve(P::F32, Cpu::SCALAR, false).linear,
            L::Reference(T::F32)
        );
        // The fallback names the operation and what runs instead.
        let plan = KernelPlan::resolve(P::Bf16, zen3, true);
        assert_eq!(plan.precision(), P::F32);
        assert!(
            plan.fallbacks[0].starts_with("bf16: ")
                && plan.fallbacks[0].contains("bf16 weights, f32 arithmetic"),
            "{:?}",
            plan.fallbacks
        );
        assert!(
            plan.summary().starts_with("f32 (requested bf16) on avx2"),
            "{}",
            plan.summary()
        );
    }
}
