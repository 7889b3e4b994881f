"""The IWSLT'14 and Multi30k recipes' configs as fairseq builds them, shared by the recipe tests
(tests/pipeline) and the alpha-search tests (tests/fairseq): train.sh's dry-run command parsed
by fairseq-train's parser, a hydra config composed as fairseq-hydra-train does, and the
differences between the two."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "recipes" / "iwslt14_de_en"
PYTHON = sys.executable
GROUPS = ("task", "criterion", "optimizer", "lr_scheduler", "optimization", "dataset",
          "checkpoint", "common")


def dry_run(*args) -> str:
    out = subprocess.run(["bash", str(RECIPE_DIR / "train.sh"), "--dry-run", *args],
                         capture_output=True, text=True, check=True, env={**os.environ,
                                                                          "PYTHON": PYTHON})
    return out.stdout.strip()


def fairseq_cfg(command_line: str) -> dict:
    """The command's config as fairseq-train builds it (its parser, then omegaconf)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    from fairseq_xsam.fairseq import register

    register()
    words = shlex.split(command_line)
    start = words.index("fairseq_cli.train") + 1 if "fairseq_cli.train" in words else 1
    args = options.parse_args_and_arch(options.get_training_parser(), words[start:])
    cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True,
                                 enum_to_str=True)
    cfg["model"] = vars(cfg["model"]) if not isinstance(cfg["model"], dict) else cfg["model"]
    return cfg


def hydra_cfg(config_dir: Path, name: str, overrides) -> dict:
    """The config fairseq-hydra-train builds: hydra compose (version_base 1.1, as its
    @hydra.main), then fairseq's add_defaults with the plugin registered, then resolved."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fairseq_xsam.fairseq import register

    register()
    hydra_init(name)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.1"):
        cfg = compose(config_name=name, overrides=list(overrides))
    add_defaults(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def differences(cli: dict, hyd: dict) -> list:
    out = []
    for group in GROUPS:
        a, b = cli[group], hyd[group]
        for key in sorted(set(a) | set(b)):
            va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
            if group == "common" and key == "user_dir":
                va, vb = os.path.realpath(va), os.path.realpath(vb)
            if va != vb:
                out.append((group, key, va, vb))
    # the yaml names the model by _name (the arch) and sets what the command sets on top of it;
    # a key missing from either side is a difference, not a skip
    cli_model = {**cli["model"], "_name": cli["model"].get("arch", cli["model"].get("_name"))}
    for key in ("_name", "dropout", "share_decoder_input_output_embed"):
        va, vb = cli_model.get(key, "<absent>"), hyd["model"].get(key, "<absent>")
        if va != vb:
            out.append(("model", key, va, vb))
    return out
