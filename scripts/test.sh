#!/usr/bin/env bash
# The project's test command (README, "Run the tests"): sets up what the tests need, then runs
# every test of the workspace in release mode (the forward pass is too slow unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/setup-test-venv.sh ]; then
    # A Python venv with the real client libraries that the client tests drive.
    bash scripts/setup-test-venv.sh
fi
cargo test --release --workspace "$@"
# Fuzzing, bounded (docs/reliability.md): the libFuzzer targets of fuzz/, built by a plain cargo
# build with cargo-fuzz's instrumentation (no cargo-fuzz install; stable Rust), 60 s each.
# JINA_SKIP_FUZZ=1 skips it; JINA_FUZZ_SECONDS changes the time per target.
if [ "${JINA_SKIP_FUZZ:-0}" != 1 ]; then
    JINA_FUZZ_DRIVER=plain JINA_FUZZ_SECONDS="${JINA_FUZZ_SECONDS:-60}" bash scripts/fuzz.sh
fi
