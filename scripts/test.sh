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
