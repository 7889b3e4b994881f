"""fairseq checkpoints load with torch's safe loader (``weights_only=True``) once the plugin is
imported, without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``; anything else in a file is refused and
none of its code runs."""

from __future__ import annotations

import functools
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq_helpers import TINY_ARCH, batches, build_trainer, flat_params, make_corpus

ROOT = Path(__file__).resolve().parents[2]
USER_DIR = str(ROOT / "fairseq_xsam")
BIN = os.path.dirname(sys.executable)
ENV_VAR = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

from fairseq_xsam.recipes import iwslt14 as recipe  # noqa: E402


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def allowed_names():
    from fairseq_xsam.fairseq.checkpoints import safe_globals

    names = set()
    for item in safe_globals():
        fn, name = item if isinstance(item, tuple) else (item, None)
        names.add(name or f"{fn.__module__}.{fn.__qualname__}")
    return names


def unsafe_globals(path) -> set:
    """The globals torch's safe loader refuses by default (the process' allowlist, which the
    plugin extended, is set aside for the call)."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    finally:
        torch.serialization.add_safe_globals(saved)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("safe")))


def save(trainer, path) -> None:
    """What fairseq's checkpoint_utils.save_checkpoint does with the trainer."""
    trainer.consolidate_optimizer()
    trainer.save_checkpoint(str(path), {"train_iterator": {"epoch": 1}})


