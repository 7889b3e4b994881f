"""One rank of test_hf_trainer's 2-process run (torchrun, gloo, CPU): batch 2 per worker, no
accumulation, α searched every update; saves this rank's parameters and α's to OUT/rankN.pt."""

import sys
from pathlib import Path

import torch

from fairseq_xsam.hf import equip
from tests.hf.hf_helpers import flat, make_trainer

if __name__ == "__main__":
    out = Path(sys.argv[1])
    trainer = make_trainer(out / "run", batch=2, accumulation=1, steps=3)
    equip(trainer, rho=0.05, probe_rho=0.15, alpha_search=1)
    trainer.train()
    alphas = [h["xsam_alpha"] for h in trainer.state.log_history if "xsam_alpha" in h]
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
    torch.save({"params": flat(trainer.model), "alpha": trainer._xsam.alpha, "alphas": alphas,
                "world": trainer.accelerator.num_processes}, out / f"rank{rank}.pt")
