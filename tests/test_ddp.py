"""Two CPU processes (torchrun + gloo; --ddp-backend legacy_ddp and c10d): every rank picks the
same α and the parameters stay identical, across several searches and fairseq's dummy batches;
with --sam-local-ascent each worker ascends on its own shard and the descent gradients are
averaged."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fairseq_helpers import TINY_ARCH, make_corpus

from fairseq_xsam.fairseq.harness import build_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_two_ranks(tmp_path, data, extra, dump_update=0, port=29517, env_extra=None, check=True):
    out = tmp_path / "ranks"
    out.mkdir()
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2",
           "--master_port", str(port), os.path.join(ROOT, "tests", "ddp_worker.py"), data,
           "--user-dir", os.path.join(ROOT, "fairseq_xsam"), "--task", "translation", "--cpu",
           "--distributed-backend", "gloo", *TINY_ARCH,
           "--optimizer", "xsam_adamw", "--lr", "3e-3", "--max-tokens", "330",
           "--update-freq", "2", "--save-dir", str(tmp_path / "ck"), "--no-save",
           "--no-progress-bar", "--num-workers", "0", "--seed", "5", *extra]
    env = dict(os.environ, XSAM_DDP_OUT=str(out), XSAM_DDP_DUMP=str(dump_update),
               OMP_NUM_THREADS="1", **(env_extra or {}))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    if not check:
        return run
    assert run.returncode == 0, run.stderr[-4000:]
    return out, [json.load(open(out / f"rank{r}.json")) for r in (0, 1)]


def assert_ranks_agree(r0, r1, searches):
    assert len(r0["digest"]) == len(r1["digest"]) >= 3 * searches - 2
    assert r0["dummy"] + r1["dummy"] > 0  # uneven shards: dummy batches were replayed too
    assert r0["alpha"] == r1["alpha"]
    assert r0["digest"] == r1["digest"]
    assert len(set(r0["digest"])) == len(r0["digest"])  # the parameters really moved


BACKENDS = pytest.mark.parametrize("backend,port", [("legacy_ddp", 29517), ("c10d", 29521)])


@BACKENDS
def test_two_processes_agree_on_alpha_and_parameters(tmp_path, backend, port):
    # 201 sentences: the last batch of each epoch exists on one rank only (a dummy on the other)
    data = make_corpus(str(tmp_path / "corpus"), n_train=201)
    _, (r0, r1) = run_two_ranks(tmp_path, data, ["--ddp-backend", backend, "--alpha-search", "3",
                                                 "--dropout", "0.1", "--max-epoch", "4"],
                                port=port)
    assert_ranks_agree(r0, r1, searches=3)  # searches at updates 1, 4, 7


def local_reference(model, criterion, dump, rho):
    """One worker's XSAM descent gradient, written from ALGORITHM.md with autograd and plain
    tensor ops: g_0 on the worker's micro-batches only, θ_1 = θ + ρ g_0/‖g_0‖, g_1 there,
    u = g_0/‖g_0‖, v = g_1/‖g_1‖, φ = arccos⟨u, v⟩, ‖g_1‖ · d(α)."""
    params = list(model.parameters())

    def grad_at(theta):
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
        model.zero_grad()
        total = sum(criterion(model, s)[0] * (0.0 if ig else 1.0)
                    for s, ig in zip(dump["samples"], dump["ignore"]))
        total.backward()
        return torch.cat([p.grad.reshape(-1) for p in params]).double() * dump["factor"]

    theta = [t.clone() for t in dump["theta"]]
    flat_theta = torch.cat([t.reshape(-1) for t in theta]).double()
    g0 = grad_at(theta)
    shifted = (flat_theta + rho * g0 / g0.norm()).float().split([t.numel() for t in theta])
    g1 = grad_at([s.view_as(t) for s, t in zip(shifted, theta)])
    u, v = g0 / g0.norm(), g1 / g1.norm()
    phi = math.acos(max(-1.0, min(1.0, float(u @ v))))
    a = dump["alpha"]
    d = (math.sin((1 - a) * phi) * u + math.sin(a * phi) * v) / math.sin(phi)
    return g1.norm() * d


@BACKENDS
def test_local_ascent_averages_per_worker_xsam_gradients(tmp_path, backend, port):
    data = make_corpus(str(tmp_path / "corpus"), n_train=201)
    # update 3: after the search at update 1, so α is the searched one (and not 1); update 2
    # is the end of epoch 1, where one rank only has a dummy batch (g_0 = 0)
    out, (r0, r1) = run_two_ranks(
        tmp_path, data, ["--ddp-backend", backend, "--sam-local-ascent", "--alpha-search", "3",
                         "--dropout", "0.0", "--max-epoch", "2"], dump_update=3, port=port + 2)
    assert_ranks_agree(r0, r1, searches=2)
    dumps = [torch.load(out / f"dump{r}.pt") for r in (0, 1)]  # tensors and numbers only
    assert dumps[0]["alpha"] == dumps[1]["alpha"] != 1.0
    for a, b in zip(dumps[0]["grad"], dumps[1]["grad"]):
        assert torch.equal(a, b)  # averaged once: the same descent gradient on both ranks
    _, _, trainer = build_trainer(data, ["--task", "translation", "--cpu", *TINY_ARCH,
                                         "--optimizer", "xsam_adamw", "--dropout", "0.0"])
    model, criterion = trainer.model, trainer.criterion
    model.train()
    per_worker = [local_reference(model, criterion, d, rho=0.15) for d in dumps]
    expected = (per_worker[0] + per_worker[1]) / 2
    got = torch.cat([g.reshape(-1) for g in dumps[0]["grad"]]).double()
    assert (got - expected).norm() <= 1e-4 * expected.norm()
    # ... and it is not what the synchronised ascent would give: one plane from the all-reduced
    # gradient, i.e. all micro-batches of both workers at the world-size-averaged factor
    both = {"theta": dumps[0]["theta"], "alpha": dumps[0]["alpha"],
            "factor": dumps[0]["factor"] / 2, "samples": dumps[0]["samples"] + dumps[1]["samples"],
            "ignore": dumps[0]["ignore"] + dumps[1]["ignore"]}
    synchronised = local_reference(model, criterion, both, rho=0.15)
    assert (got - synchronised).norm() > 1e-2 * expected.norm()


def test_local_ascent_refuses_unshared_expert_parameters(tmp_path):
    data = make_corpus(str(tmp_path / "corpus"), n_train=201)
    run = run_two_ranks(tmp_path, data, ["--ddp-backend", "legacy_ddp", "--sam-local-ascent",
                                         "--max-epoch", "1"], port=29525,
                        env_extra={"XSAM_DDP_EXPERT": "1"}, check=False)
    assert run.returncode != 0
    assert "--sam-local-ascent averages every gradient over the workers, but this model has " \
           "unshared (expert) parameters" in run.stderr
