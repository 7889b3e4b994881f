"""Interrupted training: SIGKILL right after a checkpoint, resume, and the rest of the run is
bit-for-bit the run that was never interrupted (losses, gradient norms, α searches, weights)."""

from resume_run import sigkill_then_resume_is_bit_exact


def test_sigkill_after_a_checkpoint_then_resume_is_bit_exact(tmp_path):
    sigkill_then_resume_is_bit_exact(tmp_path)
