//! What the CPU can run: detected once, then capped by `JINA_MAX_ISA` or a load option.
//!
//! Every kernel decision starts from a [`Cpu`] value, never from a feature probe of its own: the
//! model resolves a [`super::resolve::Plan`] from it at load, and the packed weights and the
//! attention kernel carry the `Cpu` they were built for. A cap therefore runs any lower path on a
//! bigger CPU (and the tests run every path the CPU has, one [`Isa`] level after another, in one
//! process).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::error::Error;

/// Instruction-set levels, lowest first. A level includes every level below it on its
/// architecture; `Scalar` (portable Rust, the reference kernels and the `gemm` crate's own
/// dispatch) exists everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// No SIMD of our own: the reference kernels.
    Scalar,
    /// x86-64: AVX2 and FMA (Haswell and later, AMD Zen 1–3).
    Avx2,
    /// x86-64: AVX2 with `vpdpbusd` on 256-bit registers: AVX-VNNI's VEX form (Alder Lake and
    /// later, Zen 5, Sapphire Rapids), or on a CPU with AVX512_VNNI the same instruction's EVEX
    /// form, so that an AVX-512 CPU capped here runs the AVX-VNNI kernel.
    AvxVnni,
    /// x86-64: AVX-512 F, BW, VL and DQ, with AVX512_VNNI where the CPU has it.
    Avx512,
    /// x86-64: AVX-512 with AVX512_BF16 (`vdpbf16ps`: Cooper Lake, Sapphire Rapids, Zen 4).
    Avx512Bf16,
    /// x86-64: AMX-BF16 (and AMX-INT8) tiles, Linux (Sapphire Rapids and later).
    Amx,
    /// aarch64: Advanced SIMD (every aarch64 CPU).
    Neon,
    /// aarch64: `SDOT` (FEAT_DotProd: Graviton 2+, Apple M1+).
    Dotprod,
    /// aarch64: `SMMLA` (FEAT_I8MM: Graviton 3+, Apple M2+).
    I8mm,
    /// aarch64: `BFMMLA`/`BFDOT` (FEAT_BF16: Graviton 3+, Apple M2+).
    Bf16,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 10] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Amx,
        Isa::Neon,
        Isa::Dotprod,
        Isa::I8mm,
        Isa::Bf16,
    ];

    /// The name `JINA_MAX_ISA` and the reports use.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
            Isa::Bf16 => "bf16",
        }
    }

    /// Whether the level belongs to the architecture this binary was built for.
    pub fn is_native(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => {
                cfg!(target_arch = "x86_64")
            }
            Isa::Neon | Isa::Dotprod | Isa::I8mm | Isa::Bf16 => cfg!(target_arch = "aarch64"),
        }
    }

    /// The levels of this architecture, lowest first.
    pub fn native() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_native())
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let accepted = || Isa::native().map(Isa::name).collect::<Vec<_>>().join(", ");
        match Isa::ALL.into_iter().find(|isa| isa.name() == s.trim().to_ascii_lowercase()) {
            Some(isa) if isa.is_native() => Ok(isa),
            Some(isa) => Err(Error::InvalidRequest(format!(
                "instruction set {isa} is not one of this architecture ({}); accepted values are {}",
                std::env::consts::ARCH,
                accepted()
            ))),
            None => Err(Error::InvalidRequest(format!("instruction set {s:?} is unknown; accepted values are {}", accepted()))),
        }
    }
}

/// The features the kernels choose by. Fields above a cap are cleared, so a capped `Cpu` is
/// what a smaller CPU would have detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cpu {
    /// AVX2 and FMA.
    pub avx2: bool,
    /// AVX-VNNI: `vpdpbusd` on 256-bit registers in its VEX form.
    pub avx_vnni: bool,
    /// AVX-512 F, BW, VL and DQ.
    pub avx512: bool,
    /// AVX512_VNNI with VL (`vpdpbusd` on 512-bit registers, and in its EVEX form on 256-bit
    /// ones). Kept under a cap at [`Isa::AvxVnni`], where only the 256-bit form is used.
    pub avx512_vnni: bool,
    /// AVX512_BF16.
    pub avx512_bf16: bool,
    /// AMX-BF16 tiles, with the kernel's permission to use them.
    pub amx_bf16: bool,
    /// AMX-INT8 tiles.
    pub amx_int8: bool,
    /// aarch64 Advanced SIMD.
    pub neon: bool,
    /// aarch64 FEAT_DotProd.
    pub dotprod: bool,
    /// aarch64 FEAT_I8MM.
    pub i8mm: bool,
    /// aarch64 FEAT_BF16.
    pub bf16: bool,
    /// macOS: Apple's Accelerate framework is linked, and the f32 GEMM of the
    /// [`crate::kernels::LinearKernel::Gemm`] and [`crate::kernels::AttentionKernel::Gemm`]
    /// paths is its `cblas_sgemm` (the M-series matrix unit) instead of the `gemm` crate.
    pub accelerate: bool,
}

