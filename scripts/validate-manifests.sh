#!/usr/bin/env bash
# Validates every manifest in deploy/ (*.yaml) against the schemas, strictly (unknown fields are
# errors): the built-in kinds with kubernetes-validate (the Kubernetes OpenAPI schemas, for the
# oldest and the newest version we claim), KEDA's ScaledObject with the models generated from
# KEDA 2.16.1's CRDs (cloudcoil-models-keda 2.16.1.0) turned into a JSON Schema, checked with
# jsonschema. A kind neither knows fails. Installs what it needs into .venv-manifests (gitignored).
#   JINA_MANIFESTS_REUSE_VENV=1   keep an existing .venv-manifests
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
venv=.venv-manifests
if [ "${JINA_MANIFESTS_REUSE_VENV:-0}" != 1 ]; then
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 cloudcoil-models-keda==2.16.1.0 jsonschema==4.26.0 pyyaml==6.0.3
"$venv/bin/python" scripts/validate_manifests.py deploy/*.yaml
echo "validate-manifests: passed in $(( $(date +%s) - started )) s"