class Payload:
    """Unpickling this creates ``path`` (``open(path, 'w')``): what a hostile file could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def hostile(data, tmp_path_factory):
    """A real fairseq checkpoint with one extra pickled object; unpickling it creates ``marker``."""
    folder = tmp_path_factory.mktemp("hostile")
    _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw"])
    trainer.train_step(batches(task, trainer, 8, 1))
    path = folder / "checkpoint_last.pt"
    save(trainer, path)
    state = torch.load(path, weights_only=True)
    state["extra_state"]["note"] = Payload(folder / "pwned")
    torch.save(state, path)
    return path, folder / "pwned"


def test_plugin_leaves_the_environment_and_torch_default_alone(hostile):
    path, marker = hostile
    code = ("import os, torch, fairseq_xsam\n"
            f"assert {ENV_VAR!r} not in os.environ, os.environ[{ENV_VAR!r}]\n"
            f"try:\n    torch.load({str(path)!r})\nexcept Exception as e:\n"
            "    print(type(e).__name__, [l for l in str(e).splitlines() if 'GLOBAL' in l])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=clean_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("UnpicklingError") and "Payload" not in out.stdout
    # refused by torch's own default: the payload, or (torch 2.13 meets it first) a global of
    # fairseq's that only the plugin's allowlist admits, so the plugin did not extend the default
    refused = re.search(r"GLOBAL ([\w.]+)", out.stdout).group(1)
    assert refused in ("io.open", "builtins.open") or refused in allowed_names(), out.stdout
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_and_runs_nothing(data, hostile):
    from fairseq import checkpoint_utils

    from fairseq_xsam.fairseq.checkpoints import CheckpointRefused, load

    path, marker = hostile
    with pytest.raises(CheckpointRefused) as err:
        load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert "open" in str(err.value) and "weights_only=False only if you trust" in str(err.value)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))  # resume, generate, the scripts
    with pytest.raises(pickle.UnpicklingError):
        recipe.average_checkpoints([path, path], path.parent / "avg.pt")
    assert not marker.exists() and not (path.parent / "avg.pt").exists()

    out = subprocess.run([os.path.join(BIN, "fairseq-generate"), data,
                          "--path", str(path), "--user-dir", USER_DIR, "--cpu", "--task",
                          "translation", "--gen-subset", "test"],
                         capture_output=True, text=True, env=clean_env())
    assert out.returncode != 0
    assert "Unsupported global" in out.stderr and not marker.exists()

    torch.load(path, weights_only=False)  # the control: an unsafe load does run the payload
    assert marker.exists()


KINDS = {
    "xsam": ["--optimizer", "xsam_adamw", "--alpha-search", "2"],
    "adam": ["--optimizer", "adam"],
    "xsam-fp16": ["--optimizer", "xsam_adamw", "--alpha-search", "2", "--fp16",
                  "--fp16-no-flatten-grads", "--fp16-init-scale", "64"],
    "adam-fp16": ["--optimizer", "adam", "--fp16", "--fp16-no-flatten-grads"],
    "xsam-amp": ["--optimizer", "xsam_adamw", "--alpha-search", "2", "--amp"],
    "adam-amp": ["--optimizer", "adam", "--amp"],
}


def optimizer_tensors(trainer):
    state = trainer.optimizer.state_dict()
    return [t for s in state["state"].values() for t in s.values() if torch.is_tensor(t)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_checkpoint_loads_safely_and_resumes_as_before(data, tmp_path, kind,
                                                                     monkeypatch):
    """fairseq-train's Trainer writes the checkpoint; fairseq's own loader reads it back with
    torch's default (weights_only=True). The next update equals the one after a resume through
    torch's unsafe loader (what TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 gave), and, except under
    --fp16, the uninterrupted run's: fairseq saves the fp16 weights but not their fp32 master
    copy, so an --fp16 resume rebuilds it from fp16 values (stock adam too)."""
    argv = [*KINDS[kind], "--dropout", "0.1"]
    _, task, trainer = build_trainer(data, argv)
    samples = batches(task, trainer, 8, 3)
    for s in samples[:2]:
        trainer.train_step([s])
    path = tmp_path / "checkpoint_last.pt"
    save(trainer, path)
    trainer.train_step([samples[2]])

    found = unsafe_globals(path)
    assert "argparse.Namespace" in found and found <= allowed_names(), found

    def resume(weights_only):
        with monkeypatch.context() as m:
            if not weights_only:
                m.setattr(torch, "load", functools.partial(torch.load, weights_only=False))
            _, _, resumed = build_trainer(data, argv)
            resumed.load_checkpoint(str(path))
        assert resumed.get_num_updates() == 2
        resumed.train_step([samples[2]])
        return resumed

    safe, unsafe = resume(True), resume(False)
    references = [unsafe] if "fp16" in kind else [unsafe, trainer]
    for other in references:
        assert torch.equal(flat_params(safe.model), flat_params(other.model))
        a, b = optimizer_tensors(safe), optimizer_tensors(other)
        assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))
        if kind.startswith("xsam"):
            assert safe.optimizer.optimizer.search_state == other.optimizer.optimizer.search_state


def test_hydra_train_eval_bleu_and_averaged_checkpoints_load_safely(data, tmp_path):
    """fairseq-hydra-train with the recipe's config (``--eval-bleu``: numpy arrays in the saved
    meters), two epochs, then the recipe's average of both: each loads with weights_only=True,
    and stock fairseq-generate with --user-dir translates from the average."""
    model = [f"+model.{a[2:].replace('-', '_')}={b}" for a, b in zip(TINY_ARCH[2::2],
                                                                        TINY_ARCH[3::2])]
    ck = tmp_path / "ck"
    out = subprocess.run(
        [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", str(recipe.CONFIG_DIR),
         "--config-name", "xsam", f"task.data={data}", "model._name=transformer", *model,
         "common.cpu=true", "common.fp16=false", "optimization.max_epoch=2",
         "task.eval_bleu_detok=space", "dataset.max_tokens=4000", f"checkpoint.save_dir={ck}"],
        cwd=tmp_path, capture_output=True, text=True,
        env=clean_env(FAIRSEQ_XSAM_USER_DIR=USER_DIR))
    assert out.returncode == 0, out.stderr[-3000:]
    avg = recipe.average_checkpoints([ck / "checkpoint2.pt", ck / "checkpoint1.pt"],
                                     ck / "checkpoint_avg.pt")
    for path in (ck / "checkpoint2.pt", avg):
        found = unsafe_globals(path)
        assert "numpy.ndarray" in found and found <= allowed_names(), found
        assert "argparse.Namespace" not in found  # hydra's config is plain dicts
    from fairseq_xsam.fairseq.checkpoints import load

    counts = load(avg)["extra_state"]["metrics"]
    assert any(isinstance(m[3].get("sum"), np.ndarray) for agg in counts.values() for m in agg)
    gen = subprocess.run([os.path.join(BIN, "fairseq-generate"), data, "--path", str(avg),
                          "--user-dir", USER_DIR, "--cpu", "--beam", "2", "--gen-subset", "test",
                          "--required-batch-size-multiple", "1"],
                         capture_output=True, text=True, env=clean_env())
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert sum(line.startswith("H-") for line in gen.stdout.splitlines()) == 20


def _rewrite_pickle(path: Path, old: bytes, new: bytes) -> None:
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, blob in entries:
            if info.filename.endswith("data.pkl"):
                assert old in blob
                blob = blob.replace(old, new)
            z.writestr(info, blob)


def test_numpy_values_load_under_either_numpy_module_name(tmp_path):
    """numpy arrays and scalars as fairseq's meters hold them, written by this numpy and as
    numpy 1.x names them (``numpy.core``; numpy 2 writes ``numpy._core``)."""
    from fairseq_xsam.fairseq.checkpoints import register

    register()
    value = {"counts": np.array([19, 3, 0, 0]), "score": np.float64(1.5),
             "flags": np.array([True, False]), "ratio": np.float32(0.25)}
    path = tmp_path / "numpy.pt"
    torch.save(value, path)
    module = np.ndarray.__module__.split(".")[0]
    assert module == "numpy"
    blob = zipfile.ZipFile(path).read(next(n for n in zipfile.ZipFile(path).namelist()
                                           if n.endswith("data.pkl")))
    written = b"numpy._core.multiarray" if b"numpy._core.multiarray" in blob else \
        b"numpy.core.multiarray"
    other = b"numpy.core.multiarray" if written == b"numpy._core.multiarray" else \
        b"numpy._core.multiarray"
    for variant in (None, other):
        if variant is not None:
            _rewrite_pickle(path, written + b"\n", variant + b"\n")
            assert variant in zipfile.ZipFile(path).read(
                next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))
        loaded = torch.load(path, weights_only=True)
        assert np.array_equal(loaded["counts"], value["counts"])
        assert loaded["score"] == 1.5 and type(loaded["score"]) is np.float64
        assert loaded["ratio"] == np.float32(0.25) and loaded["flags"].dtype == np.bool_


def test_allowlist_is_what_fairseq_checkpoints_hold():
    """No code-running global slipped in: every entry is a data type or numpy's rebuilders."""
    names = allowed_names()
    assert "argparse.Namespace" in names
    assert {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
            "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
            "numpy.ndarray", "numpy.dtype"} <= names
    others = names - {"argparse.Namespace", "numpy.ndarray", "numpy.dtype",
                      "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                      "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"}
    assert others and all(n.startswith("numpy.dtypes.") or n.startswith("numpy.dtype[")
                          for n in others), others
    assert not any("Object" in n or "object" in n for n in others)
