"""The text rules of fairseq's prepare-iwslt14.sh written in Python: Moses tokenization
(sacremoses, patched like ``tokenizer.perl``), ``lowercase.perl``, ``clean-corpus-n.perl`` and
the XML/tag clean-up of the training and test files. :mod:`.iwslt14_prepare` runs the pipeline."""

from __future__ import annotations

import re
import shutil

from sacremoses import MosesTokenizer

SRC_LANG, TGT_LANG = "de", "en"


DROP_TAGS = ("<url>", "<talkid>", "<keywords>")  # grep -v


STRIP_TAGS = ("<title>", "</title>", "<description>", "</description>")  # sed s///g, this order


# Perl's \s on Unicode strings is Python's \s without the four separators U+001C..U+001F.
PERL_SPACE = r"[^\S\x1c-\x1f]"


_PERL_SPACES_RE = re.compile(PERL_SPACE + "+")


_PERL_BLANK_RE = re.compile(PERL_SPACE + "*")


_INFO_SEPARATORS_RE = re.compile(r"[\x1c-\x1f]")


# GNU sed's \s (C locale) in the seg-extraction commands.
_SEG_OPEN_RE = re.compile(r'<seg id="[0-9]*">[ \t\n\r\f\v]*')


_SEG_CLOSE_RE = re.compile(r"[ \t\n\r\f\v]*</seg>[ \t\n\r\f\v]*")


class PrepareError(Exception):
    """A problem with the input or a step; main() prints it as one line and exits 2."""


def read_lines(path):
    """Lines of a UTF-8 file split on '\\n' only (like grep/sed/perl), without the newlines."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError("%s is not UTF-8 (byte %d): %s" % (path, e.start, e.reason)) from None
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def concat_files(paths, out_path):
    with open(out_path, "wb") as out:
        for p in paths:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)


class PerlMosesTokenizer(MosesTokenizer):
    """sacremoses' MosesTokenizer with the remaining differences to tokenizer.perl removed.

    * tokenizer.perl always splits the final period off the last word ("u.s." -> "u.s ."); the
      sacremoses port applies the non-breaking-prefix tests to the last word too ("u.s.").
      The word loop below is tokenizer.perl's: split on single spaces, keep empty fields in the
      middle (they make the "next word is lowercase" test fail as in Perl), drop trailing ones.
    * Lines that are empty or whitespace only are passed through unchanged (tokenizer.perl prints
      them as they are).
    * U+001C..U+001F are junk (deleted) but not whitespace in Perl; Python's \\s counts them as
      spaces, so they are deleted before sacremoses sees them.
    """

    _ENDS_WITH_PERIOD = re.compile(r"(\S+)\.")
    _STARTS_WITH_DIGIT = re.compile(r"[0-9]")

    def __init__(self, lang):
        super().__init__(lang=lang)
        self._numeric_only = set(self.NUMERIC_ONLY_PREFIXES)
        self._nonbreaking = set(self.NONBREAKING_PREFIXES) - self._numeric_only
        self._lower = set(self.IsLower)
        self._alpha = set(self.IsAlpha)

    def handles_nonbreaking_prefixes(self, text):
        words = text.split(" ")
        while words and words[-1] == "":
            words.pop()
        last = len(words) - 1
        for i, word in enumerate(words):
            m = self._ENDS_WITH_PERIOD.fullmatch(word)
            if not m:
                continue
            pre = m.group(1)
            nxt = words[i + 1] if i < last else ""
            if i == last:
                words[i] = pre + " ."
            elif (
                ("." in pre and any(c in self._alpha for c in pre))
                or pre in self._nonbreaking
                or (nxt and nxt[0] in self._lower)
            ):
                pass
            elif pre in self._numeric_only and self._STARTS_WITH_DIGIT.match(nxt):
                pass
            else:
                words[i] = pre + " ."
        return " ".join(words)

    def tokenize_line(self, line):
        if _PERL_BLANK_RE.fullmatch(line):
            return line
        line = _INFO_SEPARATORS_RE.sub("", line)
        return self.tokenize(line, escape=True, return_str=True)


_TOKENIZERS = {}


def _tokenizer(lang):
    if lang not in _TOKENIZERS:
        _TOKENIZERS[lang] = PerlMosesTokenizer(lang)
    return _TOKENIZERS[lang]


def _tokenize_chunk(args):
    lang, lines = args
    tok = _tokenizer(lang)
    return [tok.tokenize_line(line) for line in lines]


def moses_tokenize(lines, lang, workers=1):
    """tokenizer.perl -l LANG (escaping on) over a list of lines; order kept."""
    lines = list(lines)
    if workers <= 1 or len(lines) < 4000:
        return _tokenize_chunk((lang, lines))
    import multiprocessing

    size = 2000
    chunks = [(lang, lines[i:i + size]) for i in range(0, len(lines), size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        out = []
        for part in pool.imap(_tokenize_chunk, chunks):
            out.extend(part)
    return out


def perl_lc(line):
    """lowercase.perl (Perl lc): Python's lower() except the context rule for a final sigma."""
    if "\u03a3" in line:
        return "".join(c.lower() for c in line)
    return line.lower()


