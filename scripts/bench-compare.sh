#!/usr/bin/env bash
# Runs bench/compare.py: `jina-embed bench` against PyTorch (transformers) and ONNX Runtime on the
# same shapes, in one invocation, and prints our ratio to each (see docs/benchmarks.md).
#
#   scripts/bench-compare.sh --model /tmp/full --shapes 8x128,4x512,1x2048,1x8192 --threads 2 \
#       --iters 3 --out docs/benchmarks.md
#
# Creates bench/.venv (gitignored) with the pinned packages of bench/requirements.txt on first use
# (PyPI's torch is the CUDA build, ~4.5 GB, ~2 min to install; it runs on the CPU here).
# Builds target/release/jina-embed first unless SKIP_BUILD=1. All arguments go to compare.py
# (`scripts/bench-compare.sh --help` lists them). If --model DIR has no model.safetensors and
# MAKE_FIXTURE=1, a full-size fixture is written there first (~30 s, 1.1 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv=bench/.venv

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
want = {}
for line in open("bench/requirements.txt"):
    line = line.split("#")[0].strip()
    if "==" in line:
        name, version = line.split("==")
        want[name.strip()] = version.strip()
have = {n: md.version(n) for n in want}
sys.exit(0 if all(have[n].split("+")[0] == v for n, v in want.items()) else 1)
PY
then
    echo "bench-compare: installing bench/requirements.txt into $venv (torch is large; takes a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if ! cargo build --release --quiet --bin jina-embed; then
        if [ -x target/release/jina-embed ]; then
            echo "bench-compare: cargo build failed; measuring the existing target/release/jina-embed" >&2
        else
            exit 1
        fi
    fi
fi

if [ "${MAKE_FIXTURE:-0}" = 1 ]; then
    model=""
    prev=""
    for arg in "$@"; do
        if [ "$prev" = --model ]; then model="$arg"; fi
        case "$arg" in --model=*) model="${arg#--model=}" ;; esac
        prev="$arg"
    done
    if [ -n "$model" ] && [ ! -f "$model/model.safetensors" ]; then
        echo "bench-compare: writing a full-size fixture to $model" >&2
        target/release/jina-embed fixture --out "$model" --variant full
    fi
fi

exec "$venv/bin/python" bench/compare.py "$@"
