"""Prepare IWSLT'14 German-English the way fairseq's ``prepare-iwslt14.sh`` does, in Python.

This is fairseq's ``examples/translation/prepare-iwslt14.sh`` with the Moses perl scripts replaced
by Python code of the same behaviour (sacremoses for ``tokenizer.perl``, plus the rules of
``clean-corpus-n.perl`` and ``lowercase.perl`` written out here) and subword-nmt's Python API for
BPE; then ``fairseq-preprocess`` with separate German and English dictionaries, as fairseq's
translation README does.

Steps (file names as fairseq's script writes them, under ``OUT/iwslt14.tokenized.de-en/``):

1. ``train.tags.de-en.{de,en}``: drop lines containing ``<url>``, ``<talkid>``, ``<keywords>``;
   remove ``<title>``, ``</title>``, ``<description>``, ``</description>``; Moses-tokenize
   (escaping on, like ``tokenizer.perl`` without ``-no-escape``) -> ``tmp/train.tags.de-en.tok.L``;
   clean-corpus-n (ratio 1.5, 1 to 175 tokens, both sides) -> ``tmp/train.tags.de-en.clean.L``;
   lowercase -> ``tmp/train.tags.de-en.L``.
2. dev/test XML ``IWSLT14.TED*.L.xml``: the ``<seg id`` lines, seg tags and the spaces around them
   removed, U+2019 -> ``'``, tokenized, lowercased -> ``tmp/IWSLT14.*.de-en.L``.
3. ``tmp/valid.L`` = every 23rd line of the cleaned train corpus (awk ``NR%23==0``),
   ``tmp/train.L`` = the rest, ``tmp/test.L`` = dev2010, TEDX.dev2012, tst2010, tst2011, tst2012.
4. BPE: subword-nmt learns ``--bpe-tokens`` merges (default 10000) on ``tmp/train.en-de``
   (train.de then train.en) -> ``code``, or ``--codes FILE`` reuses existing codes; applied to
   train/valid/test -> ``{train,valid,test}.{de,en}``. ``--bpe sentencepiece`` instead trains a
   joint sentencepiece BPE model (``spm.model``, vocabulary ``--bpe-tokens``) and encodes with it.
5. ``fairseq-preprocess --source-lang de --target-lang en`` (separate dictionaries) ->
   ``OUT/data-bin/iwslt14.tokenized.de-en`` (skip with ``--no-binarize``).

Input SRC: the official ``de-en.tgz`` (extracted to ``OUT/orig/``), its extracted ``de-en/`` folder
(or a folder holding ``de-en/``), or an http(s) URL of the tarball (downloaded to ``OUT/orig/``).
The output is deterministic: the same input gives byte-identical files.

Example::

    bash recipes/iwslt14_de_en/prepare.sh ~/Downloads/de-en.tgz work/iwslt14 --workers 4
    fairseq-train work/iwslt14/data-bin/iwslt14.tokenized.de-en --arch transformer_iwslt_de_en ...
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request

from . import base
from .iwslt14_text import (  # noqa: F401  (read as prepare.NAME by the recipe and the tests)
    _INFO_SEPARATORS_RE,
    _PERL_BLANK_RE,
    _PERL_SPACES_RE,
    _SEG_CLOSE_RE,
    _SEG_OPEN_RE,
    _TOKENIZERS,
    DROP_TAGS,
    PERL_SPACE,
    SRC_LANG,
    STRIP_TAGS,
    TGT_LANG,
    PerlMosesTokenizer,
    PrepareError,
    _normalize_clean,
    _tokenize_chunk,
    _tokenizer,
    clean_corpus,
    concat_files,
    extract_segments,
    filter_train_tags,
    moses_tokenize,
    perl_lc,
    read_lines,
    write_lines,
)

LANGS = (SRC_LANG, TGT_LANG)


PAIR = "de-en"


PREP_NAME = "iwslt14.tokenized.de-en"


TRAIN_TAGS = "train.tags.de-en.{lang}"


# The order of fairseq's `cat` for the test set.
TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)


VALID_EVERY = 23


def log(msg):
    print(msg, flush=True)


def is_url(src):
    return re.match(r"https?://", src) is not None


def expected_files():
    names = [TRAIN_TAGS.format(lang=l) for l in LANGS]
    names += ["%s.%s.%s.xml" % (t, PAIR, l) for l in LANGS for t in TEST_SETS]
    return names


def missing_files(folder, need_train=True):
    names = expected_files() if need_train else expected_files()[2:]
    return [n for n in names if not os.path.isfile(os.path.join(folder, n))]


def _find_data_dir(root):
    """root itself, root/de-en, or the first folder below root holding train.tags.de-en.de."""
    for cand in (root, os.path.join(root, PAIR)):
        if os.path.isfile(os.path.join(cand, TRAIN_TAGS.format(lang=SRC_LANG))):
            return cand
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        if TRAIN_TAGS.format(lang=SRC_LANG) in filenames:
            return dirpath
    return os.path.join(root, PAIR) if os.path.isdir(os.path.join(root, PAIR)) else root


def download(url, orig_dir):
    os.makedirs(orig_dir, exist_ok=True)
    name = os.path.basename(url.split("?")[0]) or "de-en.tgz"
    dest = os.path.join(orig_dir, name)
    log("Downloading %s -> %s" % (url, dest))
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
    except (OSError, ValueError) as e:
        raise PrepareError("SRC %s: download failed: %s" % (url, e)) from None
    return dest


def resolve_source(src, out_dir):
    """Return the folder holding train.tags.de-en.* and the XML files (extracting a tarball)."""
    orig_dir = os.path.join(out_dir, "orig")
    if is_url(src):
        src = download(src, orig_dir)
    if not os.path.exists(src):
        raise PrepareError("SRC %s does not exist (give de-en.tgz, its de-en/ folder, or a URL)" % src)
    if os.path.isdir(src):
        folder = _find_data_dir(src)
    elif tarfile.is_tarfile(src):
        log("Extracting %s -> %s" % (src, orig_dir))
        os.makedirs(orig_dir, exist_ok=True)
        try:
            with tarfile.open(src, "r:*") as tar:
                tar.extractall(orig_dir, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise PrepareError("SRC %s: cannot extract: %s" % (src, e)) from None
        folder = _find_data_dir(orig_dir)
    else:
        raise PrepareError("SRC %s is neither a folder nor a tar archive (expected de-en.tgz)" % src)
    missing = missing_files(folder)
    if missing:
        raise PrepareError(
            "SRC %s lacks %s in %s (expected the official IWSLT'14 de-en.tgz layout)"
            % (src, ", ".join(missing), folder)
        )
    return folder


def prepare_train(data_dir, tmp_dir, workers=1):
    """train.tags -> tmp/train.tags.de-en.{tok,clean,}.L; returns the lowercased (de, en) lines."""
    tok = {}
    for lang in LANGS:
        name = TRAIN_TAGS.format(lang=lang)
        raw = read_lines(os.path.join(data_dir, name))
        text = filter_train_tags(raw)
        tok[lang] = moses_tokenize(text, lang, workers)
        write_lines(os.path.join(tmp_dir, "train.tags.%s.tok.%s" % (PAIR, lang)), tok[lang])
        log(
            "%s: %d lines, %d tag lines dropped, %d tokenized"
            % (name, len(raw), len(raw) - len(text), len(tok[lang]))
        )
    src, tgt, st = clean_corpus(tok[SRC_LANG], tok[TGT_LANG], ratio=1.5, min_len=1, max_len=175)
    log(
        "clean-corpus-n (ratio 1.5, 1-175 tokens): %d pairs in, %d kept; dropped %d empty, "
        "%d by length, %d by ratio, %d with a word > 1000 chars"
        % (st["in"], st["out"], st["empty"], st["length"], st["ratio"], st["long_word"])
    )
    cleaned = {SRC_LANG: src, TGT_LANG: tgt}
    out = {}
    for lang in LANGS:
        write_lines(os.path.join(tmp_dir, "train.tags.%s.clean.%s" % (PAIR, lang)), cleaned[lang])
        out[lang] = [perl_lc(line) for line in cleaned[lang]]
        write_lines(os.path.join(tmp_dir, "train.tags.%s.%s" % (PAIR, lang)), out[lang])
    return out


def prepare_test_sets(data_dir, tmp_dir, workers=1):
    """Every IWSLT14.TED*.L.xml -> tmp/IWSLT14.*.de-en.L, and tmp/test.L (the five, in order).

    Returns {lang: test lines}.
    """
    missing = missing_files(data_dir, need_train=False)
    if missing:
        raise PrepareError("%s lacks %s" % (data_dir, ", ".join(missing)))
    test = {}
    for lang in LANGS:
        for path in sorted(glob.glob(os.path.join(data_dir, "IWSLT14.TED*.%s.xml" % lang))):
            name = os.path.basename(path)[: -len(".xml")]
            segs = extract_segments(read_lines(path))
            lines = [perl_lc(t) for t in moses_tokenize(segs, lang, workers)]
            write_lines(os.path.join(tmp_dir, name), lines)
            log("%s: %d segments" % (os.path.basename(path), len(lines)))
        parts = [os.path.join(tmp_dir, "%s.%s.%s" % (t, PAIR, lang)) for t in TEST_SETS]
        concat_files(parts, os.path.join(tmp_dir, "test.%s" % lang))
        test[lang] = read_lines(os.path.join(tmp_dir, "test.%s" % lang))
    if len(test[SRC_LANG]) != len(test[TGT_LANG]):
        raise PrepareError(
            "test: %d %s lines but %d %s lines"
            % (len(test[SRC_LANG]), SRC_LANG, len(test[TGT_LANG]), TGT_LANG)
        )
    return test


def split_train_valid(lines, every=VALID_EVERY):
    """awk NR%every==0 -> valid, the rest -> train."""
    valid = [l for i, l in enumerate(lines, 1) if i % every == 0]
    train = [l for i, l in enumerate(lines, 1) if i % every != 0]
    return train, valid


def learn_bpe_codes(train_path, codes_path, merges):
    """subword-nmt learn-bpe -s MERGES < train_path > codes_path (default min frequency 2)."""
    from subword_nmt.learn_bpe import learn_bpe

    with open(train_path, encoding="utf-8") as fin, open(codes_path, "w", encoding="utf-8") as fout:
        learn_bpe(fin, fout, merges)
    return len(read_lines(codes_path)) - 1


def apply_bpe_file(codes_path, in_path, out_path):
    """subword-nmt apply-bpe -c codes_path < in_path > out_path."""
    from subword_nmt.apply_bpe import BPE

    with open(codes_path, encoding="utf-8") as codes:
        bpe = BPE(codes)
    with open(in_path, encoding="utf-8") as fin, open(out_path, "w", encoding="utf-8") as fout:
        for line in fin:
            fout.write(bpe.process_line(line))


def train_sentencepiece(train_path, model_prefix, vocab_size, workers=1):
    try:
        return base.train_sentencepiece(train_path, model_prefix, vocab_size, workers)
    except ValueError as e:
        raise PrepareError(str(e).replace("vocabulary", "--bpe-tokens")) from None


def apply_sentencepiece_file(model_path, in_path, out_path):
    write_lines(out_path, base.encode_sentencepiece(model_path, read_lines(in_path)))


def binarize(prep_dir, dest_dir, workers=1):
    """fairseq-preprocess --source-lang de --target-lang en, separate dictionaries."""
    cmd = base.preprocess_command(
        SRC_LANG, TGT_LANG, os.path.join(prep_dir, "train"), os.path.join(prep_dir, "valid"),
        [os.path.join(prep_dir, "test")], dest_dir, workers)
    log("fairseq-preprocess -> %s" % dest_dir)
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise PrepareError("fairseq-preprocess could not start: %s" % e) from None
    sys.stdout.write(r.stdout)
    sys.stdout.flush()
    if r.returncode != 0:
        tail = [l for l in r.stdout.strip().splitlines() if l.strip()][-1:] or ["(no output)"]
        raise PrepareError(
            "fairseq-preprocess failed (exit %d): %s; use --no-binarize to stop before it"
            % (r.returncode, tail[0])
        )


def run(src, out_dir, bpe="subword-nmt", bpe_tokens=10000, codes=None, workers=1, binarize_data=True):
    """The whole pipeline; returns the path of the text output folder."""
    if codes is not None and bpe != "subword-nmt":
        raise PrepareError("--codes works with --bpe subword-nmt only")
    if codes is not None and not os.path.isfile(codes):
        raise PrepareError("--codes %s: no such file" % codes)
    codes_bytes = open(codes, "rb").read() if codes is not None else None  # may be OUT's own code
    data_dir = resolve_source(src, out_dir)
    prep = os.path.join(out_dir, PREP_NAME)
    tmp = os.path.join(prep, "tmp")
    os.makedirs(tmp, exist_ok=True)
    log("Source: %s" % data_dir)

    log("pre-processing train data...")
    train_tags = prepare_train(data_dir, tmp, workers)
    log("pre-processing valid/test data...")
    test = prepare_test_sets(data_dir, tmp, workers)

    log("creating train, valid, test...")
    for lang in LANGS:
        train, valid = split_train_valid(train_tags[lang])
        write_lines(os.path.join(tmp, "train.%s" % lang), train)
        write_lines(os.path.join(tmp, "valid.%s" % lang), valid)
    log(
        "train %d, valid %d (awk NR%%%d==0), test %d pairs"
        % (len(train), len(valid), VALID_EVERY, len(test[SRC_LANG]))
    )
    joint = os.path.join(tmp, "train.en-de")
    concat_files([os.path.join(tmp, "train.%s" % l) for l in LANGS], joint)

    for stale in ("code", "spm.model", "spm.vocab"):
        if os.path.exists(os.path.join(prep, stale)):
            os.remove(os.path.join(prep, stale))
    splits = ["%s.%s" % (s, l) for l in LANGS for s in ("train", "valid", "test")]
    if bpe == "subword-nmt":
        code = os.path.join(prep, "code")
        if codes is not None:
            with open(code, "wb") as f:
                f.write(codes_bytes)
            log("BPE: using the codes in %s (%d merges)" % (codes, len(read_lines(code)) - 1))
        else:
            log("learn_bpe (%d merges) on %s..." % (bpe_tokens, joint))
            learned = learn_bpe_codes(joint, code, bpe_tokens)
            log("learned %d merges -> %s" % (learned, code))
        for f in splits:
            apply_bpe_file(code, os.path.join(tmp, f), os.path.join(prep, f))
            log("apply_bpe to %s" % f)
    else:
        log("sentencepiece BPE (vocabulary %d) on %s..." % (bpe_tokens, joint))
        model = train_sentencepiece(joint, os.path.join(prep, "spm"), bpe_tokens, workers)
        for f in splits:
            apply_sentencepiece_file(model, os.path.join(tmp, f), os.path.join(prep, f))
            log("sentencepiece encode %s" % f)

    if binarize_data:
        binarize(prep, os.path.join(out_dir, "data-bin", PREP_NAME), workers)
    log("Done: %s" % prep)
    return prep


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (no usage block)."""

    def error(self, message):
        self.exit(2, "%s: error: %s\n" % (self.prog, message))


