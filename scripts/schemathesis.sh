#!/usr/bin/env bash
# Fuzzes the server against its own OpenAPI document with schemathesis (`--checks all`), twice:
# a server without API keys and one with `--api-key`. Any finding fails the script.
#
# Each mode starts `jina-embed serve` on 127.0.0.1 (a free port) over a generated small fixture,
# reads /openapi.json as that server serves it (security declared per route as it enforces it),
# and runs schemathesis with a fixed seed for a bounded time (SCHEMATHESIS_SECONDS, default 60
# per mode). schemathesis is pinned and installed into a virtual environment under the target
# folder.
#
#   scripts/schemathesis.sh                  # both modes, 60 s each
#   SCHEMATHESIS_SECONDS=20 scripts/schemathesis.sh
#
# Reports (JUnit, NDJSON events) and server logs go to $CARGO_TARGET_DIR/schemathesis/.
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
seconds="${SCHEMATHESIS_SECONDS:-60}"
seed="${SCHEMATHESIS_SEED:-20261202}"
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target/schemathesis"
target="$(cd "$target" && pwd)"
out="$target/schemathesis"
venv="$target/schemathesis-venv"
python="${PYTHON:-python3}"
# schemathesis keeps a crash cache in ./.schemathesis and replays it on the next run: it runs in
# $out, from a clean cache, so that a run depends only on the seed.
rm -rf "$out/.schemathesis"

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $version\$"; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
fi
"$venv/bin/schemathesis" --version

# The binary scripts/test.sh's cargo test step built ($JINA_EMBED_BIN), or one built here. (A
# `cargo build -p jina-embed` after `cargo test --workspace` rebuilds it with other features: 3.5
# minutes of the 2-core CI machine.)
bin="${JINA_EMBED_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release --quiet -p jina-embed --bin jina-embed
    bin="$target/release/jina-embed"
fi
model="$out/model"
"$bin" fixture --out "$model" >/dev/null 2>&1

server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

# Which statuses count as "rejected" for schema-invalid requests: schemathesis' defaults plus 413
# (more inputs than max_inputs_per_request, a maxItems of the document, is answered 413).
config="$out/schemathesis.toml"
cat > "$config" <<'TOML'
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# POST /v1/adapters names a folder on the server's disk: a schema-valid path is almost never an
# adapter folder, so its 422 (missing or malformed folder) and 409 (name taken) are answers to
# valid requests, not rejections of them.
[[operations]]
include-name = "POST /v1/adapters"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
TOML

run_mode() {
    local mode="$1"
    local key=""
    local -a auth=()
    local -a serve_keys=()
    if [ "$mode" = keys ]; then
        key="schemathesis-test-key-0123456789"
        auth=(-H "Authorization: Bearer $key")
        serve_keys=(--api-key "$key")
    fi
    local port
    port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    local url="http://127.0.0.1:$port"
    "$bin" serve --model "$model" --host 127.0.0.1 --port "$port" "${serve_keys[@]}" > "$out/server-$mode.log" 2>&1 &
    server_pid=$!
    # Ready once /health answers 200 (the model loaded and warmed up), and the document is read
    # then, with the served model's values.
    "$venv/bin/python" - "$url" "$key" "$out/openapi-$mode.json" <<'PY'
import sys, time, urllib.request
url, key, path = sys.argv[1:4]
deadline = time.time() + 120
while True:
    try:
        if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit(f"the server at {url} did not become ready within 120 s")
    time.sleep(0.2)
request = urllib.request.Request(url + "/openapi.json", headers={"Authorization": f"Bearer {key}"} if key else {})
open(path, "wb").write(urllib.request.urlopen(request, timeout=10).read())
PY
    echo "== schemathesis, server $mode (${seconds} s, seed $seed)"
    local status=0
    (cd "$out" && "$venv/bin/schemathesis" --config-file "$config" run "$out/openapi-$mode.json" --url "$url" "${auth[@]}" \
        --checks all --seed "$seed" --max-time "$seconds" --workers 1 --generation-database none \
        --report junit,ndjson --report-dir "$out/report-$mode" --no-color) || status=$?
    stop_server
    if [ "$status" -ne 0 ]; then
        echo "schemathesis found problems with the server $mode (exit $status); server log: $out/server-$mode.log" >&2
        return "$status"
    fi
}

started=$(date +%s)
failed=0
run_mode open || failed=1
run_mode keys || failed=1
echo "schemathesis: both modes took $(( $(date +%s) - started )) s"
exit "$failed"
