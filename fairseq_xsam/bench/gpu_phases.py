"""The GPU check's plan: its phases (a command and the figures read from its output each), the
context they run in, and the paths of the checkout they use (see :mod:`.gpu_check`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

from ..report.logs import parse_train_log
from .transformer import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]  # the checkout: data/, recipes/, tests/


RECIPE = ROOT / "recipes" / "iwslt14_de_en"


IWSLT = ROOT / "data" / "iwslt14"


ARCH = ["--arch", "transformer_iwslt_de_en", "--max-tokens", "4096"]


# the wheels an offline machine needs beyond its own packages (scripts/install_gpu.sh)
WHEELS = ("fairseq_fixed", "hydra_core", "omegaconf", "antlr4", "bitarray", "sacremoses",
          "subword_nmt")


TEST_SENTENCES = 6750


@dataclass
class Phase:
    name: str
    title: str
    weight: float  # seconds at the default budget
    command: Callable[["Context"], List[str]]
    figures: Callable[["Context"], dict] = lambda ctx: {}
    needs: tuple = ("install",)
    result: dict = field(default_factory=dict)


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    out: Path
    python: str = sys.executable

    @property
    def smoke(self) -> bool:
        return self.args.smoke

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"

    @property
    def data(self) -> Path:
        return self.work / "data" / "data-bin"

    @property
    def site(self) -> Path:
        return Path("/tmp/site")

    def env(self) -> dict:
        path = [str(ROOT)] + ([] if self.smoke else [str(self.site)])
        old = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONPATH": ":".join(path + ([old] if old else [])),
                "PYTHON": self.python, "PYTHONUNBUFFERED": "1"}


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def install_command(ctx):
    cmd = ["bash", "scripts/install_gpu.sh"]
    if ctx.smoke:
        return cmd + ["--check"]
    return cmd + ["--target", str(ctx.site)] + (["--wheels", ctx.args.wheels]
                                                  if ctx.args.wheels else [])


def data_command(ctx):
    return [ctx.python, "-m", "fairseq_xsam.bench.gpu_check", "--build-data", str(ctx.work / "data")] + (
        ["--smoke"] if ctx.smoke else [])


def model(ctx):
    # smoke: the scripts' own tiny transformer (TINY_MODEL), small batches
    return ["--max-tokens", "500"] if ctx.smoke else ARCH


def precision_command(ctx):
    return [ctx.python, "-m", "fairseq_xsam.bench.precision", "--device", ctx.device, "--data",
            str(ctx.data), "--updates", "1" if ctx.smoke else "4", *model(ctx),
            "--out", str(ctx.work / "precision.md"), "--json", str(ctx.work / "precision.json")]


def bench_command(precision):
    def command(ctx):
        steps = ["--updates", "1", "--warmup", "0"] if ctx.smoke else ["--updates", "20",
                                                                       "--warmup", "3"]
        return [ctx.python, "-m", "fairseq_xsam.bench.cli", "--device", ctx.device, "--precision",
                precision, "--data", str(ctx.data), *model(ctx), *steps,
                "--json", str(ctx.work / f"bench-{precision}.json")]
    return command


def mlp_command(ctx):
    """(b) the memory-bound case: XSAM/SAM where the passes are short (plain-PyTorch API)."""
    steps = ["--rounds", "2", "--warmup", "0", "--mlps", "2.1M"] if ctx.smoke else [
        "--rounds", "40", "--warmup", "5", "--mlps", "2.1M,6.3M,25.2M"]
    return [ctx.python, "-m", "fairseq_xsam.bench.cli", "--case", "mlp", "--device", ctx.device, *steps,
            "--json", str(ctx.work / "bench-mlp.json")]


def bench_figures(precision):
    def figures(ctx):
        found = read_json(ctx.work / f"bench-{precision}.json")
        if not found:
            return {}
        adamw, xsam = found["optimizers"]["adamw"], found["optimizers"]["xsam"]
        found["xsam_extra_state_mib"] = xsam["state_kept_mib"] - adamw["state_kept_mib"]
        found["one_fp32_copy_mib"] = found["parameters"] * 4 / 2 ** 20
        return found
    return figures


def run_dir(ctx, precision) -> Path:
    return ctx.work / f"runs-{precision}" / "xsam-seed1"


def train_command(precision):
    def command(ctx):
        cmd = ["bash", str(RECIPE / "train.sh"), "xsam", "1", "--data", str(ctx.data),
               "--runs", str(ctx.work / f"runs-{precision}"), "--no-eval-bleu",
               "--max-epoch", "10000"]
        updates, every = ("6", "3") if ctx.smoke else ("300", "100")
        extra = ["--max-update", updates, "--save-interval", "10000", "--save-interval-updates",
                 every, "--keep-interval-updates", "1", "--no-epoch-checkpoints",
                 "--log-interval", "1" if ctx.smoke else "25"]
        if ctx.smoke:  # CPU, the tiny transformer (the last --arch wins)
            cmd += ["--cpu"]
            extra += TINY_MODEL + ["--max-tokens", "500"] + {
                "fp16": ["--fp16", "--fp16-no-flatten-grads"], "amp": ["--amp"]}[precision]
        elif precision == "amp":
            cmd += ["--no-fp16"]
            extra += ["--amp"]
        return cmd + ["--"] + extra
    return command


def train_figures(precision):
    def figures(ctx):
        log = run_dir(ctx, precision) / "train.log"
        if not log.exists():
            return {}
        text = log.read_text(errors="replace")
        parsed = parse_train_log(text)
        rows = []
        for line in text.splitlines():
            if "train_inner" in line or re.search(r"epoch \d+: +\d+ / \d+ loss=", line):
                row = dict(re.findall(r"(\w+)=([^,\s]+)", line))
                if "loss" in row:
                    rows.append(row)
        losses = [float(r["loss"]) for r in rows]
        ups = [float(r["ups"]) for r in rows if "ups" in r]
        overflows = len(re.findall(r"gradient overflow detected|AMP: overflow detected", text))
        ckpt = run_dir(ctx, precision) / "checkpoints" / "checkpoint_best.pt"
        return {"updates": parsed["updates"], "alpha_searches": len(parsed["alpha"]),
                "alphas": [a for _, a in parsed["alpha"]][-5:],
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "finite": all(l == l and abs(l) != float("inf") for l in losses) and bool(losses),
                "overflow_skips": overflows,
                "amp_batches_skipped": text.count("AMP: skipping this batch"),
                "loss_scale_last": rows[-1].get("loss_scale") if rows else None,
                "ups_median": sorted(ups)[len(ups) // 2] if ups else None,
                "checkpoint": str(ckpt) if ckpt.exists() else None}
    return figures


def evaluate_run(ctx) -> Path:
    """The run of (c) to translate with: fp16's if it left a checkpoint, else amp's."""
    for precision in ("fp16", "amp"):
        if (run_dir(ctx, precision) / "checkpoints" / "checkpoint_best.pt").exists():
            return run_dir(ctx, precision)
    return run_dir(ctx, "fp16")


def evaluate_command(ctx):
    cmd = ["bash", str(RECIPE / "evaluate.sh"), str(evaluate_run(ctx)), "--data", str(ctx.data),
           "--expect-sentences", str(100 if ctx.smoke else TEST_SENTENCES),
           "--out", str(ctx.work / "eval")]
    if ctx.smoke:
        cmd += ["--cpu", "--batch-size", "50"]
    return cmd + ["--", "--max-len-a", "1.2", "--max-len-b", "10"]


def evaluate_figures(ctx):
    found = read_json(ctx.work / "eval" / "bleu.json")
    if found:
        found["run"] = str(evaluate_run(ctx))
    return found or {}


def cuda_test_files() -> List[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text(encoding="utf-8"))


def tests_command(ctx):
    return [ctx.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda",
            *cuda_test_files()]


def tests_figures(ctx):
    log = ctx.work / "logs" / "cuda-tests.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    counts = {k: int(v) for v, k in re.findall(
        r"(\d+) (passed|failed|skipped|deselected|errors?)", text.splitlines()[-1]
        if text.strip() else "")}
    return {"counts": counts, "files": cuda_test_files()}


def data_figures(ctx):
    return read_json(ctx.work / "data" / "summary.json") or {}


def phases() -> List[Phase]:
    return [
        Phase("install", "install what is missing (torch kept)", 25, install_command, needs=()),
        Phase("data", "IWSLT14 data-bin from the checkout", 30, data_command,
              data_figures),
        Phase("precision", "(a) fp16 and amp against fp32", 50, precision_command,
              lambda ctx: read_json(ctx.work / "precision.json") or {}, ("data",)),
        *[Phase(f"bench-{p}", f"(b) benchmark, {p}", 40, bench_command(p), bench_figures(p),
                ("data",)) for p in ("fp32", "fp16", "amp")],
        Phase("bench-mlp", "(b) benchmark, memory-bound MLPs (plain PyTorch, fp32)", 15,
              mlp_command, lambda ctx: read_json(ctx.work / "bench-mlp.json") or {}),
        Phase("train-fp16", "(c) XSAM training, --fp16 (300 updates; smoke 6)", 65, train_command("fp16"),
              train_figures("fp16"), ("data",)),
        Phase("train-amp", "(c) XSAM training, --amp (300 updates; smoke 6)", 85, train_command("amp"),
              train_figures("amp"), ("data",)),
        Phase("evaluate", "(d) evaluate.sh on the test set with (c)'s checkpoint", 60,
              evaluate_command, evaluate_figures, ("data",)),
        Phase("cuda-tests", "(e) the tests marked cuda", 45, tests_command, tests_figures),
    ]
