"""The IWSLT'14 De-En recipe (recipes/iwslt14_de_en/prepare.py) against fairseq's real output.

Reference data (data/iwslt14/SOURCES.md, shipped in the repository; a folder laid out like the
workplace's shared/data can be given with IWSLT14_SHARED_DATA): the raw dev/test XML of fairseq's
de-en.tgz, and what fairseq's prepare-iwslt14.sh (Moses perl + subword-nmt) made of it. The
shipped files are unpacked into a temporary folder (fixture ``ref``) that is removed when the
module's tests are done. The dev/test path is compared with fairseq's output line for line and
byte for byte. The train path is checked on a small tarball in the official layout built here
from real IWSLT'14 training sentences.
"""

import gzip
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "iwslt14_de_en"
TEST_SETS = ["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
             "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012"]
TEST_SIZES = [887, 1165, 1565, 1433, 1700]  # SOURCES.md: <seg id count per file


def unpack_shipped(dest: Path) -> Path:
    """data/iwslt14/*.gz -> the shared/data layout (fairseq's per-file tmp/IWSLT14.* outputs
    are the consecutive slices of its tmp/test.L, in TEST_SETS order)."""
    src = REPO / "data" / "iwslt14"

    def put(name, rel):
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(src / name, "rb") as f:
            path.write_bytes(f.read())
        return path

    for xml in src.glob("IWSLT14.*.xml.gz"):
        put(xml.name, Path("iwslt14-orig/de-en") / xml.name[:-3])
    put("code.gz", "iwslt14.tokenized.de-en/code")
    for lang in ("de", "en"):
        put(f"test.bpe.{lang}.gz", f"iwslt14.tokenized.de-en/test.{lang}")
        tok = put(f"test.tok.{lang}.gz", f"iwslt14.tokenized.de-en/tmp/test.{lang}")
        put(f"train-sample.tok.{lang}.gz", f"iwslt14-train-sample/derived/train.tok.{lang}")
        lines, start = tok.read_bytes().splitlines(keepends=True), 0
        for name, size in zip(TEST_SETS, TEST_SIZES):
            (tok.parent / f"{name}.de-en.{lang}").write_bytes(b"".join(lines[start:start + size]))
            start += size
    return dest


SHARED_DATA = os.environ.get("IWSLT14_SHARED_DATA")
SHIPPED = REPO / "data" / "iwslt14"
if SHARED_DATA:
    _root = Path(SHARED_DATA)
    HAVE_DATA = all((_root / d).is_dir() for d in (
        "iwslt14-orig/de-en", "iwslt14.tokenized.de-en", "iwslt14-train-sample/derived"))
    # shared/data also holds fairseq's valid split (the repository ships the test split only)
    BPE_SPLITS = [s for s in ("test", "valid")
                  if (_root / "iwslt14.tokenized.de-en" / "tmp" / (s + ".de")).exists()]
else:
    HAVE_DATA = all((SHIPPED / name).exists() for name in (
        "code.gz", "test.bpe.de.gz", "test.bpe.en.gz", "test.tok.de.gz", "test.tok.en.gz",
        "train-sample.tok.de.gz", "train-sample.tok.en.gz")) and any(
        SHIPPED.glob("IWSLT14.*.xml.gz"))
    BPE_SPLITS = ["test"]
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="IWSLT'14 reference data not found under %s" % (SHARED_DATA or SHIPPED))


class Reference:
    """The reference folders: fairseq's de-en.tgz XML (``orig``), what fairseq's
    prepare-iwslt14.sh made of it (``fairseq_out``) and the tokenized train sample."""

    def __init__(self, root: Path):
        self.orig = root / "iwslt14-orig" / "de-en"
        self.fairseq_out = root / "iwslt14.tokenized.de-en"
        self.train_sample = root / "iwslt14-train-sample" / "derived"


@pytest.fixture(scope="module")
def ref():
    """IWSLT14_SHARED_DATA as it is, or the shipped files unpacked into a temporary folder that
    is removed when the module's tests are done."""
    if SHARED_DATA:
        yield Reference(Path(SHARED_DATA))
        return
    with tempfile.TemporaryDirectory(prefix="iwslt14-reference-") as tmp:
        yield Reference(unpack_shipped(Path(tmp)))


def assert_same_lines(ours, theirs, what):
    """Line for line: the number of lines and every line equal (the message names the first
    lines that differ)."""
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert len(ours) == len(theirs) and not differ, (
        "%s: %d lines (fairseq %d), %d differ; first: %s" % (
            what, len(ours), len(theirs), len(differ),
            [(i + 1, ours[i], theirs[i]) for i in differ[:3]]))


