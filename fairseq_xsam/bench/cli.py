"""Time per update of AdamW, SAM and XSAM through fairseq's real trainer, measured in one run.

The optimizers run interleaved (A B C D A B C D …) on the same batches after a warm-up, so drift
(thermal, other load) hits all of them alike. Prints per-update time (median and interquartile
range), the ratios the project targets (XSAM/SAM ≤ 1.01 with an epoch-wise search,
SAM/AdamW ≤ 2.05), the price of a search on every update, memory, and the time of the optimizer
math alone (everything XSAM does besides forward/backward passes).

    xsam-bench --device cpu                      # tiny model, synthetic data
    xsam-bench --device cuda --precision fp16 \\
        --data data-bin/iwslt14.tokenized.de-en --arch transformer_iwslt_de_en

Memory: on CUDA the peak allocated during each optimizer's updates; everywhere, the bytes of
optimizer state kept between updates (base state plus XSAM's scratch copy of θ).

``--case mlp`` is the memory-bound case (plain-PyTorch API, ``fairseq_xsam.XSAM``): MLPs whose
forward/backward passes are short next to the parameter sweeps, where XSAM's extra vector math
shows. It prints XSAM/SAM, SAM/base, the overhead the traffic model predicts (the sweeps counted
on the update itself, each priced by timing that kind of sweep in the same run) and the extra
memory, then the traffic table of every update kind (docs/performance.md):

    xsam-bench --case mlp --rounds 40 --threads 1
"""

from __future__ import annotations

import argparse

import torch

from .mlp import MLPS, mlp_case
from .transformer import transformer_case


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=["transformer", "mlp"], default="transformer",
                   help="transformer: fairseq's trainer (default); mlp: the memory-bound MLPs "
                        "through the plain-PyTorch API, with the traffic model")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "amp"], default="fp32")
    p.add_argument("--data", help="a fairseq data-bin folder (default: a synthetic corpus)")
    p.add_argument("--arch", default=None, help="fairseq --arch (default: a tiny transformer)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--updates", type=int, default=20, help="timed updates per optimizer")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3, help="untimed updates per optimizer")
    p.add_argument("--epoch-updates", type=int, default=1101,
                   help="updates per epoch for the amortised XSAM/SAM ratio (default 1101: "
                        "IWSLT14 De-En at --max-tokens 4096)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N updates of SAM and of XSAM with torch.profiler "
                        "and print the top operators (0: off)")
    p.add_argument("--profile-trace", default=None,
                   help="folder for the profiler's Chrome traces (sam.json, xsam.json)")
    p.add_argument("--math-repeats", type=int, default=5,
                   help="transformer case: repetitions of the vector math timed alone (median)")
    p.add_argument("--json", default=None, help="also write the figures (JSON) here")
    p.add_argument("--no-search-every-update", action="store_true",
                   help="transformer case: leave out the optimizer that searches on every update "
                        "(the slowest by far); the price of a search is then XSAM's own search "
                        "update minus its median plain update")
    p.add_argument("--rounds", type=int, default=40,
                   help="--case mlp: timed interleaved rounds (one update of each optimizer each)")
    p.add_argument("--mlps", default="2.1M,6.3M",
                   help="--case mlp: which MLPs, comma-separated, from " + ", ".join(MLPS))
    args = p.parse_args(argv)
    if args.case == "mlp":
        unknown = [m for m in args.mlps.split(",") if m not in MLPS]
        if unknown:
            p.error(f"Invalid --mlps value: {args.mlps!r} (allowed: a comma-separated subset "
                    f"of {', '.join(MLPS)})")
        if args.rounds < 1 or args.warmup < 0:
            p.error(f"Invalid --rounds/--warmup: {args.rounds}/{args.warmup} "
                    "(allowed: --rounds >= 1, --warmup >= 0)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case == "mlp":
        return mlp_case(args)
    return transformer_case(args)


if __name__ == "__main__":
    raise SystemExit(main())
