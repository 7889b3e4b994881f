"""One rank of the 2-process CPU tests: records α and a parameter digest after every update."""

import hashlib
import json
import os
import runpy
import sys

import torch
from fairseq.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ["XSAM_DDP_OUT"]
records = {"alpha": [], "digest": [], "dummy": 0}
train_step = Trainer.train_step


def recording_train_step(self, samples, raise_oom=False):
    result = train_step(self, samples, raise_oom)
    glue = self._xsam_glue  # attached when the trainer built xsam_adamw
    flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
    records["digest"].append(hashlib.sha1(flat.numpy().tobytes()).hexdigest())
    records["alpha"].append(glue.xsam.alpha)
    with open(os.path.join(OUT, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(records, f)
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
    records["dummy"] += int(bool(ignore_grad))
    return record(self, sample, model, criterion, optimizer, update_num, ignore_grad, **kw)


glue_module.TrainerGlue._record = counting_record
sharpness = glue_module.TrainerGlue.sharpness


def dumping_sharpness(self):
    """XSAM_DDP_DUMP=N: save θ, this rank's micro-batches, the trainer's factor, α and the
    gradient the glue hands back, at update N (a test recomputes the latter independently)."""
    if self.trainer.get_num_updates() + 1 != int(os.environ.get("XSAM_DDP_DUMP", "0")):
        return sharpness(self)
    dump = {"theta": [p.detach().clone() for p in self.inner.params], "alpha": self.xsam.alpha,
            "factor": float(self.factor), "samples": [m.sample for m in self.micro],
            "ignore": [m.ignore_grad for m in self.micro]}
    info = sharpness(self)
    dump["grad"] = [p.grad.detach().clone() for p in self.inner.params]
    torch.save(dump, os.path.join(OUT, f"dump{os.environ['RANK']}.pt"))
    return info


glue_module.TrainerGlue.sharpness = dumping_sharpness
glue_init = glue_module.TrainerGlue.__init__


def tagging_init(self, trainer):
    """XSAM_DDP_EXPERT=1: mark one parameter as a mixture-of-experts (unshared) parameter."""
    glue_init(self, trainer)
    if os.environ.get("XSAM_DDP_EXPERT") == "1":
        next(trainer.model.parameters()).expert = True


glue_module.TrainerGlue.__init__ = tagging_init
sys.argv = [os.path.join(ROOT, "scripts", "ddp_cpu_launch.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
