"""Multi-process data-parallel fairseq training on CPU (fairseq's own launcher assumes GPUs).

    torchrun --nproc_per_node 2 scripts/ddp_cpu_launch.py DATA --cpu \
        --distributed-backend gloo --ddp-backend legacy_ddp --user-dir fairseq_xsam ...
"""

import os
import sys


def main():
    from fairseq_cli import train

    sys.argv += ["--distributed-init-method", "env://", "--distributed-no-spawn",
                 "--distributed-rank", os.environ["RANK"],
                 "--distributed-world-size", os.environ["WORLD_SIZE"]]
    train.cli_main()


if __name__ == "__main__":
    main()
