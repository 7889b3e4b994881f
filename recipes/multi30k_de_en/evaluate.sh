#!/usr/bin/env bash
# Translate the three Multi30k test sets and score them (thin wrapper; logic in recipe.py).
#
#   evaluate.sh RUN|CKPT [options] [-- extra fairseq-generate args]
# fairseq-generate (beam 5, --remove-bpe sentencepiece, --required-batch-size-multiple 1) of
# RUN/checkpoints/checkpoint_best.pt on test2016_flickr, test2017_flickr and test2017_mscoco,
# failing unless every sentence was translated; sacreBLEU against the raw cased references and
# fairseq's tokenized BLEU4; then xsam-flatness on training batches.
# Options: --cpu  --preset P (sharpness cost)  --no-sharpness  --data DIR  --out DIR  --dry-run
# Writes RUN/eval/{<testset>.hyp.en, bleu.json, sharpness.json, generate-*.txt}.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../python.sh"
exec "$PYTHON" "$here/recipe.py" evaluate "$@"
