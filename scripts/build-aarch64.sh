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
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    # The x86 build (rustup's toolchain, the usual target folder) writes the fixture and the
    # reference vector; the aarch64 one, under qemu, embeds the same line.
    env -u RUSTC -u CARGO_TARGET_DIR PATH="$HOME/.cargo/bin:$PATH" cargo build --release -q -p jina-embed
    target/release/jina-embed -q fixture --out "$dir/small" >/dev/null
    printf 'Paris is the capital of France.\n' > "$dir/in.txt"
    target/release/jina-embed -q embed --model "$dir/small" --input "$dir/in.txt" --output "$dir/x86.jsonl"
    timeout 600 scripts/qemu-aarch64-runner.sh "$binary" -q embed --model "$dir/small" --input "$dir/in.txt" --output "$dir/arm.jsonl"
    python3 - "$dir/x86.jsonl" "$dir/arm.jsonl" <<'PY'
import json, sys
a, b = (json.loads(open(p).readline())["embedding"] for p in sys.argv[1:3])
diff = max(abs(x - y) for x, y in zip(a, b))
assert len(a) == len(b) and diff <= 2e-5, f"aarch64 vs x86: max |diff| {diff:e}"
print(f"aarch64 under qemu ({len(a)} dimensions) equals the x86 build within {diff:.1e}")
PY
fi
