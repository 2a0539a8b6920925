#!/usr/bin/env bash
# Builds app.py into a Weir plugin component:
#   plugins/examples/python/build.sh [OUTPUT.wasm]   (default: sender-policy.wasm here)
# componentize-py comes from plugins/examples/setup (a venv in .venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/sender-policy.wasm}")"
tool="$here/.venv/bin/componentize-py"
if [ ! -x "$tool" ]; then
    echo "build.sh: $tool is missing: run plugins/examples/setup first" >&2
    exit 1
fi
cd "$here"
# -d/-w: the contract and its world; `app`: the module with class WitWorld.
"$tool" -d ../../../wit -w plugin componentize app -o "$out" >/dev/null
echo "$out: $(stat -c %s "$out") bytes"
