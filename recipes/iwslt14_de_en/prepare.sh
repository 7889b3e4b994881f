#!/usr/bin/env bash
# IWSLT'14 De-En data preparation (fairseq's prepare-iwslt14.sh in Python, then fairseq-preprocess).
# Thin wrapper around prepare.py next to this file, which does the work and documents the options.
# Usage: bash recipes/iwslt14_de_en/prepare.sh SRC OUT [--bpe-tokens N] [--bpe sentencepiece]
#        [--codes FILE] [--workers N] [--no-binarize]
#   SRC: de-en.tgz, its extracted de-en/ folder, or an http(s) URL of it; OUT: output folder.
# Example: bash recipes/iwslt14_de_en/prepare.sh ~/Downloads/de-en.tgz work/iwslt14 --workers 4
# Python: $PYTHON if set, else the repository's .venv/bin/python if present, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../python.sh"
exec "$PYTHON" "$here/prepare.py" "$@"