def positive_int():
    def parse(value):
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError("must be an integer >= 1, got %r" % value) from None
        if n < 1:
            raise argparse.ArgumentTypeError("must be an integer >= 1, got %d" % n)
        return n

    return parse


def build_parser():
    p = _OneLineParser(
        prog="prepare.sh",
        description="IWSLT'14 De-En as fairseq's prepare-iwslt14.sh builds it (Python port), "
        "then fairseq-preprocess.",
    )
    p.add_argument("src", metavar="SRC",
                   help="de-en.tgz, its extracted de-en/ folder, or an http(s) URL")
    p.add_argument("out", metavar="OUT", help="output folder (iwslt14.tokenized.de-en/, data-bin/ inside)")
    p.add_argument("--bpe", choices=["subword-nmt", "sentencepiece"], default="subword-nmt",
                   help="subword-nmt (fairseq's recipe, default) or a joint sentencepiece BPE model")
    p.add_argument("--bpe-tokens", type=positive_int(), default=10000, metavar="N",
                   help="BPE merges to learn (subword-nmt) or vocabulary size (sentencepiece); "
                   ">= 1, default 10000")
    p.add_argument("--codes", metavar="FILE", default=None,
                   help="apply these subword-nmt codes instead of learning them "
                   "(e.g. fairseq's shipped `code`)")
    p.add_argument("--workers", type=positive_int(), default=1, metavar="N",
                   help="processes for tokenization and fairseq-preprocess (>= 1, default 1)")
    p.add_argument("--no-binarize", action="store_true", help="stop after the text files (no fairseq-preprocess)")
    return p  # fmt: skip


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(
            args.src,
            args.out,
            bpe=args.bpe,
            bpe_tokens=args.bpe_tokens,
            codes=args.codes,
            workers=args.workers,
            binarize_data=not args.no_binarize,
        )
    except PrepareError as e:
        parser.exit(2, "%s: error: %s\n" % (parser.prog, e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
