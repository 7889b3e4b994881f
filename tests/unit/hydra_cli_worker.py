"""Runs fairseq-hydra-train's entry point, ``fairseq_cli.hydra_train.cli_main``, once per
argument list of the JSON file ``argv[1]``, all in this one process, and writes each run's exit
status and stderr to the JSON file ``argv[2]``: tests/unit/test_options.py's table of option errors
without a process start (seconds) per row. Hydra's global state is reset between runs."""

import contextlib
import io
import json
import sys

from fairseq_cli import hydra_train
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig


def run(argv):
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    sys.argv = ["fairseq-hydra-train", *argv]
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            hydra_train.cli_main()
        except SystemExit as exit_:
            code = exit_.code
    return {"code": code, "stderr": err.getvalue()}


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    with open(source) as f:
        cases = json.load(f)
    results = [run(argv) for argv in cases]
    with open(target, "w") as f:
        json.dump(results, f)
