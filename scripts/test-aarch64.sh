#!/usr/bin/env bash
# The engine's aarch64 tests under emulation: cross-builds them with Debian's Rust
# (scripts/setup-aarch64.sh, scripts/aarch64-env.sh) and runs a small set under qemu-aarch64 for
# each CPU model in JINA_QEMU_CPUS (default "cortex-a53 max": NEON only, then every feature):
#   - the cpu_features example, checked against what the model must switch on and off
#     (cortex-a53: no dotprod/i8mm/bf16; neoverse-n1: dotprod only; max: all three);
#   - the engine's unit tests (kernels against their references, tokenizer, config, ...), the
#     NEON f32 and SDOT int8 kernels held to the reference's bits, the BFMMLA kernel and the
#     NEON attention kernel to the reference within f32 rounding;
#   - the f32 golden test (all 16 official cases of the small fixture) and the batching tests but
#     the long late-chunking one (windows of 8194 tokens: minutes of emulated attention);
#   - on models with dotprod, the int8 golden test (cosine >= 0.999 on the SDOT kernel); on
#     models with bf16, the bf16 golden test (cosine >= 0.999 on the BFMMLA kernel);
#   - scripts/check-aarch64-embed.sh: the aarch64 `jina-embed` under qemu embeds a line of the
#     small fixture and equals the x86 build within the fixtures' 2e-5.
# Left out: the neoverse-n1 model for the tests (its dotprod level runs under `max` as a capped
# variant; its detection is checked).
# Emulation is tens of times slower than native; see the timings it prints per step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-aarch64.sh
. scripts/aarch64-env.sh
target=aarch64-unknown-linux-gnu
cargo=/usr/bin/cargo

step() {
    local started=$SECONDS
    echo "== $*"
    "$@"
    echo "   ($((SECONDS - started)) s)"
}

# The qemu-test profile (Cargo.toml): the engine and gemm optimised as in release, the rest at
# opt-level 1 without debug info. Every command selects the same packages, so that cargo unifies
# the same features each time and builds the dependencies once for the tests and `jina-embed`
# (a command with another selection would rebuild most of them). `jina-embed` is built without
# its default `download` feature (the hub client: rustls, ring's C and assembly), which no test
# here uses: minutes of the cross build.
build=(--profile qemu-test --target "$target" -p jina-engine -p jina-embed --no-default-features)
bin_dir=$CARGO_TARGET_DIR/$target/qemu-test
step "$cargo" test "${build[@]}" --lib --test golden --test batching --no-run
step "$cargo" build "${build[@]}" --bin jina-embed --example cpu_features

# Expected detections per model: features that must be present (+) and absent (-).
expected() {
    case "$1" in
        cortex-a53) echo "+neon -dotprod -i8mm -bf16" ;;
        neoverse-n1) echo "+neon +dotprod -i8mm -bf16" ;;
        max) echo "+neon +dotprod +i8mm +bf16" ;;
        *) echo "" ;;
    esac
}

check_features() {
    local cpu=$1 out
    # A hang here is the loader/libc mismatch described in scripts/qemu-aarch64-runner.sh.
    if ! out=$(QEMU_CPU=$cpu timeout 120 scripts/qemu-aarch64-runner.sh \
        "$bin_dir/examples/cpu_features"); then
        echo "cpu_features did not finish under qemu -cpu $cpu (a thread that never starts?)" >&2
        return 1
    fi
    echo "   -cpu $cpu: $(echo "$out" | tr '\n' ' ')"
    for want in $(expected "$cpu"); do
        local name=${want:1} value=yes
        [ "${want:0:1}" = - ] && value=no
        if ! grep -qx "$name=$value" <<<"$out"; then
            echo "qemu -cpu $cpu: expected $name=$value, the engine detected: $(grep "^$name=" <<<"$out")" >&2
            return 1
        fi
    done
}

for cpu in neoverse-n1 ${JINA_QEMU_CPUS:-cortex-a53 max}; do
    step check_features "$cpu"
done
# Each qemu CPU model runs its own top variant (plus the reference, scalar): every level is tens
# of times slower emulated, and the models already switch the levels between them.
# The unit tests on `max` run the dotprod level too: its top level takes SMMLA for int8, and this
# runs the SDOT kernel's parity tests without another model's run (neoverse-n1 would do the same).
lib_variants() {
    case "$1" in
        max) echo dotprod,bf16 ;;
        *) echo top ;;
    esac
}
for cpu in ${JINA_QEMU_CPUS:-cortex-a53 max}; do
    export QEMU_CPU=$cpu JINA_TEST_VARIANTS=${JINA_TEST_VARIANTS:-top}
    JINA_TEST_VARIANTS=${JINA_LIB_VARIANTS:-$(lib_variants "$cpu")} \
        step "$cargo" test "${build[@]}" --lib
    step "$cargo" test "${build[@]}" --test golden -- --exact every_golden_case_matches_the_official_outputs
    step "$cargo" test "${build[@]}" --test batching -- --skip long_late_chunking
    # int8 runs its own kernel (SDOT) only where the model has dotprod; elsewhere it is f32.
    if [[ " $(expected "$cpu") " == *" +dotprod "* ]]; then
        step "$cargo" test "${build[@]}" --test golden -- --exact int8_path_keeps_cosine_above_0_999
    fi
    # bf16 runs its own kernel (BFMMLA) only where the model has FEAT_BF16; elsewhere it is the
    # NEON f32 kernel on bf16 weights, which the f32 golden test runs.
    if [[ " $(expected "$cpu") " == *" +bf16 "* ]]; then
        step "$cargo" test "${build[@]}" --test golden -- --exact bf16_path_keeps_cosine_above_0_999
    fi
done
# `jina-embed` itself (built above), under the default model (max).
QEMU_CPU=max step bash scripts/check-aarch64-embed.sh "$bin_dir/jina-embed"
echo "aarch64 tests passed under qemu for: ${JINA_QEMU_CPUS:-cortex-a53 max}"
