"""sacreBLEU statistics over committed hypotheses: the paired bootstrap of each pair of
optimizers per seed and test set, and the rescoring that must reproduce bleu.json."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from .runs import ROOT, ReportError, test_sets

PAIRS = (("xsam", "sam"), ("xsam", "adamw"))


def pairs(labels) -> List[tuple]:
    """PAIRS, then each variant of XSAM (a label ``xsam_<name>``, e.g. ``xsam_auto``)
    and the fixed-α baseline (``fixed`` or ``fixed_<name>``: XSAM's direction without the
    search) against default XSAM, then each variant of SAM (``sam_<name>``, e.g. ``sam_k3``)
    against default SAM and the XSAM variant of the same name against it (``xsam_k3`` vs
    ``sam_k3``: the two optimizers compared under the same change)."""
    variants = sorted(lab for lab in labels if lab.startswith("xsam_")) + sorted(
        lab for lab in labels if lab == "fixed" or lab.startswith("fixed_"))
    sam_variants = sorted(lab for lab in labels if lab.startswith("sam_"))
    return (list(PAIRS) + [(lab, "xsam") for lab in variants]
            + [(lab, "sam") for lab in sam_variants]
            + [("x" + lab, lab) for lab in sam_variants if "x" + lab in labels])


def read_references(score: dict, refs_dir: Optional[Path]) -> List[str]:
    """The raw references a bleu.json entry was scored against: its reference_file (relative to
    the repository, or its name in refs_dir), the first ``references`` lines."""
    name = Path(score["reference_file"]).name
    path = refs_dir / name if refs_dir else ROOT / score["reference_file"]
    if not path.is_file():
        raise ReportError(f"--refs: {path} not found (the references of {name})")
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = read_lines(f.read())
    else:
        lines = read_lines(path.read_text(encoding="utf-8"))
    return lines[:int(score["references"])]


def read_lines(text: str) -> List[str]:
    """The lines of a file written one sentence per line, each ending in a newline (an empty
    translation is an empty line, also the last one)."""
    return (text[:-1] if text.endswith("\n") else text).split("\n") if text else []


def read_hypotheses(run: dict, name: str) -> List[str]:
    path = run["run"] / "eval" / run["scores"][name].get("hypothesis_file", f"{name}.hyp.en")
    if not path.is_file():
        raise ReportError(f"{run['run']}: {path.name} is missing (the hypotheses of {name})")
    hyps = read_lines(path.read_text(encoding="utf-8"))
    expected = run["scores"][name].get("hypotheses")
    if expected is not None and len(hyps) != int(expected):
        raise ReportError(f"{run['run']}: {path.name} has {len(hyps)} lines, bleu.json says "
                         f"{expected} hypotheses")
    return hyps


def significance(runs: List[dict], refs_dir: Optional[Path], samples: int = 1000) -> List[dict]:
    """sacreBLEU's paired bootstrap (``PairedTest(test_type="bs")``, what ``sacrebleu
    --paired-bs`` runs; seed SACREBLEU_SEED, default 12345) of each pair of ``pairs``, per seed
    both optimizers have and per test set."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    by = {(r["label"], r["seed"]): r for r in runs if r["scores"]}
    rows = []
    for system, baseline in pairs({lab for lab, _ in by}):
        seeds = sorted({s for (lab, s) in by if lab == system} & {s for (lab, s) in by
                                                                  if lab == baseline}, key=int)
        for seed in seeds:
            a, b = by[(baseline, seed)], by[(system, seed)]
            for name in test_sets([a, b]):
                if name not in a["scores"] or name not in b["scores"]:
                    continue
                refs = read_references(b["scores"][name], refs_dir)
                base_hyps, sys_hyps = read_hypotheses(a, name), read_hypotheses(b, name)
                if not len(base_hyps) == len(sys_hyps) == len(refs):  # sacreBLEU would zip
                    raise ReportError(f"{name}: {len(base_hyps)} hypotheses of {a['name']}, "
                                     f"{len(sys_hyps)} of {b['name']}, {len(refs)} references")
                signatures, scores = PairedTest(
                    [(baseline, base_hyps), (system, sys_hyps)],
                    {"BLEU": BLEU(references=[refs])}, references=None, test_type="bs",
                    n_samples=samples)()
                base, sys_ = scores["BLEU"]
                rows.append({"system": system, "baseline": baseline, "seed": seed,
                             "test_set": name, "baseline_bleu": base.score,
                             "system_bleu": sys_.score, "delta": sys_.score - base.score,
                             "p_value": sys_.p_value, "baseline_ci": base.ci,
                             "system_ci": sys_.ci, "signature": str(signatures["BLEU"])})
    return rows


def rescore(runs: List[dict], refs_dir: Optional[Path]) -> List[dict]:
    """sacreBLEU of every committed hypothesis file against the raw references, beside the
    score in bleu.json (equal when they agree to the 2 decimals bleu.json keeps)."""
    from sacrebleu.metrics import BLEU

    rows = []
    for r in runs:
        for name, score in r["scores"].items():
            if "reference_file" not in score:
                continue
            hyps, refs = read_hypotheses(r, name), read_references(score, refs_dir)
            if len(hyps) != len(refs):
                raise ReportError(f"{r['run']}: {name}: {len(hyps)} hypotheses for "
                                 f"{len(refs)} references")
            again = BLEU().corpus_score(hyps, [refs]).score
            rows.append({"run": r["name"], "test_set": name, "bleu_json": score["sacrebleu"],
                         "rescored": round(again, 2), "sentences": len(hyps),
                         "equal": round(again, 2) == score["sacrebleu"]})
    return rows
