"""fairseq-train that stops dead after the checkpoint of update ``XSAM_PAUSE_AT``: it writes the
marker file ``XSAM_PAUSE_MARKER`` and sleeps, so that a test can SIGKILL it at a known point."""

import os
import sys
import time

from fairseq import checkpoint_utils

save = checkpoint_utils.save_checkpoint


def pausing_save(cfg, trainer, epoch_itr, val_loss):
    result = save(cfg, trainer, epoch_itr, val_loss)
    if trainer.get_num_updates() == int(os.environ["XSAM_PAUSE_AT"]):
        with open(os.environ["XSAM_PAUSE_MARKER"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)  # killed here
    return result


checkpoint_utils.save_checkpoint = pausing_save

if __name__ == "__main__":
    from fairseq_cli import train

    sys.exit(train.cli_main())
