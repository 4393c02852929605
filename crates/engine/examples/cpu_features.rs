//! Prints the CPU features the engine's run-time dispatch sees, one `name=yes|no` per line.
//!
//! On aarch64 this shows whether `is_aarch64_feature_detected!` follows qemu's `-cpu` model
//! (scripts/test-aarch64.sh checks it: `cortex-a53` is NEON only, `neoverse-n1` adds dotprod,
//! `max` has everything); on x86-64 it prints the AVX-512 features the kernels pick from.
//!
//! The detection runs in a spawned thread, so that the script's first emulated run also checks
//! that threads start under qemu: with a dynamic loader and libc from different glibc builds the
//! first `pthread_create` never returns (see scripts/qemu-aarch64-runner.sh).

fn main() {
    std::thread::spawn(print_features)
        .join()
        .expect("the detecting thread panicked");
}

fn print_features() {
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        let features = [
            ("neon", has!("neon")),
            ("fp16", has!("fp16")),
            ("dotprod", has!("dotprod")),
            ("i8mm", has!("i8mm")),
            ("bf16", has!("bf16")),
            ("sve", has!("sve")),
            ("sve2", has!("sve2")),
        ];
        for (name, present) in features {
            println!("{name}={}", if present { "yes" } else { "no" });
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let features = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512bf16", has!("avx512bf16")),
            ("avx512vnni", has!("avx512vnni")),
        ];
        for (name, present) in features {
            println!("{name}={}", if present { "yes" } else { "no" });
        }
    }
}
