#!/usr/bin/env bash
# One check of hinas on a CUDA GPU in at most 8 minutes: parts, table and JSON as benchmarks/gpu_check.py says.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine: writes $OUT/gpu_check.json (+ gpu_check_logs/)
#   bash benchmarks/gpu_check.sh --dry-run  # the same parts on this CPU with tiny sizes
#
# The device tool's machine lacks the graphviz Python package (hinas draws genotypes with it). Carry its
# wheel: `echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps -d .whl graphviz`, then
# run(command="bash benchmarks/gpu_check.sh", timeout_s=540, carry=[".whl"]); this script installs every
# wheel in .whl/ first. Parts the budget did not reach: run again with --only NAME,NAME.
# PYTHON picks the interpreter (default python3); GPU_CHECK_LIMIT the hard limit in seconds (default 480).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
limit=${GPU_CHECK_LIMIT:-480}
exec timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/gpu_check.py --budget "$((limit - 15))" "$@"
