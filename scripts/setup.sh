#!/usr/bin/env bash
# Sets hinas up on a fresh machine, idempotently: Graphviz's `dot` (Debian package when run as root),
# a virtual environment in .venv with torch and the package (editable) plus the extras named in $1.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
torch_version="${HINAS_TORCH:-2.13.0}"

if ! command -v dot >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing Graphviz (Debian package graphviz)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
    else
        echo "setup: Graphviz's dot is missing; install it (apt-get install graphviz / conda install graphviz / brew install graphviz)" >&2
        exit 1
    fi
fi

python=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==$torch_version"
    .venv/bin/pip install -q "torch==$torch_version"
fi
echo "setup: installing hinas[$extras]"
.venv/bin/pip install -q -e ".[$extras]"
