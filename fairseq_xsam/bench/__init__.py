"""Benchmarks and checks around the optimizer: ``xsam-bench`` (:mod:`.cli`: the transformer case
in :mod:`.transformer`, the MLP case in :mod:`.mlp`, the traffic counter in :mod:`.traffic`),
``xsam-precision`` (:mod:`.precision`) and ``xsam-gpu-check`` (:mod:`.gpu_check`, its phases in
:mod:`.gpu_phases`). fairseq is imported only inside the functions that drive its trainer."""