def load_recipe():
    from fairseq_xsam.recipes import iwslt14_prepare

    return iwslt14_prepare


P = load_recipe()


def lines_of(path):
    text = Path(path).read_bytes().decode("utf-8")
    assert text == "" or text.endswith("\n"), path
    return text.split("\n")[:-1] if text else []


# --------------------------------------------------------------------------- unit rules


def test_last_word_period_is_split_like_tokenizer_perl():
    # tokenizer.perl: "split last words independently as they are unlikely to be
    # non-breaking prefixes"; inside the sentence "u.s." stays (it has a dot and letters).
    tok = P.PerlMosesTokenizer("en")
    assert tok.tokenize_line("I moved to the U.S.") == "I moved to the U.S ."
    assert tok.tokenize_line("The U.S. economy grew.") == "The U.S. economy grew ."
    assert tok.tokenize_line("It's Dr. Smith") == "It &apos;s Dr. Smith"
    assert tok.tokenize_line("   ") == "   "  # blank lines pass through, as in Perl


def test_lowercase_keeps_perl_lc_sigma():
    # Perl lc maps every capital sigma to U+03C3; Python's str.lower() uses U+03C2 word-finally.
    assert P.perl_lc("ΟΔΟΣ Straße") == "οδοσ straße"
    assert P.perl_lc("Hello World") == "hello world"


def reference_clean(src, tgt, ratio=1.5, lo=1, hi=175):
    """clean-corpus-n.perl's rule written independently: a list of kept indices."""
    kept = []
    for i, (f, e) in enumerate(zip(src, tgt)):
        fw, ew = f.split(), e.split()
        if not fw or not ew:
            continue
        if not (lo <= len(fw) <= hi and lo <= len(ew) <= hi):
            continue
        if len(fw) > ratio * len(ew) or len(ew) > ratio * len(fw):
            continue
        kept.append(i)
    return kept


def test_clean_corpus_rules():
    src = ["a b c", "", "a  b\t", "x " * 175, "x " * 176, "a b", "a b c d", "a", "  "]
    tgt = ["d e f", "x", "c d", "y " * 175, "y " * 176, "c d e", "a b", "b", "z"]
    out_src, out_tgt, stats = P.clean_corpus(src, tgt)
    want = reference_clean(src, tgt)
    assert want == [0, 2, 3, 5, 7]  # ratio 3/2 = 1.5 is kept, 4/2 = 2 dropped; 176 dropped
    assert out_src == [" ".join(src[i].split()) for i in want]
    assert out_tgt == [" ".join(tgt[i].split()) for i in want]
    assert (stats["empty"], stats["length"], stats["ratio"]) == (2, 1, 1)
    with pytest.raises(P.PrepareError, match="differ in length"):
        P.clean_corpus(["a"], [])


# --------------------------------------------------------------------------- Test 1: dev/test XML


@pytest.fixture(scope="module")
def xml_output(ref, tmp_path_factory):
    """The XML -> tokenized, lowercased path over the real files, computed once (2 workers)."""
    tmp = tmp_path_factory.mktemp("iwslt_xml")
    test = P.prepare_test_sets(str(ref.orig), str(tmp), workers=2)
    return tmp, test


@needs_data
def test_xml_path_matches_fairseq_tmp_test_byte_for_byte(ref, xml_output):
    """README: "its tokenized output is fairseq's byte for byte (6,750/6,750 lines per
    language)": every line of tmp/test.L and of the five per-file outputs, and the files' bytes."""
    tmp, test = xml_output
    for lang in ("de", "en"):
        ref_file = ref.fairseq_out / "tmp" / ("test." + lang)
        ours = lines_of(tmp / ("test." + lang))
        assert ours == test[lang]
        assert len(ours) == 6750
        assert_same_lines(ours, lines_of(ref_file), "tmp/test." + lang)
        assert (tmp / ("test." + lang)).read_bytes() == ref_file.read_bytes()
        offset = 0
        for name, n in zip(TEST_SETS, TEST_SIZES):
            file = "%s.de-en.%s" % (name, lang)
            part = lines_of(tmp / file)
            assert len(part) == n
            assert part == ours[offset:offset + n]  # test = cat of the five, in fairseq's order
            assert_same_lines(part, lines_of(ref.fairseq_out / "tmp" / file), "tmp/" + file)
            assert (tmp / file).read_bytes() == (ref.fairseq_out / "tmp" / file).read_bytes()
            offset += n


