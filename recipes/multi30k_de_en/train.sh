#!/usr/bin/env bash
# Train a Transformer on Multi30k De-En with one optimizer (thin wrapper; logic in recipe.py).
#
#   train.sh OPT [SEED] [options] [-- extra fairseq-train args]
#   OPT: adamw | sam | xsam | fixed | msam | msam+ | lsam | lsam+   SEED: default 1
#   adamw = --optimizer adam; the others --optimizer xsam_adamw --sam-variant OPT
#   (--rho R, default 0.15; --probe-rho defaults to 3R; xsam searches alpha every epoch).
# Options (train.sh --help lists all):
#   --preset study|demo|tiny (model, epochs, data; default study)   --data DIR
#   --runs DIR (env RUNS, default runs/multi30k_de_en)   --label L (default OPT)
#   --max-epoch N  --rho R  --probe-rho R  --alpha A (fixed)  --alpha-search epoch|never|N
#   --ascent-steps K  --cpu  --no-fp16  --quiet  --dry-run (print the exact command)
# Writes RUNS/<L>-seed<SEED>/{command.txt,train.log,timing.json,checkpoints/}; checkpoints:
# best (validation loss) and last only. Rerunning resumes; a finished run is skipped.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../python.sh"
exec "$PYTHON" "$here/recipe.py" train "$@"
