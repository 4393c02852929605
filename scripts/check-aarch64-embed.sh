#!/usr/bin/env bash
# Embeds one line of the small fixture with an aarch64 `jina-embed` (the path given) under
# qemu-aarch64 (QEMU_CPU, default max) and compares the vector with the x86 build's: the same
# model, so they must agree within the fixtures' 2e-5. Used by scripts/build-aarch64.sh --check
# and scripts/test-aarch64.sh. The x86 `jina-embed` is $JINA_EMBED_BIN where scripts/test.sh set
# it (the one its cargo test step built), else it is built here (rustup's toolchain, target/).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
x86="${JINA_EMBED_BIN:-}"
if [ -z "$x86" ]; then
    env -u RUSTC -u CARGO_TARGET_DIR PATH="$HOME/.cargo/bin:$PATH" cargo build --release -q -p jina-embed
    x86=target/release/jina-embed
fi
"$x86" -q fixture --out "$dir/small" >/dev/null
printf 'Paris is the capital of France.\n' > "$dir/in.txt"
"$x86" -q embed --model "$dir/small" --input "$dir/in.txt" --output "$dir/x86.jsonl"
timeout 600 scripts/qemu-aarch64-runner.sh "$binary" -q embed --model "$dir/small" --input "$dir/in.txt" --output "$dir/arm.jsonl"
python3 - "$dir/x86.jsonl" "$dir/arm.jsonl" <<'PY'
import json, sys
a, b = (json.loads(open(p).readline())["embedding"] for p in sys.argv[1:3])
diff = max(abs(x - y) for x, y in zip(a, b))
assert len(a) == len(b) and diff <= 2e-5, f"aarch64 vs x86: max |diff| {diff:e}"
print(f"aarch64 under qemu ({len(a)} dimensions) equals the x86 build within {diff:.1e}")
PY