@needs_data
def test_parallel_tokenization_keeps_order(ref, xml_output):
    tmp, test = xml_output
    segs = []
    for name in TEST_SETS:
        segs += P.extract_segments(lines_of(ref.orig / ("%s.de-en.de.xml" % name)))
    assert len(segs) == 6750
    parallel = P.moses_tokenize(segs, "de", workers=2)  # chunks of 2000 lines over 2 processes
    assert [P.perl_lc(x) for x in parallel] == test["de"]


# --------------------------------------------------------------------------- Test 2: BPE


@needs_data
# the repository ships fairseq's test split; IWSLT14_SHARED_DATA=shared/data adds valid
@pytest.mark.parametrize("split", BPE_SPLITS)
def test_shipped_codes_reproduce_fairseq_bpe(ref, tmp_path, split):
    for lang in ("de", "en"):
        out = tmp_path / ("%s.%s" % (split, lang))
        P.apply_bpe_file(str(ref.fairseq_out / "code"), str(ref.fairseq_out / "tmp" / out.name),
                         str(out))
        assert out.read_bytes() == (ref.fairseq_out / out.name).read_bytes()


# --------------------------------------------------------------------------- Test 3: the train path

N_REAL = 1100
TALK_LEN = 120
# Pairs built to test clean-corpus-n: letters only, so tokenization leaves them alone.
LONG_176 = ("langwortx " * 176, "longwordx " * 176)         # > 175 tokens: dropped
LONG_175 = ("grenzwortx " * 175, "limitwordx " * 175)       # exactly 175: kept
RATIO_BAD = ("verhaeltnisx eins zwei", "ratiox one two three four")  # 5/3 > 1.5: dropped
RATIO_OK = ("gleichx zwei", "equalx two three")             # 3/2 = 1.5: kept
EMPTY_DE = ("", "emptysidex has a german side that is empty")  # empty side: dropped
BLANK_DE = ("   ", "blanksidex whitespace only")             # whitespace only: dropped
SPECIAL = [LONG_176, LONG_175, RATIO_BAD, RATIO_OK, EMPTY_DE, BLANK_DE]


def talk_header(k):
    """The TED tag lines of one talk in train.tags.de-en.{de,en} (same count on both sides)."""
    de = ["<url>http://www.ted.com/talks/lang/de/speaker_%d_talk.html</url>" % k,
          "<keywords>talks, science, technology, culture</keywords>",
          "<talkid>%d</talkid>" % (1000 + k),
          "<title>Sprecherin Nummer %d spricht über die Wissenschaft</title>" % k,
          "<description>TED Talk Untertitel und Transkript: Ein Vortrag über Neugier</description>"]
    en = ["<url>http://www.ted.com/talks/speaker_%d_talk.html</url>" % k,
          "<keywords>talks, science, technology, culture</keywords>",
          "<talkid>%d</talkid>" % (1000 + k),
          "<title>Speaker number %d talks about science</title>" % k,
          "<description>TED Talk Subtitles and Transcript: A talk about curiosity</description>"]
    return de, en


