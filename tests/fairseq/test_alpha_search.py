"""The α search's edge and ``--alpha-max auto`` inside fairseq's real trainer (tiny CPU data):
the metric, the log line and the one-time warning; update-freq, hydra, DDP and resume."""

import re

import pytest
import torch
from fairseq.logging import metrics
from fairseq_helpers import batches, build_trainer, close, descent_grad, flat_params, make_corpus

# On the tiny corpus a probe radius of 2 puts the maximum just past α = 2 (α* ≈ 2.1-2.5)
WIDE = ["--optimizer", "xsam_adamw", "--alpha-search", "1", "--rho", "0.3", "--probe-rho", "2.0"]
LINE = re.compile(r"XSAM alpha search at update (\d+): alpha=([0-9.]+) "
                  r"\(probe losses ([^)]*)\)(.*)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


def train(data, extra, updates, caplog, max_sentences=8):
    """Runs ``updates`` updates; returns the searches' infos, log lines, warnings and metrics."""
    _, task, trainer = build_trainer(data, WIDE + extra)
    _ = trainer.optimizer
    xsam = trainer._xsam_glue.xsam
    infos, edge_metric = [], []
    original = xsam.sharpness_gradient
    xsam.sharpness_gradient = lambda *a, **k: infos.append(original(*a, **k)) or infos[-1]
    caplog.clear()
    with caplog.at_level("INFO"):
        for sample in batches(task, trainer, max_sentences, updates):
            with metrics.aggregate(new_root=True) as agg:
                trainer.train_step([sample])
            edge_metric.append(agg.get_smoothed_values().get("xsam_alpha_at_edge"))
    lines = [LINE.match(r.getMessage()) for r in caplog.records
             if r.getMessage().startswith("XSAM alpha search")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and "XSAM" in r.getMessage()]
    return trainer, infos, lines, warnings, edge_metric


def test_default_grid_pinned_at_its_edge_is_logged_flagged_and_warned_once(data, caplog):
    trainer, infos, lines, warnings, edge_metric = train(data, [], 3, caplog)
    assert [i.alpha for i in infos] == [2.0] * 3 and all(i.edge == "grid" for i in infos)
    assert edge_metric == [1.0] * 3
    for update, line in enumerate(lines, start=1):
        assert line and int(line.group(1)) == update and line.group(2) == "2.00"
        probes = [float(x) for x in line.group(3).split()]
        assert len(probes) == 21 and max(range(21), key=lambda i: (probes[i], -i)) == 20
        assert line.group(4) == " [at the grid's edge]"
    assert len(warnings) == 1, warnings
    assert "--alpha-max auto" in warnings[0] and "--probe-rho" in warnings[0]


def test_auto_goes_past_the_edge_until_the_loss_falls(data, caplog):
    trainer, infos, lines, warnings, edge_metric = train(data, ["--alpha-max", "auto"], 3, caplog)
    assert all(2.0 < i.alpha < 3.0 and not i.at_edge for i in infos), [i.alpha for i in infos]
    assert edge_metric == [0.0] * 3 and warnings == []
    for info, line in zip(infos, lines):
        probes = [float(x) for x in line.group(3).split()]
        n = round(info.alpha / 0.1) + 2  # α = 0, 0.1, …, α*, and the one that fell
        assert len(probes) == len(info.probe_alphas) == n > 21 and line.group(4) == ""
        assert max(range(n), key=lambda i: (probes[i], -i)) == n - 2
        assert float(line.group(2)) == pytest.approx(info.alpha)
    assert trainer._xsam_glue.xsam.param_groups[0]["alpha_max"] == "auto"


def test_auto_out_of_extra_probes_is_flagged_and_names_the_option(data, caplog):
    _, infos, lines, warnings, edge_metric = train(
        data, ["--alpha-max", "auto", "--alpha-expand-probes", "1"], 2, caplog)
    assert [i.alpha for i in infos] == [2.1, 2.1] and edge_metric == [1.0, 1.0]
    assert all(len(i.probe_alphas) == 22 for i in infos)
    assert lines[0].group(4) == " [at the grid's edge: --alpha-expand-probes used up]"
    assert len(warnings) == 1 and "raise --alpha-expand-probes" in warnings[0]


def test_auto_update_freq_two_equals_one_big_batch(data):
    opts = WIDE + ["--alpha-max", "auto"]
    _, task, one = build_trainer(data, opts)
    _, _, two = build_trainer(data, opts + ["--update-freq", "2"])
    halves = batches(task, one, 4, 2)
    ds = task.dataset("train")
    whole = ds.collater([ds[i] for i in torch.cat([h["id"] for h in halves]).tolist()])
    seen, start = {}, flat_params(one.model)
    for name, trainer, samples in (("one", one, [whole]), ("two", two, halves)):
        _ = trainer.optimizer
        xsam = trainer._xsam_glue.xsam
        original = xsam.sharpness_gradient
        xsam.sharpness_gradient = (lambda *a, _n=name, _o=original, **k:
                                   seen.setdefault(_n, _o(*a, **k)))
        trainer.train_step(samples)
    assert seen["one"].alpha == seen["two"].alpha > 2.0
    assert seen["one"].probe_alphas == seen["two"].probe_alphas
    assert torch.allclose(seen["one"].probe_losses, seen["two"].probe_losses, rtol=1e-5)
    assert close(descent_grad(one), descent_grad(two))
    assert close(flat_params(two.model) - start, flat_params(one.model) - start, 1e-3)


@pytest.mark.filterwarnings(r"ignore:\s*'[^']*' is validated against ConfigStore")
@pytest.mark.filterwarnings(r"ignore:\s*The strict flag in the compose API")
def test_hydra_config_and_command_line_agree_on_auto(monkeypatch):
    from omegaconf import OmegaConf
    from recipe_configs import ROOT, differences, dry_run, fairseq_cfg, hydra_cfg

    from fairseq_xsam.fairseq.optimizer import XSAMAdamW
    from fairseq_xsam.recipes import iwslt14 as recipe

    monkeypatch.chdir(ROOT)
    cli = fairseq_cfg(dry_run("xsam", "--data", "d", "--", "--alpha-max", "auto",
                              "--alpha-expand-probes", "5"))
    hyd = hydra_cfg(recipe.CONFIG_DIR, "xsam", [
        "task.data=d", f"checkpoint.save_dir={cli['checkpoint']['save_dir']}",
        "+optimizer.alpha_max=auto", "+optimizer.alpha_expand_probes=5"])
    assert differences(cli, hyd) == []
    assert (hyd["optimizer"]["alpha_max"], hyd["optimizer"]["alpha_expand_probes"]) == ("auto", 5)
    # a number given to hydra is the command line's number (the config field holds text: "3"
    # from hydra, "3.0" from the command line, whose parser checked it as a number)
    three = hydra_cfg(recipe.CONFIG_DIR, "xsam", ["task.data=d", "+optimizer.alpha_max=3"])
    three_cli = fairseq_cfg(dry_run("xsam", "--data", "d", "--", "--alpha-max", "3"))
    assert float(three["optimizer"]["alpha_max"]) == float(three_cli["optimizer"]["alpha_max"]) \
        == 3.0
    for cfg, expected in ((hyd, "auto"), (three, 3.0), (three_cli, 3.0)):
        opt = XSAMAdamW(OmegaConf.create(cfg["optimizer"]), [torch.nn.Parameter(torch.ones(2))])
        assert opt.optimizer.hyper["alpha_max"] == expected


@pytest.mark.parametrize("local", [False, True], ids=["synchronised", "local-ascent"])
def test_two_processes_agree_on_the_expanded_alpha(tmp_path, local):
    from ddp_run import assert_ranks_agree, run_two_ranks

    data = make_corpus(str(tmp_path / "corpus"), n_train=201)
    _, (r0, r1) = run_two_ranks(
        tmp_path, data, ["--ddp-backend", "legacy_ddp", "--alpha-search", "3", "--dropout",
                         "0.1", "--max-epoch", "2", "--alpha-max", "auto", "--probe-rho", "2.0",
                         *(["--sam-local-ascent"] if local else [])])
    assert_ranks_agree(r0, r1, searches=2)  # searches at updates 1 and 4
    assert max(r0["alpha"]) > 2.0, r0["alpha"]  # the search really went past the grid


def as_saved_before_auto_existed(save_dir):
    """Rewrites checkpoint_last.pt the way it looked before --alpha-max auto existed: a float
    alpha_max and no alpha_expand_probes, in the optimizer's groups and in the saved config."""
    import os

    path = os.path.join(save_dir, "checkpoint_last.pt")
    state = torch.load(path, map_location="cpu", weights_only=False)
    for group in state["last_optimizer_state"]["param_groups"]:
        group["alpha_max"] = 2.0
        del group["alpha_expand_probes"]
    state["cfg"]["optimizer"]["alpha_max"] = 2.0  # fairseq saves its config as a plain dict
    del state["cfg"]["optimizer"]["alpha_expand_probes"]
    torch.save(state, path)


def test_sigkill_and_resume_with_auto_is_bit_exact_also_from_an_old_checkpoint(tmp_path):
    from resume_run import sigkill_then_resume_is_bit_exact

    lines, searches = sigkill_then_resume_is_bit_exact(
        tmp_path, ["--alpha-max", "auto", "--probe-rho", "2.0"],
        before_resume=as_saved_before_auto_existed)
    alphas = {u: float(v.split("alpha=")[1].split()[0]) for u, v in searches.items()}
    assert alphas[1] > 2.0 and max(alphas.values()) > 2.0, alphas  # past the grid, resumed
    # the metric is in the train log on search updates, 1 or 0 (fairseq prints None elsewhere)
    edge = {u: re.search(r"xsam_alpha_at_edge=(\S+?),? ", lines[u] + " ") for u in lines}
    assert {u: m.group(1) for u, m in edge.items() if m and m.group(1) != "None"} == {
        u: "1" if "[at the grid's edge" in searches[u] else "0" for u in searches}
