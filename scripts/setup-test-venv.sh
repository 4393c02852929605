#!/usr/bin/env bash
# Creates .venv (gitignored) with the official `openai` Python SDK and numpy, for the server test
# that calls `client.embeddings.create` against a real `jina-embed serve`
# (crates/server/tests/http/openai.rs runs crates/server/tests/openai_client.py with it).
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
.venv/bin/python -c 'import openai, numpy; print("test venv ready: openai", openai.__version__, "numpy", numpy.__version__)'
