#!/usr/bin/env bash
# Sets up fairseq-xsam on a machine that already has a CUDA build of torch, and KEEPS that torch:
# only the packages that are missing are installed, each with --no-deps, so pip never replaces
# (or downloads) torch. fairseq-fixed 0.12.3.1 comes from a wheel folder (offline) or from the
# index, where pip builds it against the installed torch (--no-build-isolation).
# (scripts/install.sh is the CPU variant: it makes a .venv with torch 2.13 CPU.)
#
#   scripts/install_gpu.sh [--wheels DIR] [--target DIR] [--check]
#   scripts/install_gpu.sh --download DIR
#
#   --wheels DIR    install from the wheel files in DIR only, no network (see --download)
#   --target DIR    install into DIR instead of python's environment (then export
#                   PYTHONPATH=DIR:$PYTHONPATH, which this script prints), e.g. /tmp/site
#   --check         install nothing; list what is missing; exit 1 if anything is
#   --download DIR  on a machine that reaches the package index: add to DIR the pure-Python
#                   wheels an offline CUDA machine also needs (sacremoses, subword-nmt). For this
#                   project's GPU lease: cp -r ../shared/wheels-gpu .whl-gpu (fairseq-fixed's
#                   cp312 wheel and its dependencies), then --download .whl-gpu
# fairseq-xsam itself needs no install: run from the checkout (fairseq-train --user-dir
# fairseq_xsam), or put the checkout on PYTHONPATH. Environment: PYTHON (default python3).
# Facts behind each choice: ../shared/ENVIRONMENT.md.
set -euo pipefail
PY=${PYTHON:-python3}
WHEELS="" TARGET="" CHECK=0 DOWNLOAD=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --target) TARGET=${2:?--target needs a folder}; shift 2 ;;
    --check) CHECK=1; shift ;;
    --download) DOWNLOAD=${2:?--download needs a folder}; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "install_gpu.sh: unknown argument $1 (allowed: --wheels DIR, --target DIR, --check, --download DIR)" >&2; exit 2 ;;
  esac
done

# import name -> pip requirement; fairseq's own dependencies without torch/torchaudio, what the
# recipes (sacremoses, subword-nmt, sacrebleu) and the GPU tests (pytest) use
NEEDS="fairseq=fairseq-fixed==0.12.3.1 hydra=hydra-core==1.3.2 omegaconf=omegaconf==2.3.0
antlr4=antlr4-python3-runtime==4.9.3 bitarray=bitarray regex=regex sacrebleu=sacrebleu
sacremoses=sacremoses subword_nmt=subword-nmt sentencepiece=sentencepiece
sklearn=scikit-learn scipy=scipy tqdm=tqdm yaml=pyyaml packaging=packaging pytest=pytest"

if [ -n "$DOWNLOAD" ]; then
  mkdir -p "$DOWNLOAD"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d "$DOWNLOAD" \
    sacremoses==0.2.0 subword-nmt==0.3.8
  ls "$DOWNLOAD"
  exit 0
fi

if [ -n "$TARGET" ]; then
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
fi
torch_before=$("$PY" -c "import torch; print(torch.__version__, torch.version.cuda)") || {
  echo "install_gpu.sh: $PY has no torch; install a CUDA build of torch first (pytorch.org)" >&2
  exit 1
}
# one interpreter start: find_spec locates a package without importing it
mapfile -t missing < <("$PY" -c '
import importlib.util, sys
for pair in sys.argv[1:]:
    module, requirement = pair.split("=", 1)
    if importlib.util.find_spec(module) is None:
        print(requirement)' $NEEDS)
echo "[install_gpu] torch $torch_before; missing: ${missing[*]:-nothing}"
if [ "$CHECK" = 1 ]; then
  [ ${#missing[@]} -eq 0 ] && exit 0 || exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  pip_args=(-q --disable-pip-version-check --no-deps --no-compile)
  [ -n "$TARGET" ] && pip_args+=(--target "$TARGET")
  if [ -n "$WHEELS" ]; then
    "$PY" -m pip install "${pip_args[@]}" --no-index --find-links "$WHEELS" "${missing[@]}"
  else
    "$PY" -m pip install "${pip_args[@]}" --no-build-isolation "${missing[@]}"
  fi
fi
torch_after=$("$PY" -c "import torch; print(torch.__version__, torch.version.cuda)")
if [ "$torch_after" != "$torch_before" ]; then
  echo "install_gpu.sh: torch changed from $torch_before to $torch_after" >&2
  exit 1
fi
"$PY" -c "import fairseq, torch; from fairseq.data import data_utils_fast; print('[install_gpu] ready: torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available(), '| fairseq', fairseq.__version__)"
[ -n "$TARGET" ] && echo "export PYTHONPATH=$TARGET\${PYTHONPATH:+:\$PYTHONPATH}"
exit 0