@pytest.fixture(scope="module")
def train_corpus(ref, tmp_path_factory):
    """A de-en.tgz in the official layout: TED-tagged train.tags from real sentences + real XML."""
    from sacremoses import MosesDetokenizer

    root = tmp_path_factory.mktemp("iwslt_src")
    folder = root / "de-en"
    folder.mkdir()
    real = {}
    for lang in ("de", "en"):
        detok = MosesDetokenizer(lang)
        toks = lines_of(ref.train_sample / ("train.tok." + lang))[:N_REAL]
        real[lang] = [detok.detokenize(t.split()) for t in toks]
    real_pairs = [(d[:1].upper() + d[1:], e[:1].upper() + e[1:]) for d, e in zip(real["de"], real["en"])]
    text_pairs = real_pairs[:300] + SPECIAL + real_pairs[300:]
    de, en, n_tags, titles = [], [], 0, []
    for i, (d, e) in enumerate(text_pairs):
        if i % TALK_LEN == 0:
            hd, he = talk_header(i // TALK_LEN)
            de += hd
            en += he
            n_tags += 3  # url, keywords, talkid lines; title and description stay as text
            titles.append((hd[3][len("<title>"):-len("</title>")], he[3][len("<title>"):-len("</title>")]))
        de.append(d)
        en.append(e)
    (folder / "train.tags.de-en.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    (folder / "train.tags.de-en.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    for xml in ref.orig.glob("IWSLT14.TED*.xml"):
        shutil.copyfile(xml, folder / xml.name)
    tgz = root / "de-en.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="de-en")
    return {"tgz": tgz, "folder": folder, "n_lines": len(de), "n_tags": n_tags, "titles": titles}


def run_prepare(src, out, *options):
    r = subprocess.run(["bash", str(RECIPE / "prepare.sh"), str(src), str(out), *options],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def tarball_run(train_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("iwslt_out_tgz")
    log = run_prepare(train_corpus["tgz"], out, "--bpe-tokens", "500")
    return out, log


def read_mmap_idx(path):
    """fairseq 0.12's MMapIndexedDataset .idx: magic (9 bytes), <Q version, <B dtype, <Q count, int32 sizes."""
    data = Path(path).read_bytes()
    assert data[:9] == b"MMIDIDX\x00\x00"
    (n,) = struct.unpack("<Q", data[18:26])
    return list(struct.unpack("<%di" % n, data[26:26 + 4 * n]))


@needs_data
def test_train_path_end_to_end(train_corpus, tarball_run):
    out, log = tarball_run
    prep = out / "iwslt14.tokenized.de-en"
    tmp = prep / "tmp"
    print(log)
    assert "clean-corpus-n" in log and "fairseq-preprocess" in log

    # 1. tag lines: <url>, <keywords>, <talkid> gone; <title>/<description> text kept, tags removed.
    tok = {l: lines_of(tmp / ("train.tags.de-en.tok." + l)) for l in ("de", "en")}
    for lang in ("de", "en"):
        assert len(tok[lang]) == train_corpus["n_lines"] - train_corpus["n_tags"]
        joined = "\n".join(tok[lang])
        for gone in ("speaker_", "talkid", "technology , culture", "&lt;", "&gt;"):
            assert gone not in joined, gone
    for title_de, title_en in train_corpus["titles"]:
        assert title_de in tok["de"] and title_en in tok["en"]  # letters only: tokens unchanged

    # 2. clean-corpus-n + lowercase, recomputed independently from the tokenized files.
    keep = reference_clean(tok["de"], tok["en"])
    cleaned = {l: [" ".join(tok[l][i].split()).lower() for i in keep] for l in ("de", "en")}
    corpus = {l: lines_of(tmp / ("train.tags.de-en." + l)) for l in ("de", "en")}
    assert corpus == cleaned
    flat = "\n".join(corpus["de"] + corpus["en"])
    for marker in ("langwortx", "verhaeltnisx", "emptysidex", "blanksidex"):
        assert marker not in flat, marker
    for marker, n in (("grenzwortx", 175), ("limitwordx", 175), ("gleichx", 1), ("equalx", 1)):
        assert flat.count(marker) == n, marker
    assert len(keep) >= 0.98 * N_REAL  # real sentences of fairseq's train set survive cleaning

    # 3. valid = every 23rd cleaned line (awk NR%23==0), train = the rest; test = 6750 lines.
    for lang in ("de", "en"):
        valid = lines_of(tmp / ("valid." + lang))
        train = lines_of(tmp / ("train." + lang))
        assert valid == corpus[lang][22::23]
        assert train == [x for i, x in enumerate(corpus[lang]) if (i + 1) % 23]
        assert len(lines_of(tmp / ("test." + lang))) == 6750
        assert (tmp / "train.en-de").exists()
        for split in ("train", "valid", "test"):
            bpe = lines_of(prep / ("%s.%s" % (split, lang)))
            assert [x.replace("@@ ", "") for x in bpe] == lines_of(tmp / ("%s.%s" % (split, lang)))
    assert len(lines_of(prep / "code")) <= 501 and lines_of(prep / "code")[0].startswith("#version")

    # 4. data-bin: separate dictionaries built from train, and every split binarized line by line.
    databin = out / "data-bin" / "iwslt14.tokenized.de-en"
    for lang in ("de", "en"):
        words = {ln.split(" ")[0] for ln in lines_of(databin / ("dict.%s.txt" % lang))}
        words = {w for w in words if not w.startswith("madeupword")}
        train_words = {w for x in lines_of(prep / ("train." + lang)) for w in x.split()}
        assert words == train_words
        for split in ("train", "valid", "test"):
            stem = databin / ("%s.de-en.%s" % (split, lang))
            assert Path(str(stem) + ".bin").stat().st_size > 0
            sizes = read_mmap_idx(Path(str(stem) + ".idx"))
            assert sizes == [len(x.split()) + 1 for x in lines_of(prep / ("%s.%s" % (split, lang)))]
    assert lines_of(databin / "dict.de.txt") != lines_of(databin / "dict.en.txt")


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "preprocess.log" and "orig" not in p.relative_to(root).parts}


@needs_data
def test_folder_input_gives_identical_output(train_corpus, tarball_run, tmp_path):
    out_tgz, _ = tarball_run
    run_prepare(train_corpus["folder"], tmp_path, "--bpe-tokens", "500")
    a, b = all_files(out_tgz), all_files(tmp_path)
    assert len(a) > 40 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


@needs_data
def test_sentencepiece_option(train_corpus, tmp_path):
    # The parent of de-en/ is accepted as SRC as well.
    log = run_prepare(train_corpus["folder"].parent, tmp_path, "--bpe", "sentencepiece",
                      "--bpe-tokens", "400", "--no-binarize")
    prep = tmp_path / "iwslt14.tokenized.de-en"
    assert (prep / "spm.model").exists() and not (prep / "code").exists()
    assert not (tmp_path / "data-bin").exists() and "fairseq-preprocess" not in log
    pieces = set()
    for lang in ("de", "en"):
        for split in ("train", "valid", "test"):
            enc = lines_of(prep / ("%s.%s" % (split, lang)))
            plain = lines_of(prep / "tmp" / ("%s.%s" % (split, lang)))
            assert len(enc) == len(plain) > 0
            # identity normalisation: decoding the pieces gives the tokenized text back
            decoded = ["".join(x.split()).replace("\u2581", " ").strip() for x in enc]
            assert decoded == [x.strip() for x in plain]
            if split == "train":
                pieces |= {w for x in enc for w in x.split()}
    assert 50 < len(pieces) <= 400  # the train text uses only the model's pieces


@needs_data
def test_codes_option_reuses_fairseq_codes(ref, train_corpus, tmp_path):
    log = run_prepare(train_corpus["folder"], tmp_path, "--codes", str(ref.fairseq_out / "code"),
                      "--no-binarize")
    prep = tmp_path / "iwslt14.tokenized.de-en"
    assert "learn_bpe" not in log and "10000 merges" in log
    assert (prep / "code").read_bytes() == (ref.fairseq_out / "code").read_bytes()
    for lang in ("de", "en"):  # README: fairseq's BPE'd test set, byte for byte
        ours, theirs = prep / ("test." + lang), ref.fairseq_out / ("test." + lang)
        assert_same_lines(lines_of(ours), lines_of(theirs), "BPE'd test." + lang)
        assert ours.read_bytes() == theirs.read_bytes()


# --------------------------------------------------------------------------- Test 4: bad input


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        P.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


def test_missing_src(capsys, tmp_path):
    err = one_line_error(capsys, [str(tmp_path / "nope.tgz"), str(tmp_path / "out")])
    assert "SRC" in err and "does not exist" in err


@needs_data
def test_src_without_train_tags(ref, capsys, tmp_path):
    err = one_line_error(capsys, [str(ref.orig), str(tmp_path / "out")])
    assert "train.tags.de-en.de" in err and "train.tags.de-en.en" in err
    junk = tmp_path / "de-en.tgz"
    junk.write_text("not a tarball\n")
    err = one_line_error(capsys, [str(junk), str(tmp_path / "out")])
    assert "neither a folder nor a tar archive" in err


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_bpe_tokens_must_be_positive(capsys, tmp_path, value):
    err = one_line_error(capsys, [str(tmp_path), str(tmp_path / "out"), "--bpe-tokens", value])
    assert "--bpe-tokens" in err and ">= 1" in err


def test_codes_option_checks(capsys, tmp_path):
    err = one_line_error(capsys, [str(tmp_path), str(tmp_path / "o"), "--codes", str(tmp_path / "x")])
    assert "--codes" in err and "no such file" in err
    err = one_line_error(capsys, [str(tmp_path), str(tmp_path / "o"), "--bpe", "sentencepiece",
                                  "--codes", str(tmp_path)])
    assert "--codes" in err and "subword-nmt" in err


def test_wrapper_reports_errors_in_one_line(tmp_path):
    r = subprocess.run(["bash", str(RECIPE / "prepare.sh"), str(tmp_path / "missing"), str(tmp_path)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
