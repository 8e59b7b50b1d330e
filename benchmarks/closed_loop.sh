#!/usr/bin/env bash
# The learning loop, closed (issue 14): a simulated service learns its router
# from its own traffic through torouter-server, round after round; see
# benchmarks/closed_loop.py for what it does and its options.
#
#   benchmarks/closed_loop.sh                    # llmrouter14, 3 passes of 5 rounds, gbt (~4 min)
#   benchmarks/closed_loop.sh --write-results    # and into docs/RESULTS.md
#
# Needs the shared datasets ($TOROUTER_DATA, default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build >/dev/null
exec python3 benchmarks/closed_loop.py "$@"
