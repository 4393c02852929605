#!/usr/bin/env bash
# A release `jina-embed` for aarch64 Linux (AWS Graviton, Ampere, a Raspberry Pi 4/5, Linux on
# Apple Silicon), cross-built on an x86 Debian machine with Debian's Rust (scripts/setup-aarch64.sh
# installs it). Writes target-aarch64/aarch64-unknown-linux-gnu/release/jina-embed and, with
# --check, embeds one line of the small fixture with it under qemu-aarch64 and compares the vector
# with the x86 build's (the same model, so within the fixtures' 2e-5).
# On an aarch64 machine itself no cross toolchain is needed: `cargo build --release -p jina-embed`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-aarch64.sh
. scripts/aarch64-env.sh
/usr/bin/cargo build --release --target aarch64-unknown-linux-gnu -p jina-embed
binary="$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/jina-embed"
echo "built $binary"
if [ "${1:-}" = --check ]; then
    bash scripts/check-aarch64-embed.sh "$binary"
fi
