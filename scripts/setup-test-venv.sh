#!/usr/bin/env bash
# Creates .venv (gitignored) with the real client libraries the client tests drive against a real
# server: the official `openai` Python SDK (crates/server/tests/http/openai.rs runs
# crates/server/tests/openai_client.py), LlamaIndex's JinaEmbedding
# (llama-index-embeddings-jinaai: crates/server/tests/http/llamaindex.rs runs
# crates/server/tests/llamaindex_client.py), numpy, and pyarrow to read the CLI's Parquet output
# back (crates/cli/tests/embed.rs).
# Idempotent: an existing .venv is reused and only checked.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if ! .venv/bin/python -c 'import openai, numpy' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "openai>=1.40,<3" "numpy>=1.24"
fi
if ! .venv/bin/python -c 'import llama_index.embeddings.jinaai, pyarrow' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "llama-index-embeddings-jinaai>=0.3" "pyarrow>=14"
fi
.venv/bin/python - <<'PY'
import importlib.metadata as m
print("test venv ready:", ", ".join(f"{p} {m.version(p)}" for p in ["openai", "numpy", "llama-index-embeddings-jinaai", "pyarrow"]))
PY
