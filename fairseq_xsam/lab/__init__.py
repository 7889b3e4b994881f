"""Measurement tools around the optimizer (not needed to train with it).

- :mod:`fairseq_xsam.lab.fidelity` — how well a descent direction points towards the worst case
  of the loss in a neighbourhood (the paper's "direction" argument for XSAM), pure tensor
  functions over lists of tensors.
- :mod:`fairseq_xsam.lab.checkpoint` — a fairseq checkpoint's model, criterion and fixed
  training batches (imports fairseq when called).
- :mod:`fairseq_xsam.lab.fidelity_cli` — the ``xsam-fidelity`` command.
"""
