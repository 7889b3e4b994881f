"""One rank of the 2-process CPU tests, or (without WORLD_SIZE) one plain fairseq-train process.

After every update it records α, a parameter digest, the probe losses of a search and which of
this rank's micro-batches were fairseq's dummy batches (``ignore_grad``); the parameters before
the first update and after each one go to ``params{RANK}.pt``. Environment:

* XSAM_DDP_OUT: where to write (``rank{RANK}.json``, ``params{RANK}.pt``, ``dump{RANK}.pt``)
* XSAM_DDP_DUMP=N: save θ, the micro-batches, the factor, α and the glue's gradient at update N
* XSAM_DDP_EXPERT=1: mark one parameter as a mixture-of-experts (unshared) parameter
* XSAM_DDP_MUTATE=ignore_grad: a deliberately broken glue whose gradient replay ignores
  ``ignore_grad`` (a dummy batch's gradient then counts), so a test can show it is caught
"""

import hashlib
import json
import os
import runpy
import sys

import torch
from fairseq.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.environ["XSAM_DDP_OUT"]
RANK = os.environ.get("RANK", "0")
records = {"alpha": [], "digest": [], "dummy": 0, "probes": [], "micro_dummy": []}
params = []
train_step = Trainer.train_step


def flat_parameters(trainer):
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]).clone()


def recording_train_step(self, samples, raise_oom=False):
    if not params:
        params.append(flat_parameters(self))
    result = train_step(self, samples, raise_oom)
    glue = self._xsam_glue  # attached when the trainer built xsam_adamw
    flat = flat_parameters(self)
    params.append(flat)
    records["digest"].append(hashlib.sha1(flat.numpy().tobytes()).hexdigest())
    records["alpha"].append(glue.xsam.alpha)
    with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
        json.dump(records, f)
    torch.save(params, os.path.join(OUT, f"params{RANK}.pt"))
    return result


Trainer.train_step = recording_train_step

# --ddp-backend c10d on CPU: fairseq passes device_ids=[device_id] to torch's DDP, which only CUDA
# modules accept; torch wants None for a CPU module (the only CPU stand-in in these tests)
import fairseq.models.distributed_fairseq_model as distributed_model  # noqa: E402

TorchDDP = distributed_model.DistributedDataParallel


class CPUDistributedDataParallel(TorchDDP):
    def __init__(self, module, device_ids=None, output_device=None, **kwargs):
        cuda = next(module.parameters()).is_cuda
        super().__init__(module, device_ids=device_ids if cuda else None,
                         output_device=output_device if cuda else None, **kwargs)


distributed_model.DistributedDataParallel = CPUDistributedDataParallel

import fairseq_xsam.fairseq.glue as glue_module  # noqa: E402

record = glue_module.TrainerGlue._record


def counting_record(self, sample, model, criterion, optimizer, update_num, ignore_grad=False,
                    **kw):
    """Counts the dummy batches of the trainer's own pass (the replays do not come here)."""
    records["dummy"] += int(bool(ignore_grad))
    return record(self, sample, model, criterion, optimizer, update_num, ignore_grad, **kw)


glue_module.TrainerGlue._record = counting_record
sharpness = glue_module.TrainerGlue.sharpness


def recording_sharpness(self):
    """Records the update's dummy flags and probe losses; XSAM_DDP_DUMP=N: saves θ, this rank's
    micro-batches, the trainer's factor, α and the gradient the glue hands back, at update N (a
    test recomputes the latter independently)."""
    records["micro_dummy"].append([m.ignore_grad for m in self.micro])
    dump = None
    if self.trainer.get_num_updates() + 1 == int(os.environ.get("XSAM_DDP_DUMP", "0")):
        dump = {"theta": [p.detach().clone() for p in self.inner.params],
                "alpha": self.xsam.alpha, "factor": float(self.factor),
                "samples": [m.sample for m in self.micro],
                "ignore": [m.ignore_grad for m in self.micro]}
    info = sharpness(self)
    records["probes"].append(None if info.probe_losses is None
                             else [float(x) for x in info.probe_losses])
    if dump is not None:
        dump["grad"] = [p.grad.detach().clone() for p in self.inner.params]
        torch.save(dump, os.path.join(OUT, f"dump{RANK}.pt"))
    return info


glue_module.TrainerGlue.sharpness = recording_sharpness

if os.environ.get("XSAM_DDP_MUTATE") == "ignore_grad":
    gradient = glue_module.TrainerGlue._gradient

    def replay_ignoring_ignore_grad(self):
        flags = [m.ignore_grad for m in self.micro]
        for m in self.micro:
            m.ignore_grad = False
        try:
            return gradient(self)
        finally:
            for m, flag in zip(self.micro, flags):
                m.ignore_grad = flag

    glue_module.TrainerGlue._gradient = replay_ignoring_ignore_grad

glue_init = glue_module.TrainerGlue.__init__


def tagging_init(self, trainer):
    """XSAM_DDP_EXPERT=1: mark one parameter as a mixture-of-experts (unshared) parameter."""
    glue_init(self, trainer)
    if os.environ.get("XSAM_DDP_EXPERT") == "1":
        next(trainer.model.parameters()).expert = True


glue_module.TrainerGlue.__init__ = tagging_init
if os.environ.get("WORLD_SIZE"):  # under torchrun: one rank of a data-parallel run
    sys.argv = [os.path.join(ROOT, "scripts", "ddp_cpu_launch.py")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:  # one plain process, as fairseq-train runs it
    from fairseq_cli import train

    sys.argv = ["fairseq-train"] + sys.argv[1:]
    train.cli_main()
