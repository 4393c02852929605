#!/usr/bin/env bash
# Our wgpu backend beside PyTorch on the same GPU, in one invocation, sized for a lent device's
# 15 minutes (the `device` tool): 8x128, 4x512 and 1x8192, 3 timed iterations each.
#   MODEL=DIR        the model folder (default: the full-size fixture, generated into
#                    /tmp/jina-full with `jina-embed fixture --variant full`: the real model's
#                    shapes, no download, ~30 s)
#   SKIP_BUILD=1     do not run `cargo build --release -p jina-embed --features gpu`
#   BIN=PATH         the binary (default target/release/jina-embed; it must be built with --features gpu)
#   OUT=DIR          where every output goes (default bench-gpu-out/)
#   SHAPES=...       default 8x128,4x512,1x8192
#   ITERS=N          timed iterations per shape (default 3)
#   PYTHON=python3   the Python that holds torch with CUDA and transformers
# Steps, each under `timeout`: build, `info --device gpu`, `bench --device gpu` (tokens/s, device
# memory, cosine to the CPU's f32 path), then bench/torch_gpu.py when torch with CUDA is there
# (f32 with TF32 off, and bf16), and a summary of the ratios ours/PyTorch per shape
# ($OUT/summary.txt).
#
# On the lent machines (`device` tool): their image has no Rust toolchain and no Vulkan loader, and
# nothing can be fetched there. So build here, carry a stripped copy of the binary (the release
# binary with debug info is over the 64 MiB a call carries), and carry the loader's .deb files
# (/work/.library/device/README.md, "Headless rendering"):
#   cargo build --release -p jina-embed --features gpu
#   mkdir -p .gpu-bin && strip -o .gpu-bin/jina-embed target/release/jina-embed   # .gpu-bin in .git/info/exclude
#   run(carry=[".gl", ".gpu-bin"], command="for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
#       SKIP_BUILD=1 BIN=.gpu-bin/jina-embed OUT=$OUT scripts/bench-gpu.sh")
# Its transformers (5.17 when last listed) may predate JinaEmbeddingsV3Model: then the PyTorch
# side is skipped with a message; carry transformers==5.24.0 (bench/requirements.txt) as a wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-gpu-out}"
shapes="${SHAPES:-8x128,4x512,1x8192}"
iters="${ITERS:-3}"
py="${PYTHON:-python3}"
bin="${BIN:-target/release/jina-embed}"
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    step "build (--features gpu)"
    if command -v cargo >/dev/null; then
        timeout 480 cargo build --release -q -p jina-embed --features gpu
    else
        echo "no cargo here: using $bin as it is (SKIP_BUILD=1 silences this)"
    fi
fi
[ -x "$bin" ] || { echo "no binary at $bin (build with --features gpu, or set BIN)"; exit 1; }

# The NVIDIA driver's Vulkan ICD is not always where the loader looks (the lent machines).
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f "$nv_icd" ] \
    && ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
    export VK_DRIVER_FILES="$nv_icd"
fi
if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
    echo "warning: no libvulkan.so.1 in the loader's cache: wgpu will find no Vulkan adapter"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv | tee "$out/nvidia-smi.txt" || true

model="${MODEL:-/tmp/jina-full}"
if [ ! -f "$model/model.safetensors" ]; then
    step "fixture --variant full -> $model"
    timeout 180 "$bin" -q fixture --variant full --out "$model"
fi

step "info --device gpu"
timeout 90 "$bin" info --model "$model" --device gpu --no-hash | tee "$out/info.txt"

step "bench --device gpu --shape $shapes --iters $iters"
# The CPU f32 reference for the cosine runs after the timings: 1x8192 on the CPU takes up to a
# minute of the budget on 16 cores.
timeout 480 "$bin" bench --model "$model" --device gpu --shape "$shapes" --iters "$iters" \
    | tee "$out/ours.txt"
grep '^{' "$out/ours.txt" > "$out/ours.jsonl" || true

step "bench --device gpu --precision f16 (where the adapter has shader-f16; f32 otherwise, said so)"
timeout 300 "$bin" bench --model "$model" --device gpu --precision f16 --shape "$shapes" --iters "$iters" \
    | tee "$out/ours-f16.txt" || echo "f16 run failed or timed out (partial results kept)"
grep '^{' "$out/ours-f16.txt" > "$out/ours-f16.jsonl" || true

step "PyTorch on the same GPU"
if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no torch with CUDA for $py: PyTorch side skipped" | tee "$out/torch.jsonl"
elif ! "$py" -c 'from transformers import JinaEmbeddingsV3Model' 2>/dev/null; then
    echo "transformers $("$py" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo '?') has no JinaEmbeddingsV3Model (5.24.0 has): PyTorch side skipped" \
        | tee "$out/torch.jsonl"
else
    PYTHONUNBUFFERED=1 timeout 300 "$py" bench/torch_gpu.py --model "$model" --shapes "$shapes" --iters "$iters" \
        | tee "$out/torch.jsonl" || echo "PyTorch run failed or timed out (partial results kept)"
fi

step "summary"
python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, sys
out = sys.argv[1]
def lines(name):
    rows = []
    try:
        for line in open(f"{out}/{name}"):
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    except FileNotFoundError:
        pass
    return rows
ours = {r["shape"]: r for r in lines("ours.jsonl")}
ours_f16 = {r["shape"]: r for r in lines("ours-f16.jsonl")}
torch = {}
for r in lines("torch.jsonl"):
    if "engine" in r:
        torch.setdefault(r["shape"], {})[r["engine"]] = r
print(f"{'shape':<8} {'ours tok/s':>11} {'cos(f32)':>9} {'dev MiB':>8} {'torch f32':>10} {'ratio':>6} {'torch bf16':>11} {'ratio':>6}")
for shape, r in ours.items():
    t = torch.get(shape, {})
    f32, bf16 = t.get("torch-cuda-f32"), t.get("torch-cuda-bf16")
    fmt = lambda x, w: f"{x['tokens_per_s']:>{w}.0f} {r['tokens_per_s'] / x['tokens_per_s']:>6.2f}" if x else f"{'-':>{w}} {'-':>6}"
    mib = (r.get("device_weights_mib") or 0) + (r.get("device_peak_batch_mib") or 0)
    print(f"{shape:<8} {r['tokens_per_s']:>11.0f} {r.get('cosine_to_f32_min') or 0:>9.6f} {mib:>8.0f} {fmt(f32, 10)} {fmt(bf16, 11)}")
for shape, r in ours_f16.items():
    f32 = ours.get(shape)
    speedup = f"{r['tokens_per_s'] / f32['tokens_per_s']:.2f}x our f32" if f32 else "-"
    bf16 = torch.get(shape, {}).get("torch-cuda-bf16")
    vs = f", {r['tokens_per_s'] / bf16['tokens_per_s']:.2f}x torch bf16" if bf16 else ""
    print(f"{shape:<8} ours {r['precision']} (requested f16): {r['tokens_per_s']:.0f} tok/s, cos(f32) {r.get('cosine_to_f32_min') or 0:.6f}, {speedup}{vs}")
print("ratio = ours / PyTorch tokens per second (median iteration); torch f32 has TF32 off")
print("device:", next(iter(ours.values()))["device"] if ours else "?")
if torch:
    print("gpu:", next(iter(next(iter(torch.values())).values())).get("gpu", "?"))
PY
