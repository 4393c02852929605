#!/usr/bin/env bash
# Builds the Python package (crates/python) into a wheel with maturin, installs it into a fresh
# venv (.venv-py, gitignored) with the test requirements (numpy, pytest, pyarrow, the real
# ray[data], tqdm; langchain-core and llama-index-core) and runs the pytest suite against the
# installed wheel.
#   JINA_PY_REUSE_VENV=1   keep an existing .venv-py (only missing requirements are installed)
#   JINA_PY_SPARK=1        also install PySpark and run the Spark job in local[2] (opt-in: the
#                          install and the JVM add minutes; docs/quickstart-python.md)
#   PYTHON=python3.X       the interpreter the venv is made from (3.9 or later)
#   JINA_PY_FEATURES=gpu   build the wheel with the wgpu backend and also run tests/gpu/ (it
#                          needs a Vulkan driver: scripts/test.sh sets this after installing
#                          lavapipe, so CI builds one wheel for both)
#   extra arguments go to pytest (e.g. -k ray -x)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv=.venv-py
started=$(date +%s)
if [ "${JINA_PY_REUSE_VENV:-0}" != 1 ]; then
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
requirements=(-r crates/python/requirements-test.txt -r crates/python/requirements-integrations.txt)
if [ "${JINA_PY_SPARK:-0}" = 1 ]; then
    requirements+=(-r crates/python/requirements-spark.txt)
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
echo "test-python: requirements installed after $(( $(date +%s) - started )) s"

# The wheel: abi3 (CPython 3.9+), built in release mode in the workspace's target folder.
wheels="${CARGO_TARGET_DIR:-target}/wheels"
rm -f "$wheels"/jina_embeddings_rs-*.whl
features=()
ignore=(--ignore=gpu)
if [ -n "${JINA_PY_FEATURES:-}" ]; then
    features=(--features "$JINA_PY_FEATURES")
    case ",$JINA_PY_FEATURES," in *,gpu,*) ignore=() ;; esac
fi
"$venv/bin/maturin" build --release --quiet -m crates/python/Cargo.toml "${features[@]}" -o "$wheels"
wheel=$(ls "$wheels"/jina_embeddings_rs-*.whl)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
echo "installed $(basename "$wheel") ($(du -h "$wheel" | cut -f1)) into $venv after $(( $(date +%s) - started )) s"

# Run from the tests folder so that the installed wheel, not the source tree, is imported.
cd crates/python/tests
"../../../$venv/bin/python" - <<'PY'
import jina_embeddings, os
assert "site-packages" in jina_embeddings.__file__, f"imported {jina_embeddings.__file__}, not the wheel"
PY
status=0
# gpu/ needs a wheel built with `--features gpu` (JINA_PY_FEATURES=gpu, or scripts/test-gpu.sh).
"../../../$venv/bin/python" -m pytest -q -p no:cacheprovider "${ignore[@]}" "$@" . || status=$?
if [ "$status" = 5 ]; then
    echo "test-python: pytest collected no tests (exit code 5): that is a failure" >&2
    exit 1
fi
if [ "$status" != 0 ]; then
    exit "$status"
fi
echo "test-python: passed in $(( $(date +%s) - started )) s"
