#!/usr/bin/env bash
# Our wgpu backend beside PyTorch on the same GPU, in one invocation, sized for a lent device's
# 15 minutes (the `device` tool): 8x128, 4x512 and 1x8192, 3 timed iterations each.
#   MODEL=DIR        the model folder (default: the full-size fixture, generated into
#                    /tmp/jina-full: the real model's shapes, no download)
#   SKIP_BUILD=1     use target/release/jina-embed as it is (built with --features gpu)
#   OUT=DIR          where the outputs go (default bench-gpu-out/)
#   SHAPES=...       default 8x128,4x512,1x8192
# Steps, each under `timeout`: build, `info --device gpu`, `bench --device gpu` (tokens/s, device
# memory, cosine to the CPU's f32 path), then bench/torch_gpu.py when torch with CUDA is there
# (f32 with TF32 off, and bf16), and a summary of the ratios ours/PyTorch per shape.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-gpu-out}"
shapes="${SHAPES:-8x128,4x512,1x8192}"
mkdir -p "$out"
bin=target/release/jina-embed
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    timeout 420 cargo build --release -q -p jina-embed --features gpu
fi
model="${MODEL:-/tmp/jina-full}"
if [ ! -f "$model/model.safetensors" ]; then
    timeout 120 "$bin" -q fixture --variant full --out "$model"
fi
timeout 60 "$bin" info --model "$model" --device gpu --no-hash | tee "$out/info.txt"
# The CPU f32 reference for the cosine is computed after the timings; 1x8192 on the CPU takes
# about a minute of the budget on 16 cores.
timeout 420 "$bin" bench --model "$model" --device gpu --shape "$shapes" --iters 3 \
    | tee "$out/ours.txt"
grep '^{' "$out/ours.txt" > "$out/ours.jsonl"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    timeout 300 python3 bench/torch_gpu.py --model "$model" --shapes "$shapes" --iters 3 \
        | tee "$out/torch.jsonl" || echo "PyTorch run failed or timed out" >&2
else
    echo "no torch with CUDA here: PyTorch side skipped" | tee "$out/torch.jsonl"
fi
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def lines(name):
    rows = []
    for line in open(f"{out}/{name}"):
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows
ours = {r["shape"]: r for r in lines("ours.jsonl")}
torch = {}
for r in lines("torch.jsonl"):
    if "engine" in r:
        torch.setdefault(r["shape"], {})[r["engine"]] = r
print(f"{'shape':<8} {'ours tok/s':>11} {'cos(f32)':>9} {'dev MiB':>8} {'torch f32':>10} {'ratio':>6} {'torch bf16':>11} {'ratio':>6}")
for shape, r in ours.items():
    t = torch.get(shape, {})
    f32, bf16 = t.get("torch-cuda-f32"), t.get("torch-cuda-bf16")
    fmt = lambda x: f"{x['tokens_per_s']:>10.0f} {r['tokens_per_s'] / x['tokens_per_s']:>6.2f}" if x else f"{'-':>10} {'-':>6}"
    mib = (r.get("device_weights_mib") or 0) + (r.get("device_peak_batch_mib") or 0)
    print(f"{shape:<8} {r['tokens_per_s']:>11.0f} {r.get('cosine_to_f32_min') or 0:>9.6f} {mib:>8.0f} {fmt(f32)} {fmt(bf16)}")
print("device:", next(iter(ours.values()))["device"] if ours else "?")
PY