impl Cpu {
    /// A CPU with no SIMD of ours: the reference kernels only.
    pub const SCALAR: Cpu = Cpu {
        avx2: false,
        avx_vnni: false,
        avx512: false,
        avx512_vnni: false,
        avx512_bf16: false,
        amx_bf16: false,
        amx_int8: false,
        neon: false,
        dotprod: false,
        i8mm: false,
        bf16: false,
        accelerate: false,
    };

    /// What this CPU has (probed once), capped by `JINA_MAX_ISA` when it is set. An invalid
    /// `JINA_MAX_ISA` is an error, reported by [`Cpu::host_checked`]; here it is ignored with a
    /// warning, so that a library caller that never loads a model is not stopped by it.
    pub fn host() -> Cpu {
        match Cpu::host_checked() {
            Ok(cpu) => cpu,
            Err(e) => {
                tracing::warn!("{e}; ignoring JINA_MAX_ISA");
                Cpu::detected()
            }
        }
    }

    /// [`Cpu::host`], with an invalid `JINA_MAX_ISA` as an error naming it.
    pub fn host_checked() -> Result<Cpu, Error> {
        match std::env::var("JINA_MAX_ISA") {
            Ok(value) if !value.trim().is_empty() => {
                let cap: Isa = value.parse().map_err(|e: Error| {
                    Error::InvalidRequest(format!("JINA_MAX_ISA={value}: {e}"))
                })?;
                Ok(Cpu::detected().capped(cap))
            }
            _ => Ok(Cpu::detected()),
        }
    }

    /// What this CPU has, without any cap (probed once).
    pub fn detected() -> Cpu {
        static DETECTED: OnceLock<Cpu> = OnceLock::new();
        *DETECTED.get_or_init(probe)
    }

    /// This CPU without the features above `max`.
    pub fn capped(self, max: Isa) -> Cpu {
        let keep = |level: Isa, has: bool| has && level <= max;
        Cpu {
            avx2: keep(Isa::Avx2, self.avx2),
            avx_vnni: keep(Isa::AvxVnni, self.avx_vnni),
            avx512: keep(Isa::Avx512, self.avx512),
            avx512_vnni: keep(Isa::AvxVnni, self.avx512_vnni),
            avx512_bf16: keep(Isa::Avx512Bf16, self.avx512_bf16),
            amx_bf16: keep(Isa::Amx, self.amx_bf16),
            amx_int8: keep(Isa::Amx, self.amx_int8),
            neon: keep(Isa::Neon, self.neon),
            dotprod: keep(Isa::Dotprod, self.dotprod),
            i8mm: keep(Isa::I8mm, self.i8mm),
            bf16: keep(Isa::Bf16, self.bf16),
            // Not an instruction set: it stays under every cap but the reference's.
            accelerate: self.accelerate && max > Isa::Scalar,
        }
    }

    /// The highest level whose defining feature this CPU has (and every level below it).
    pub fn level(self) -> Isa {
        let chain: [(Isa, bool); 9] = [
            (Isa::Avx2, self.avx2),
            (Isa::AvxVnni, self.avx2 && self.vnni_256()),
            (Isa::Avx512, self.avx2 && self.avx512),
            (
                Isa::Avx512Bf16,
                self.avx2 && self.avx512 && self.avx512_bf16,
            ),
            (
                Isa::Amx,
                self.avx2 && self.avx512 && self.avx512_bf16 && self.amx_bf16,
            ),
            (Isa::Neon, self.neon),
            (Isa::Dotprod, self.neon && self.dotprod),
            (Isa::I8mm, self.neon && self.dotprod && self.i8mm),
            (Isa::Bf16, self.neon && self.dotprod && self.bf16),
        ];
        chain
            .iter()
            .filter(|(_, has)| *has)
            .map(|(isa, _)| *isa)
            .max()
            .unwrap_or(Isa::Scalar)
    }

