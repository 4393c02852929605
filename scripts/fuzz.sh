#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time and prints the executions of each.
#
#   JINA_FUZZ_SECONDS   seconds per target (default 60)
#   JINA_FUZZ_TARGETS   space-separated targets (default: all of fuzz/fuzz_targets)
#   JINA_FUZZ_DRIVER    cargo-fuzz (default; installed with `cargo install cargo-fuzz --locked`
#                       when missing, ~2 min) or plain: the same libFuzzer binaries built by a
#                       plain `cargo build` with cargo-fuzz's coverage flags, which needs no
#                       install and compiles faster (several codegen units instead of one);
#                       scripts/test.sh uses plain.
#
# Both drivers work on stable Rust: with `-s none` (no AddressSanitizer) every flag is stable.
# New corpus entries go to fuzz/corpus-scratch/<target> (ignored); the committed seeds in
# fuzz/corpus/<target> are only read. A crash leaves its input in fuzz/artifacts/<target>/ and
# fails the script. libFuzzer's -malloc_limit_mb makes one oversized allocation a failure.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${JINA_FUZZ_SECONDS:-60}"
driver="${JINA_FUZZ_DRIVER:-cargo-fuzz}"
targets="${JINA_FUZZ_TARGETS:-$(ls fuzz_targets | sed 's/\.rs$//' | tr '\n' ' ')}"
flags=(-max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)
triple="$(rustc -vV | sed -n 's/^host: //p')"

case "$driver" in
cargo-fuzz)
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz.sh: installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
    cargo fuzz build -s none -O
    bin_dir="target/$triple/release"
    ;;
plain)
    # cargo-fuzz's instrumentation flags (cargo-fuzz 0.13, src/project.rs), minus -Ccodegen-units=1.
    export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions"
    cargo build --release --bins --target "$triple" --target-dir target-plain
    bin_dir="target-plain/$triple/release"
    ;;
*)
    echo "fuzz.sh: JINA_FUZZ_DRIVER must be cargo-fuzz or plain" >&2
    exit 2
    ;;
esac

status=0
for t in $targets; do
    mkdir -p "corpus-scratch/$t" "artifacts/$t"
    log="corpus-scratch/$t.log"
    if ! "$bin_dir/$t" "${flags[@]}" -artifact_prefix="artifacts/$t/" "corpus-scratch/$t" "corpus/$t" >"$log" 2>&1; then
        echo "fuzz.sh: $t FAILED (see fuzz/$log and fuzz/artifacts/$t/)" >&2
        tail -40 "$log" >&2
        status=1
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    echo "fuzz: $t: ${execs:-?} executions in ${seconds} s (${rate:-?}/s)"
done
exit "$status"
