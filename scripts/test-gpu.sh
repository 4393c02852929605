#!/usr/bin/env bash
# The GPU backend (cargo feature `gpu`, wgpu) tested without a GPU, on Mesa's lavapipe: a Vulkan
# driver that runs the same compute shaders on the CPU.
#   1. scripts/setup-lavapipe.sh installs Mesa 25 from bookworm-backports (apt, root) when missing;
#      VK_ICD_FILENAMES then points the Vulkan loader at lavapipe alone.
#   2. The engine's GPU tests (crates/engine/tests/gpu.rs; the shader unit tests in
#      crates/engine/src/gpu/tests.rs run with the workspace's): the 16 official golden cases through
#      `--device gpu` within 2e-5, the same at `--precision f16` at cosine >= 0.999, a larger generated fixture (4 layers, 4 heads, a ~700-token
#      input, late chunking, every task, unnormalised vectors) and mixed batches of built-in and
#      custom adapters against the CPU f32 path within 2e-5, a lost device failing with a clear
#      error, bad input refused. Each test asserts that the plan runs on the GPU: a silent
#      fallback to the CPU fails.
#   3. `jina-embed` built with `--features gpu`: `info --device gpu` names lavapipe; `embed
#      --device gpu` equals `embed --device cpu` within 2e-5; `serve --device gpu` names the
#      device in /v1/models and answers /v1/embeddings with the CPU's vectors.
#   4. The Python package built with `--features gpu` (maturin, into its own venv .venv-py-gpu with
#      numpy and pytest): crates/python/tests/gpu/ (golden cases, every task vs the CPU, threads
#      sharing the device, f16 at cosine >= 0.999, fallbacks named, auto never on lavapipe).
# JINA_GPU_SKIP_PYTHON=1 skips step 4. JINA_GPU_SKIP_CLI=1 runs steps 1 and 2 only; JINA_GPU_SKIP_ENGINE=1 skips step 2 (scripts/test.sh
# ran those tests already). With JINA_EMBED_BIN set (a `jina-embed` built with the feature, as
# scripts/test.sh's test step builds it), step 3 uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        bash scripts/setup-lavapipe.sh
    else
        sudo bash scripts/setup-lavapipe.sh
    fi
fi
icd=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json | head -n 1)
export VK_ICD_FILENAMES="$icd"
echo "lavapipe: $icd (mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || echo '?'))"

if [ "${JINA_GPU_SKIP_ENGINE:-0}" != 1 ]; then
    started=$SECONDS
    cargo test --release -p jina-engine --features gpu --test gpu
    echo "   engine GPU tests: $((SECONDS - started)) s"
fi

if [ "${JINA_GPU_SKIP_CLI:-0}" = 1 ]; then
    exit 0
fi
bin="${JINA_EMBED_BIN:-}"
if [ -z "$bin" ]; then
    started=$SECONDS
    cargo build --release -q -p jina-embed --features gpu
    bin="${CARGO_TARGET_DIR:-$PWD/target}/release/jina-embed"
    echo "   jina-embed --features gpu built: $((SECONDS - started)) s"
fi

dir=$(mktemp -d)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
"$bin" -q fixture --out "$dir/small" >/dev/null
"$bin" info --model "$dir/small" --device gpu --no-hash | tee "$dir/info.txt" | grep '^device'
grep -q '^device *gpu: llvmpipe' "$dir/info.txt" || { echo "info --device gpu does not name lavapipe" >&2; exit 1; }

printf '%s\n' "Paris is the capital of France." "" "Ein kurzer deutscher Satz." > "$dir/in.txt"
"$bin" -q embed --model "$dir/small" --device gpu --task retrieval.query --input "$dir/in.txt" --output "$dir/gpu.jsonl"
"$bin" -q embed --model "$dir/small" --device cpu --task retrieval.query --input "$dir/in.txt" --output "$dir/cpu.jsonl"

port=$((20000 + RANDOM % 20000))
"$bin" serve --model "$dir/small" --device gpu --host 127.0.0.1 --port "$port" > "$dir/server.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    sleep 0.5
done
curl -sf "http://127.0.0.1:$port/v1/models" > "$dir/models.json"
curl -sf "http://127.0.0.1:$port/v1/embeddings" -H 'Content-Type: application/json' \
    -d '{"input": ["Paris is the capital of France.", "", "Ein kurzer deutscher Satz."], "task": "retrieval.query"}' \
    > "$dir/served.json"
grep -q 'device.*gpu: llvmpipe' "$dir/server.log" || { echo "the server log does not name the GPU" >&2; cat "$dir/server.log" >&2; exit 1; }

python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
rows = lambda p: [json.loads(l)["embedding"] for l in open(f"{d}/{p}")]
gpu, cpu = rows("gpu.jsonl"), rows("cpu.jsonl")
served = [item["embedding"] for item in json.load(open(f"{d}/served.json"))["data"]]
def worst(a, b):
    assert len(a) == len(b)
    return max(max(abs(x - y) for x, y in zip(u, v)) for u, v in zip(a, b))
for name, got in [("embed --device gpu", gpu), ("serve --device gpu", served)]:
    diff = worst(got, cpu)
    assert diff <= 2e-5, f"{name} vs --device cpu: max |diff| {diff:e}"
    print(f"{name} equals --device cpu within {diff:.1e} ({len(got)} vectors)")
card = json.load(open(f"{d}/models.json"))["data"][0]["device"]
assert card["kind"] == "gpu" and "llvmpipe" in card["adapter"], card
assert card["backend"] == "Vulkan" and card["adapter_kind"] == "software", card
print(f"/v1/models: device {card['kind']}, {card['adapter']} ({card['backend']}, {card['adapter_kind']}), max_batch_tokens {card['max_batch_tokens']}")
PY

if [ "${JINA_GPU_SKIP_PYTHON:-0}" = 1 ]; then
    exit 0
fi
started=$SECONDS
venv=.venv-py-gpu
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.7,<2" "numpy>=1.24" "pytest>=7"
wheels="${CARGO_TARGET_DIR:-$PWD/target}/wheels-gpu"
rm -f "$wheels"/jina_embeddings_rs-*.whl
"$venv/bin/maturin" build --release --quiet -m crates/python/Cargo.toml --features gpu -o "$wheels"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/jina_embeddings_rs-*.whl
echo "   Python wheel --features gpu built and installed: $((SECONDS - started)) s"
# From the tests folder (its conftest.py and pytest.ini), so that the wheel, not the source, is imported.
(cd crates/python/tests && "../../../$venv/bin/python" -m pytest -q -p no:cacheprovider gpu)
echo "   Python GPU tests: $((SECONDS - started)) s"
