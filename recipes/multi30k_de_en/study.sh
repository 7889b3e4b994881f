#!/usr/bin/env bash
# The Multi30k optimizer study (thin wrapper; logic in study.py, the plan in study.toml).
#   study.sh status | run [--max-runs N] [--only GLOB] | report   [--plan FILE]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../python.sh"
exec "$PYTHON" "$here/study.py" "$@"