    /// The levels this CPU can be capped to, lowest first: what the tests run once each.
    pub fn variants(self) -> Vec<Isa> {
        Isa::native()
            .filter(|&isa| isa <= self.level() && self.capped(isa).level() == isa)
            .collect()
    }

    /// [`Cpu::variants`] as the tests run them: all of them, or those `JINA_TEST_VARIANTS` names
    /// (comma-separated levels, or `top` for this CPU's own level alone: what the emulated
    /// aarch64 runs use, one qemu CPU model per level, where every level is tens of times
    /// slower than native).
    #[doc(hidden)]
    pub fn test_variants(self) -> Vec<Isa> {
        let all = self.variants();
        match std::env::var("JINA_TEST_VARIANTS") {
            Ok(list) if list.trim() == "top" => vec![self.level()],
            Ok(list) if !list.trim().is_empty() => all
                .into_iter()
                .filter(|isa| list.split(',').any(|v| v.trim() == isa.name()))
                .collect(),
            _ => all,
        }
    }

    /// Whether `vpdpbusd` on 256-bit registers is there, in either encoding.
    pub fn vnni_256(self) -> bool {
        self.avx2 && (self.avx_vnni || self.avx512_vnni)
    }

    /// The features present, by name, for logs and reports.
    pub fn feature_names(self) -> Vec<&'static str> {
        let all = [
            ("avx2", self.avx2),
            ("avx-vnni", self.avx_vnni),
            ("avx512", self.avx512),
            ("avx512-vnni", self.avx512_vnni),
            ("avx512-bf16", self.avx512_bf16),
            ("amx-bf16", self.amx_bf16),
            ("amx-int8", self.amx_int8),
            ("neon", self.neon),
            ("dotprod", self.dotprod),
            ("i8mm", self.i8mm),
            ("bf16", self.bf16),
        ];
        all.into_iter()
            .filter(|(_, has)| *has)
            .map(|(name, _)| name)
            .collect()
    }
}

/// Notes that `test` ran on variant `isa`: one line `test isa` appended to the file named by
/// `JINA_VARIANT_LOG`, when it is set. `scripts/check-variants.sh` reads it to fail CI when a
/// variant the CPU has (by `/proc/cpuinfo`, independently of this crate's detection) did not
/// run. Tests call it; it does nothing otherwise.
#[doc(hidden)]
pub fn record_variant(test: &str, isa: Isa) {
    use std::io::Write;
    let Some(path) = std::env::var_os("JINA_VARIANT_LOG") else {
        return;
    };
    let line = format!("{test} {isa}\n");
    // One write per line, in append mode: lines from parallel tests do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("JINA_VARIANT_LOG={}: {e}", path.to_string_lossy());
    }
}

