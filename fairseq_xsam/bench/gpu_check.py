"""Every GPU check of fairseq-xsam as one command that fits a short GPU lease (one CUDA GPU,
no network). ``scripts/gpu_check.sh`` (or ``xsam-gpu-check``) is the command to call.

    bash scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--budget SECONDS] [--dry-run] [--smoke]

Phases, each a subprocess with its own time limit: the budget (default 480 s) is split by the
phases' weights, and the time a phase leaves unused goes to the later ones. A phase that runs
out is stopped and what it wrote is kept (training saves a checkpoint every 100 updates).

  install      scripts/install_gpu.sh: installs what is missing (fairseq-fixed and the recipes'
               packages) from --wheels DIR or the index, into /tmp/site; torch is kept
  data         an IWSLT14 data-bin from files in the checkout: data/iwslt14/train-sample
               (BPE'd with data/iwslt14/code: 1,000 train + 100 valid pairs), the BPE'd test set
               (6,750 pairs) and fairseq's full-train dictionaries (so transformer_iwslt_de_en has
               its real 39,469,056 parameters)
  precision    (a) xsam-precision: --fp16 (flat master tensor) and --amp vs fp32
  bench-*      (b) xsam-bench under fp32, fp16, amp: AdamW, SAM, XSAM updates/s, the
               ratios, peak CUDA memory; bench-mlp: the memory-bound MLPs (--case mlp)
  train-*      (c) recipes/iwslt14_de_en/train.sh xsam, 300 updates under --fp16 and --amp:
               divergence, overflow skips
  evaluate     (d) recipes/iwslt14_de_en/evaluate.sh on all 6,750 test sentences with the
               checkpoint of (c) (pipeline and speed: its BLEU means nothing)
  cuda-tests   (e) pytest -m cuda: the tests that need a GPU

Writes OUT/report.md and OUT/results.json (rewritten after every phase) and OUT/logs.tar.gz
(each phase's log and small outputs). ``--dry-run`` prints the plan and exits 0 (no GPU
needed); ``--smoke`` runs every phase on the CPU with a tiny model and a data subset.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import List

from .gpu_phases import IWSLT, ROOT, TEST_SENTENCES, WHEELS, Context, Phase, phases


def build_data(dest: Path, smoke: bool) -> int:
    """The data phase (run as ``gpu_check.py --build-data DEST``)."""
    # the recipe's BPE (subword-nmt) on fairseq's codes; sacremoses is there after the install phase
    from ..recipes import iwslt14_prepare as prepare

    text = dest / "text"
    text.mkdir(parents=True, exist_ok=True)

    def lines(name):
        with gzip.open(IWSLT / name, "rt", encoding="utf-8") as f:
            return f.read().splitlines()

    n_train, n_valid, n_test = (200, 50, 100) if smoke else (1000, 100, TEST_SENTENCES)
    (text / "code").write_text("\n".join(lines("code.gz")) + "\n", encoding="utf-8")
    counts = {}
    for lang in ("de", "en"):
        sample = lines(f"train-sample.tok.{lang}.gz")
        splits = {"train": sample[:n_train], "valid": sample[-n_valid:]}
        for split, rows in splits.items():
            (text / f"{split}.tok.{lang}").write_text("\n".join(rows) + "\n", encoding="utf-8")
            prepare.apply_bpe_file(str(text / "code"), str(text / f"{split}.tok.{lang}"),
                                   str(text / f"{split}.{lang}"))
        test = lines(f"test.bpe.{lang}.gz")[:n_test]
        (text / f"test.{lang}").write_text("\n".join(test) + "\n", encoding="utf-8")
        (text / f"dict.{lang}.txt").write_text("\n".join(lines(f"dict.{lang}.txt.gz")) + "\n",
                                               encoding="utf-8")
        counts[lang] = {"train": len(splits["train"]), "valid": len(splits["valid"]),
                        "test": len(test)}
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "de",
           "--target-lang", "en", "--trainpref", str(text / "train"), "--validpref",
           str(text / "valid"), "--testpref", str(text / "test"), "--destdir",
           str(dest / "data-bin"), "--workers", "2" if smoke else "8"]
    if not smoke:  # smoke: the subset's own small dictionaries keep the tiny model tiny
        cmd += ["--srcdict", str(text / "dict.de.txt"), "--tgtdict", str(text / "dict.en.txt")]
    print("$ " + shlex.join(cmd), flush=True)
    rc = subprocess.call(cmd)
    summary = {"pairs": counts["de"], "source": "data/iwslt14 (train-sample BPE'd with code, "
               "test.bpe, " + ("the subset's own dictionaries" if smoke else
                               "fairseq's full-train dictionaries") + ")", "preprocess_rc": rc}
    (dest / "summary.json").write_text(json.dumps(summary, indent=1))
    return rc


def run_phase(phase: Phase, ctx: Context, limit: float) -> None:
    log = ctx.work / "logs" / f"{phase.name}.log"
    command = phase.command(ctx)
    phase.result.update(command=shlex.join(command), limit_s=round(limit, 1), log=log.name)
    print(f"[gpu_check] {phase.name}: {phase.title} (limit {limit:.0f} s)", flush=True)
    start = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(command) + "\n")
        f.flush()
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=ctx.env(), start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, limit))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = None, "out of time"
    phase.result.update(status=status, rc=rc, wall_s=round(time.monotonic() - start, 1))
    try:
        phase.result["figures"] = phase.figures(ctx)
    except Exception as e:  # a partial output must not lose the other phases' results
        phase.result["figures"] = {"error": f"{type(e).__name__}: {e}"}
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    print(f"[gpu_check] {phase.name}: {status} in {phase.result['wall_s']} s | {tail[0][:160]}",
          flush=True)


def environment(ctx: Context) -> dict:
    probe = ("import json, platform, torch\n"
             "try:\n import fairseq; fv = fairseq.__version__\n"
             "except Exception as e:\n fv = 'not importable: %s' % e\n"
             "c = torch.cuda.is_available()\n"
             "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,"
             " 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(),"
             " 'fairseq': fv, 'device': torch.cuda.get_device_name() if c else 'CPU',"
             " 'capability': torch.cuda.get_device_capability() if c else None,"
             " 'memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)"
             " if c else None}))")
    info = {"host": platform.node()}
    try:
        out = subprocess.run([ctx.python, "-c", probe], capture_output=True, text=True,
                             env=ctx.env(), timeout=120)
        info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    except Exception as e:
        info["error"] = f"{type(e).__name__}: {e}"
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = smi.stdout.strip()
    return info


def limits(plan: List[Phase], budget: float) -> List[float]:
    total = sum(p.weight for p in plan)
    return [budget * p.weight / total for p in plan]


def report(ctx: Context, plan: List[Phase], env: dict, started: str, budget: float) -> None:
    results = {"generated": started, "mode": "smoke (CPU, tiny model)" if ctx.smoke else "gpu",
               "budget_s": budget, "environment": env, "command": shlex.join(sys.argv),
               "phases": [{"name": p.name, "title": p.title, **p.result} for p in plan]}
    (ctx.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    lines = [f"# fairseq-xsam GPU check ({results['mode']})", "",
             f"Run {started}, budget {budget:.0f} s: `{results['command']}`", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "| phase | status | limit (s) | wall (s) | figures |", "|---|---|---|---|---|"]
    for p in plan:
        r = p.result
        lines.append(f"| {p.name}: {p.title} | {r.get('status', 'not run')} | "
                     f"{r.get('limit_s', '')} | {r.get('wall_s', '')} | {headline(p)} |")
    short = [p.name for p in plan if p.result.get("status") == "out of time"]
    lines += ["", "Ran out of time: " + (", ".join(short) or "nothing") + ".",
              "Not run: " + (", ".join(f"{p.name} ({p.result.get('status', 'not reached')})"
                                      for p in plan if p.result.get("status") not in
                                      ("ok", "failed", "out of time")) or "nothing") + ".", ""]
    for p in plan:
        lines += [f"## {p.name}: {p.title}", "",
                  f"`{p.result.get('command', shlex.join(p.command(ctx)))}`", "", "```",
                  json.dumps(p.result.get("figures", {}), indent=1, default=str), "```", ""]
    (ctx.out / "report.md").write_text("\n".join(lines))


def headline(phase: Phase) -> str:
    f = phase.result.get("figures") or {}
    try:
        if phase.name == "bench-mlp" and f.get("mlps"):
            return "; ".join(f"{k}: XSAM/SAM {m['xsam_sam']:.3f} (per round "
                             f"{m['xsam_sam_paired'][0]:.3f}), SAM/base {m['sam_base']:.3f}, "
                             f"predicted {m['predicted_xsam_sam']:.3f}"
                             for k, m in f["mlps"].items())
        if phase.name.startswith("bench-") and f.get("ratios"):
            ups = ", ".join(f"{n} {o['updates_per_s']:.2f}" for n, o in f["optimizers"].items()
                            if n != "xsam-search-every-update")
            r = f["ratios"]
            peak = f["optimizers"]["xsam"]["peak_cuda_mib"]
            return (f"updates/s {ups}; XSAM/SAM {r['xsam_sam_amortised']:.3f} (from its parts "
                    f"{f.get('xsam_sam_from_parts', float('nan')):.4f}), SAM/AdamW "
                    f"{r['sam_adamw']:.3f}; XSAM extra state {f['xsam_extra_state_mib']:.1f} "
                    f"MiB (one fp32 copy {f['one_fp32_copy_mib']:.1f})"
                    + (f"; peak {peak:.0f} MiB" if peak else ""))
        if phase.name.startswith("train-") and f:
            return (f"{f['updates']} updates, loss {f['first_loss']} -> {f['last_loss']}, finite "
                    f"{f['finite']}, overflow skips {f['overflow_skips']}, ups {f['ups_median']}")
        if phase.name == "precision" and f.get("rows"):
            return "; ".join(f"{r['precision']} u{r['update']}: α {r['alpha']} ({r['alpha_fp32']})"
                             f" ‖g_k‖ {r['gk_norm_rel_diff']:.1e}" for r in f["rows"])
        if phase.name == "evaluate" and f:
            return (f"{f.get('hypotheses')} sentences, BLEU {f.get('tokenized_bleu')} (means "
                    "nothing)")
        if phase.name == "cuda-tests":
            return ", ".join(f"{v} {k}" for k, v in f.get("counts", {}).items())
        if phase.name == "data" and f:
            return f"pairs {f.get('pairs')}"
    except (KeyError, TypeError, ValueError) as e:
        return f"({type(e).__name__}: {e})"
    return ""


def pack_logs(ctx: Context) -> None:
    with tarfile.open(ctx.out / "logs.tar.gz", "w:gz") as tar:
        for path in sorted(ctx.work.rglob("*")):
            small = path.is_file() and path.stat().st_size < 8 * 2 ** 20
            if small and path.suffix in (".log", ".json", ".md", ".txt"):
                tar.add(path, arcname=str(path.relative_to(ctx.work)))


def dry_run(ctx: Context, plan: List[Phase], budget: float) -> int:
    print(f"gpu_check plan ({'smoke, CPU' if ctx.smoke else 'GPU'}), budget {budget:.0f} s, "
          f"out {ctx.out}, work {ctx.work}; unused time passes to the later phases")
    for phase, limit in zip(plan, limits(plan, budget)):
        print(f"\n[{phase.name}] {phase.title}: limit {limit:.0f} s"
              + (f", needs {', '.join(phase.needs)}" if phase.needs else ""))
        print("  " + shlex.join(phase.command(ctx)))
    if ctx.args.wheels:
        have = [p.name.lower() for p in Path(ctx.args.wheels).glob("*.whl")]
        lacking = [w for w in WHEELS if not any(h.startswith(w) for h in have)]
        print(f"\nwheels in {ctx.args.wheels}: "
              + ("all needed" if not lacking else "MISSING " + ", ".join(lacking)
                 + " (scripts/install_gpu.sh --download DIR adds sacremoses, subword-nmt)"))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--wheels", help="wheel folder for an offline install (fairseq-fixed, ...)")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "gpu"),
                   help="report.md, results.json, logs.tar.gz (default docs/results/gpu/)")
    p.add_argument("--work", default=None, help="data, runs, checkpoints (default a folder "
                   "under /tmp)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all phases (default 480; smoke 900)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--smoke", action="store_true",
                   help="every phase on the CPU, tiny model, data subset (CI)")
    p.add_argument("--build-data", metavar="DEST", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is not None and not args.budget > 0:
        p.error(f"argument --budget: {args.budget} (allowed: seconds > 0)")
    if args.wheels and not Path(args.wheels).is_dir():
        p.error(f"argument --wheels: {args.wheels} is not a folder")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build_data:
        return build_data(Path(args.build_data), args.smoke)
    budget = args.budget or (900.0 if args.smoke else 480.0)
    work = Path(args.work or f"/tmp/xsam-gpu-check{'-smoke' if args.smoke else ''}")
    ctx = Context(args, work.resolve(), Path(args.out).resolve())
    plan = phases()
    if args.dry_run:
        return dry_run(ctx, plan, budget)
    if not args.smoke:
        probe = subprocess.run([ctx.python, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            print("gpu_check: no CUDA GPU visible to torch (allowed: a CUDA machine; --smoke "
                  "runs the phases on the CPU, --dry-run prints them)", file=sys.stderr)
            return 2
    if ctx.work.exists():
        shutil.rmtree(ctx.work)
    (ctx.work / "logs").mkdir(parents=True)
    ctx.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    begin, env = time.monotonic(), {}
    for i, phase in enumerate(plan):
        blocked = [n for n in phase.needs
                   if next(p for p in plan if p.name == n).result.get("status") != "ok"]
        if blocked:
            phase.result.update(status=f"skipped: {', '.join(blocked)} did not succeed")
        else:
            left = budget - (time.monotonic() - begin)
            todo = plan[i:]
            run_phase(phase, ctx, left * phase.weight / sum(p.weight for p in todo))
        if phase.name == "install":
            env = environment(ctx)
        report(ctx, plan, env, started, budget)
    pack_logs(ctx)
    print(f"[gpu_check] {time.monotonic() - begin:.0f} s; report {ctx.out / 'report.md'}")
    return 0 if all(p.result.get("status") == "ok" for p in plan) else 1


if __name__ == "__main__":
    raise SystemExit(main())