def _normalize_clean(line, factored):
    if not factored:
        line = line.replace("|", "")
    line = _PERL_SPACES_RE.sub(" ", line)
    if line.startswith(" "):
        line = line[1:]
    if line.endswith(" "):
        line = line[:-1]
    return line


def clean_corpus(src_lines, tgt_lines, ratio=1.5, min_len=1, max_len=175, max_word_length=1000):
    """clean-corpus-n.perl -ratio RATIO corpus src tgt out MIN MAX, on two lists of lines.

    Both lines of a pair get '|' removed (unless the first pair has one: factored corpus),
    whitespace runs -> one space, one leading/trailing space removed; the pair is dropped if a side
    is empty, has fewer than MIN or more than MAX space-separated words, if either word-count
    ratio exceeds RATIO, or if a side has a word longer than max_word_length characters.
    Returns (kept_src, kept_tgt, stats) where stats counts the reasons.
    """
    if len(src_lines) != len(tgt_lines):
        raise PrepareError(
            "clean-corpus: the two sides differ in length (%d %s lines, %d %s lines)"
            % (len(src_lines), SRC_LANG, len(tgt_lines), TGT_LANG)
        )
    factored = bool(src_lines) and ("|" in src_lines[0] or "|" in tgt_lines[0])
    long_word = re.compile(r"(?:[^\s|]|[\x1c-\x1f]){%d}" % (max_word_length + 1))  # Perl [^\s\|]
    blank_factor = re.compile(r"[ |]\|")
    out_src, out_tgt = [], []
    stats = {"in": len(src_lines), "empty": 0, "length": 0, "ratio": 0, "long_word": 0}
    for n, (f, e) in enumerate(zip(src_lines, tgt_lines), 1):
        e = _normalize_clean(e, factored)
        f = _normalize_clean(f, factored)
        if f == "" or e == "":
            stats["empty"] += 1
            continue
        ec = len(e.split(" "))
        fc = len(f.split(" "))
        if ec > max_len or fc > max_len or ec < min_len or fc < min_len:
            stats["length"] += 1
            continue
        if ec / fc > ratio or fc / ec > ratio:
            stats["ratio"] += 1
            continue
        if long_word.search(e) or long_word.search(f):
            stats["long_word"] += 1
            continue
        if blank_factor.search(f) or blank_factor.search(e):
            raise PrepareError("clean-corpus: there is a blank factor on line %d" % n)
        out_src.append(f)
        out_tgt.append(e)
    stats["out"] = len(out_src)
    return out_src, out_tgt, stats


def filter_train_tags(lines):
    """grep -v '<url>' | grep -v '<talkid>' | grep -v '<keywords>' | sed <title> etc. away."""
    out = []
    for line in lines:
        if any(t in line for t in DROP_TAGS):
            continue
        for t in STRIP_TAGS:
            line = line.replace(t, "")
        out.append(line)
    return out


def extract_segments(lines):
    """grep '<seg id' | sed seg tags and surrounding spaces away | sed s/’/'/g."""
    out = []
    for line in lines:
        if "<seg id" not in line:
            continue
        line = _SEG_OPEN_RE.sub("", line)
        line = _SEG_CLOSE_RE.sub("", line)
        out.append(line.replace("\u2019", "'"))
    return out
