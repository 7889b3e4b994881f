# Sourced by the recipes' shell wrappers: sets PYTHON to $PYTHON if given, else the repository's
# .venv/bin/python if present, else python3.
if [[ -z "${PYTHON:-}" ]]; then
  _venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
  if [[ -x "$_venv" ]]; then PYTHON="$_venv"; else PYTHON=python3; fi
fi