/// Runs a plain-Rust kernel body compiled for the widest vector level `cpu` allows: AVX-512
/// or AVX2 + FMA on x86-64 (the compiler vectorises the same code for each), as it is
/// elsewhere. The one dispatch mechanism of the element-wise kernels: no hand-written
/// trampoline per kernel. Every variant computes the same operations in the same order (Rust
/// never contracts `a·b + c` into an FMA on its own), so they give the same bits.
///
/// ```ignore
/// vectorized!(cpu, fn(row: &mut [f32], scale: f32) -> f32 { scale_and_max_generic(row, scale) })
/// ```
macro_rules! vectorized {
    ($cpu:expr, fn($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {{
        #[inline(always)]
        fn generic($($arg: $ty),*) $(-> $ret)? $body
        #[cfg(target_arch = "x86_64")]
        fn pick(cpu: $crate::kernels::cpu::Cpu, $($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }
            if cpu.avx512 {
                // SAFETY: a `Cpu` has `avx512` only where the CPU has AVX-512.
                unsafe { avx512($($arg),*) }
            } else if cpu.avx2 {
                // SAFETY: as above, for AVX2 and FMA.
                unsafe { avx2($($arg),*) }
            } else {
                generic($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        fn pick(_cpu: $crate::kernels::cpu::Cpu, $($arg: $ty),*) $(-> $ret)? {
            generic($($arg),*)
        }
        pick($cpu, $($arg),*)
    }};
}
pub(crate) use vectorized;

#[cfg(target_arch = "x86_64")]
fn probe() -> Cpu {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq");
    let avx512_bf16 = avx512 && is_x86_feature_detected!("avx512bf16");
    #[cfg(target_os = "linux")]
    let (amx_bf16, amx_int8) = super::amx::probe();
    #[cfg(not(target_os = "linux"))]
    let (amx_bf16, amx_int8) = (false, false);
    Cpu {
        avx2,
        avx_vnni: avx2 && is_x86_feature_detected!("avxvnni"),
        avx512,
        avx512_vnni: avx512 && is_x86_feature_detected!("avx512vnni"),
        avx512_bf16,
        amx_bf16: avx512_bf16 && amx_bf16,
        amx_int8: avx512_bf16 && amx_bf16 && amx_int8,
        ..Cpu::SCALAR
    }
}

#[cfg(target_arch = "aarch64")]
fn probe() -> Cpu {
    use std::arch::is_aarch64_feature_detected;
    let neon = is_aarch64_feature_detected!("neon");
    Cpu {
        neon,
        dotprod: neon && is_aarch64_feature_detected!("dotprod"),
        i8mm: neon && is_aarch64_feature_detected!("i8mm"),
        bf16: neon && is_aarch64_feature_detected!("bf16"),
        accelerate: neon && cfg!(target_os = "macos"),
        ..Cpu::SCALAR
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn probe() -> Cpu {
    Cpu::SCALAR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_clears_every_feature_above_it() {
        let all = Cpu {
            avx2: true,
            avx512: true,
            avx512_vnni: true,
            avx512_bf16: true,
            amx_bf16: true,
            amx_int8: true,
            ..Cpu::SCALAR
        };
        assert_eq!(all.level(), Isa::Amx);
        assert_eq!(all.capped(Isa::Avx512Bf16).level(), Isa::Avx512Bf16);
        assert!(!all.capped(Isa::Avx512Bf16).amx_int8);
        assert!(all.capped(Isa::Avx512).avx512_vnni && !all.capped(Isa::Avx512).avx512_bf16);
        assert_eq!(
            all.capped(Isa::Avx2),
            Cpu {
                avx2: true,
                ..Cpu::SCALAR
            }
        );
        assert_eq!(all.capped(Isa::Scalar), Cpu::SCALAR);
        let zen4 = Cpu {
            amx_bf16: false,
            amx_int8: false,
            ..all
        };
        // Capped at avxvnni, AVX512_VNNI stays for its 256-bit EVEX form; AVX-512 goes.
        let vnni = zen4.capped(Isa::AvxVnni);
        assert!(vnni.avx512_vnni && !vnni.avx512 && vnni.level() == Isa::AvxVnni);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                zen4.variants(),
                [
                    Isa::Scalar,
                    Isa::Avx2,
                    Isa::AvxVnni,
                    Isa::Avx512,
                    Isa::Avx512Bf16
                ]
            );
            // A Zen 3 has no 256-bit VNNI; an Alder Lake has AVX-VNNI without AVX-512.
            let zen3 = all.capped(Isa::Avx2);
            assert_eq!(zen3.variants(), [Isa::Scalar, Isa::Avx2]);
            let alder_lake = Cpu {
                avx_vnni: true,
                ..zen3
            };
            assert_eq!(
                alder_lake.variants(),
                [Isa::Scalar, Isa::Avx2, Isa::AvxVnni]
            );
            assert_eq!(alder_lake.capped(Isa::Avx2), zen3);
        }
    }

    #[test]
    fn isa_names_parse_back_and_foreign_levels_are_refused() {
        for isa in Isa::native() {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        assert_eq!(
            "AVX2".parse::<Isa>().ok(),
            cfg!(target_arch = "x86_64").then_some(Isa::Avx2)
        );
        let err = "avx3".parse::<Isa>().unwrap_err().to_string();
        assert!(err.contains("\"avx3\"") && err.contains("scalar"), "{err}");
        let foreign = if cfg!(target_arch = "x86_64") {
            "neon"
        } else {
            "avx2"
        };
        let err = foreign.parse::<Isa>().unwrap_err().to_string();
        assert!(err.contains("not one of this architecture"), "{err}");
    }

    #[test]
    fn the_detected_cpu_has_its_own_level_among_its_variants() {
        let cpu = Cpu::detected();
        let variants = cpu.variants();
        assert_eq!(variants.first(), Some(&Isa::Scalar));
        assert_eq!(variants.last(), Some(&cpu.level()));
        for isa in variants {
            assert_eq!(cpu.capped(isa).level(), isa);
        }
    }
}
