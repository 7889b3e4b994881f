"""Two CPU processes (torchrun + gloo; --ddp-backend legacy_ddp and c10d).

* Synchronised ascent (the default): rank 0's α, probe losses and parameters equal those of ONE
  process with ``--update-freq 2`` on the same sentences, update for update, including the last
  update of each epoch, where the shards are uneven and rank 1 only has fairseq's dummy batch
  (``ignore_grad``); a glue whose replay ignores ``ignore_grad`` fails that comparison, from the
  first dummy update on. The ranks also agree bit for bit across several searches.
* ``--sam-local-ascent``: each worker ascends on its own shard and the descent gradients are
  averaged (against a per-worker reference written with autograd).

torchrun runs with ``--standalone``: its rendezvous binds a free port chosen at run time, so two
checkouts or a leftover process cannot collide on a fixed port; its logs go under tmp_path.
"""

import math

import pytest
import torch
from ddp_run import assert_ranks_agree, run_ranks, run_two_ranks
from fairseq_helpers import TINY_ARCH, make_corpus

from fairseq_xsam.fairseq.harness import build_trainer

BACKENDS = pytest.mark.parametrize("backend", ["legacy_ddp", "c10d"])


@BACKENDS
def test_two_processes_agree_on_alpha_and_parameters(tmp_path, backend):
    # 201 sentences: the last batch of each epoch exists on one rank only (a dummy on the other)
    data = make_corpus(str(tmp_path / "corpus"), n_train=201)
    _, (r0, r1) = run_two_ranks(tmp_path, data, ["--ddp-backend", backend, "--alpha-search", "3",
                                                 "--dropout", "0.1", "--max-epoch", "4"])
    assert_ranks_agree(r0, r1, searches=3)  # searches at updates 1, 4, 7


# -- synchronised ascent against one process ----------------------------------------------------

# a search on every update (the dummy updates included), α inside the grid, no dropout (the ranks
# draw from the same seed, one process from one stream)
EQUIVALENCE = ["--alpha-search", "1", "--rho", "0.3", "--probe-rho", "0.3", "--dropout", "0.0",
               "--max-epoch", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 201 sentences at --max-tokens 330: an odd number of batches, so the last update of each
    # epoch has a batch on rank 0 and fairseq's dummy batch on rank 1
    return make_corpus(str(tmp_path_factory.mktemp("corpus")), n_train=201)


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """One process, --update-freq 2: micro-batches 2i and 2i+1 of the epoch's batch order are the
    ones ranks 0 and 1 get at update i; the last update of an epoch has one micro-batch."""
    out, (one,) = run_ranks(tmp_path_factory.mktemp("one"), corpus,
                            ["--update-freq", "2", *EQUIVALENCE], nproc=0)
    return one, torch.load(out / "params0.pt")


def mismatches(ddp, ddp_params, one, one_params):
    """Per update: None if rank 0's update equals the one process's (α, probe losses, Δθ to
    round-off), else what differs."""
    out = []
    for i in range(len(one["alpha"])):
        bad = []
        if ddp["alpha"][i] != one["alpha"][i]:
            bad.append(f"alpha {ddp['alpha'][i]} != {one['alpha'][i]}")
        got, ref = torch.tensor(ddp["probes"][i]), torch.tensor(one["probes"][i])
        if not torch.allclose(got, ref, rtol=1e-5, atol=0):
            bad.append(f"probe losses differ by {float((got - ref).abs().max()):.2e}")
        step, ref_step = ddp_params[i + 1] - ddp_params[i], one_params[i + 1] - one_params[i]
        rel = float((step - ref_step).norm() / ref_step.norm())
        if rel > 1e-4:
            bad.append(f"update differs by {rel:.2e} (relative)")
        out.append(", ".join(bad) or None)
    return out


def run_against_one_process(tmp_path, corpus, backend, env_extra=None):
    out, (r0, r1) = run_ranks(tmp_path, corpus, ["--ddp-backend", backend, "--update-freq", "1",
                                                 *EQUIVALENCE], env_extra=env_extra)
    return out, r0, r1


@BACKENDS
def test_synchronised_ranks_equal_one_process_with_update_freq_two(tmp_path, corpus,
                                                                   one_process, backend):
    one, one_params = one_process
    out, r0, r1 = run_against_one_process(tmp_path, corpus, backend)
    ddp_params = torch.load(out / "params0.pt")
    n = len(one["alpha"])
    assert len(r0["alpha"]) == n and len(ddp_params) == len(one_params) == n + 1
    assert torch.equal(ddp_params[0], one_params[0])  # the same initial weights
    # the updates whose rank 1 had only a dummy batch: the last of each epoch, searched
    dummies = [i for i, flags in enumerate(r1["micro_dummy"]) if flags == [True]]
    assert len(dummies) == 2 and dummies[-1] == n - 1, r1["micro_dummy"]
    assert all(one["micro_dummy"][i] == [False] for i in dummies)  # one micro-batch there
    assert all(len(one["probes"][i]) == 21 for i in range(n))  # every update searched
    assert mismatches(r0, ddp_params, one, one_params) == [None] * n
    assert 0.0 < min(one["alpha"]) and max(one["alpha"]) < 2.0  # α inside the grid
    assert r0["alpha"] == r1["alpha"] and r0["digest"] == r1["digest"]


def test_a_replay_ignoring_ignore_grad_fails_the_one_process_comparison(tmp_path, corpus,
                                                                        one_process):
    """The mutation check of the test above: count the dummy batch's gradient in the replay."""
    one, one_params = one_process
    out, r0, r1 = run_against_one_process(tmp_path, corpus, "legacy_ddp",
                                          {"XSAM_DDP_MUTATE": "ignore_grad"})
    found = mismatches(r0, torch.load(out / "params0.pt"), one, one_params)
    first_dummy = [flags for flags in r1["micro_dummy"]].index([True])
    assert found[:first_dummy] == [None] * first_dummy  # equal until the first dummy update
    assert found[first_dummy] is not None and "update differs" in found[first_dummy], found


# -- local ascent --------------------------------------------------------------------------------


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
def test_local_ascent_averages_per_worker_xsam_gradients(tmp_path, backend):
    data = make_corpus(str(tmp_path / "corpus"), n_train=201)
    # update 3: after the search at update 1, so α is the searched one (and not 1); update 2
    # is the end of epoch 1, where one rank only has a dummy batch (g_0 = 0)
    out, (r0, r1) = run_two_ranks(
        tmp_path, data, ["--ddp-backend", backend, "--sam-local-ascent", "--alpha-search", "3",
                         "--dropout", "0.0", "--max-epoch", "2"], dump_update=3)
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
                                         "--max-epoch", "1"],
                        env_extra={"XSAM_DDP_EXPERT": "1"}, check=False)
    assert run.returncode != 0
    assert "--sam-local-ascent averages every gradient over the workers, but this model has " \
           "unshared (expert) parameters" in run.stderr
