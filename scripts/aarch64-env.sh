# Source this (`. scripts/aarch64-env.sh`) to build and run the engine for aarch64 on an x86
# machine with Debian's Rust (installed by scripts/setup-aarch64.sh), as in the docs' "Testing
# aarch64 code on an x86 machine". Debian's cargo and rustc must be used together (the rustup
# toolchain cannot load Debian's arm64 standard library), so /usr/bin comes first on PATH and the
# build has its own target directory. Then:
#   cargo build --release --target aarch64-unknown-linux-gnu -p jina-embed
#   cargo test --release --target aarch64-unknown-linux-gnu -p jina-engine --lib kernels
# `cargo test`/`cargo run` run the binaries under qemu-aarch64 with the CPU model in QEMU_CPU
# (default `max`: every feature; `cortex-a53`: NEON only; `neoverse-n1`: + dotprod).
_jina_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export PATH="/usr/bin:$PATH"
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR="$_jina_root/target-aarch64"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
# The runner reads QEMU_CPU at each run, so it can change between commands.
export QEMU_CPU="${QEMU_CPU:-max}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$_jina_root/scripts/qemu-aarch64-runner.sh"
unset _jina_root
