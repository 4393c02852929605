#!/usr/bin/env bash
# The project's test command (README, "Run the tests"): checks formatting and clippy, sets up
# what the tests need, then runs
# every test of the workspace in release mode (the forward pass is too slow unoptimised), checks
# that every numeric test ran on every instruction-set variant of this CPU, runs the Python
# package's tests against its built wheel, checks the OpenAPI document with schemathesis, and
# fuzzes for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { echo "== $1 (at $(( $(date +%s) - started )) s)"; }
# The gates first (seconds on a warm target folder): the tree is formatted (rustfmt), and clippy
# finds nothing anywhere, tests and benches included (the server's deny(unwrap, expect, panic)
# is enforced here).
step "cargo fmt --check, cargo clippy -D warnings"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The same with the wgpu backend (`gpu` feature) compiled in.
cargo clippy --workspace --all-targets --features jina-embed/gpu -- -D warnings
if [ -f scripts/setup-test-venv.sh ]; then
    # A Python venv with the real client libraries that the client tests drive.
    bash scripts/setup-test-venv.sh
fi
# The workspace's tests are built with the wgpu backend (`gpu`) compiled in, so that the GPU tests
# (crates/engine/tests/gpu.rs) run among them on Mesa's lavapipe, installed here (apt, root; from
# bookworm-backports) and made the only Vulkan driver. Every other test loads its models on the
# CPU (`--device auto` never takes a software adapter), as the default build does.
# JINA_SKIP_GPU=1 builds and tests without it.
features=()
if [ "${JINA_SKIP_GPU:-0}" != 1 ]; then
    step "lavapipe (software Vulkan) for the GPU tests"
    if [ "$(id -u)" -eq 0 ]; then bash scripts/setup-lavapipe.sh; else sudo bash scripts/setup-lavapipe.sh; fi
    VK_ICD_FILENAMES=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json | head -n 1)
    export VK_ICD_FILENAMES
    features=(--features jina-embed/gpu)
fi
step "cargo test --release --workspace ${features[*]}"
export JINA_VARIANT_LOG="$PWD/target/variant-runs.txt"
mkdir -p target && rm -f "$JINA_VARIANT_LOG"
cargo test --release --workspace "${features[@]}" "$@"
# The `jina-embed` that step built, for the steps below that run it: `cargo build -p jina-embed`
# would build it again with other features (the workspace's dev-dependencies are unified into a
# test build), 3.5 minutes of the 2-core CI machine.
export JINA_EMBED_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/jina-embed"
step "every variant ran"
bash scripts/check-variants.sh "$JINA_VARIANT_LOG"
# The Python package: the wheel built with maturin, installed into a fresh venv, its pytest suite
# (golden cases, errors, GIL release, pickling, a real local Ray cluster). With the GPU step on,
# the one wheel is built with `gpu` and its tests/gpu/ run on lavapipe too (every other test loads
# on the CPU, as `auto` never takes a software adapter). JINA_SKIP_PYTHON=1 skips it.
if [ "${JINA_SKIP_PYTHON:-0}" != 1 ]; then
    step "Python package"
    if [ "${JINA_SKIP_GPU:-0}" != 1 ]; then
        JINA_PY_FEATURES=gpu bash scripts/test-python.sh
    else
        bash scripts/test-python.sh
    fi
fi
# The manifests of deploy/ against the Kubernetes schemas and KEDA's ScaledObject schema
# (kubernetes-validate, jsonschema; strict), with a self-test that the checks can fail.
step "Kubernetes manifests"
bash scripts/validate-manifests.sh
# The OpenAPI document against the server: schemathesis --checks all, a fixed seed, 60 s per mode
# (without keys, with --api-key). JINA_SKIP_SCHEMATHESIS=1 skips it.
if [ "${JINA_SKIP_SCHEMATHESIS:-0}" != 1 ]; then
    step "schemathesis"
    bash scripts/schemathesis.sh
fi
# The engine's tests cross-built for aarch64 and run under qemu-aarch64 (NEON only and every
# feature; the NEON, SDOT and SMMLA kernels, the golden and batching tests, the aarch64
# `jina-embed` against the x86 one): scripts/test-aarch64.sh. Installs Debian's Rust, the arm64
# standard library, the cross compiler and qemu-user on first use (apt, root). On the idle 2-core
# reference machine from an empty target-aarch64 (CI of 76e2418): 276 s to build the tests, 252 s
# more for `jina-embed` (the qemu-test profile, Cargo.toml), 248 s of emulated runs.
# JINA_SKIP_AARCH64=1 skips it.
if [ "${JINA_SKIP_AARCH64:-0}" != 1 ]; then
    step "aarch64 under qemu"
    bash scripts/test-aarch64.sh
fi
# `jina-embed` on the GPU backend (lavapipe): info, embed and serve with --device gpu against
# --device cpu (scripts/test-gpu.sh, on the binary the test step built with the feature; the
# engine's GPU tests already ran in that step, the Python package's in the Python step).
if [ "${JINA_SKIP_GPU:-0}" != 1 ]; then
    step "jina-embed on the GPU backend (lavapipe)"
    JINA_GPU_SKIP_ENGINE=1 JINA_GPU_SKIP_PYTHON=1 bash scripts/test-gpu.sh
fi
# Fuzzing, bounded (docs/reliability.md): the libFuzzer targets of fuzz/, built by a plain cargo
# build with cargo-fuzz's instrumentation (no cargo-fuzz install; stable Rust), 30 s each.
# JINA_SKIP_FUZZ=1 skips it; JINA_FUZZ_SECONDS changes the time per target.
if [ "${JINA_SKIP_FUZZ:-0}" != 1 ]; then
    step "fuzz"
    JINA_FUZZ_DRIVER=plain JINA_FUZZ_SECONDS="${JINA_FUZZ_SECONDS:-30}" bash scripts/fuzz.sh
fi
step "all tests passed"
