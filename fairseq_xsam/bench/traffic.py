"""The traffic counter of xsam-bench: a ``TorchDispatchMode`` that counts the parameter-sized
reads and writes of an update (the algorithm's sweeps, docs/performance.md) and prices each kind
of sweep by timing it."""

from __future__ import annotations

import collections
import contextlib
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .transformer import sync

#: ops whose mutated argument is only written (not read)
WRITE_ONLY = {"copy_", "_foreach_copy_", "zero_", "_foreach_zero_", "fill_", "_foreach_fill_"}


#: how a sweep is priced: a sweep of each kind is timed in the same run (:func:`sweep_times`)
KINDS = ("reduce", "unary", "binary", "ternary", "copy")


class Traffic(TorchDispatchMode):
    """Counts what the aten ops run under it read and write.

    Every op touching at least 1 % of ``param_bytes`` is (part of) a *sweep*, classified by kind:
    'reduce' (reads, writes nothing parameter-sized), 'copy', and 'unary'/'binary'/'ternary' by
    how many parameter-sized lists it reads (an in-place op reads what it writes); a sweep over
    a share of θ (a per-tensor op) counts as that share. Smaller ops are *small ops* (the scalar
    arithmetic, per-tensor ops on tiny tensors). ``syncs`` counts host synchronisations (``item()``,
    ``bool(tensor)``: ``_local_scalar_dense``), ``allocations`` parameter-sized new tensors.
    Reads and writes are in units of ``param_bytes`` (one sweep over θ).
    """

    def __init__(self, param_bytes: int):
        super().__init__()
        self.param_bytes = param_bytes
        self.read = self.written = 0.0
        self.sweeps = collections.Counter()
        self.small = self.syncs = self.allocations = 0
        self.paused = False

    @contextlib.contextmanager
    def pause(self):
        """Not counted: the passes, which are not the optimizer's vector math."""
        self.paused, before = True, self.paused
        try:
            yield
        finally:
            self.paused = before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused:
            self._count(func, args, kwargs, out)
        return out

    def _count(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":
            self.syncs += 1
            return
        schema = func._schema
        if schema.returns and all(r.alias_info is not None and not r.alias_info.is_write
                                  for r in schema.returns):
            return  # a view: no data moves
        big = self.param_bytes / 100
        read = written = largest = 0
        lists_read = 0
        mutates = False
        for i, arg in enumerate(schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            nbytes = _nbytes(value)
            if not nbytes:
                continue
            largest = max(largest, nbytes)
            if arg.alias_info is not None and arg.alias_info.is_write:
                mutates = True
                written += nbytes
                if arg.name == "out" or name in WRITE_ONLY:
                    continue
            read += nbytes
            lists_read += nbytes >= big
        if not mutates:
            written += _nbytes(out)
            largest = max(largest, _nbytes(out))
            self.allocations += _nbytes(out) >= big
        if read + written < big:
            self.small += _touches_tensors(args, kwargs)  # not dtype helpers and the like
            return
        self.read += read / self.param_bytes
        self.written += written / self.param_bytes
        if name in WRITE_ONLY:
            kind = "copy"
        elif written < big:
            kind = "reduce"
        else:
            kind = KINDS[min(max(lists_read, 1), 3)]
        # in sweeps over θ: a foreach op over all parameters is 1, a per-tensor op its share
        self.sweeps[kind] += largest / self.param_bytes

    def figures(self) -> dict:
        return {"read": round(self.read, 2), "written": round(self.written, 2),
                "sweeps": {k: round(self.sweeps.get(k, 0), 2) for k in KINDS},
                "small_ops": self.small,
                "allocations": self.allocations, "host_syncs": self.syncs}


def _touches_tensors(args, kwargs) -> bool:
    values = list(args) + list(kwargs.values())
    return any(torch.is_tensor(v) or (isinstance(v, (list, tuple)) and any(map(torch.is_tensor, v)))
               for v in values)


def _nbytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


#: update kinds of the traffic table: (label, core.sharpness_update settings)
UPDATE_KINDS = [
    ("sam", dict(variant="sam")),
    ("xsam (no search), fixed", dict(variant="fixed", alpha=0.5)),
    ("xsam, search update (21 probes)", dict(variant="xsam", alpha=0.5, search=True)),
    ("msam+, k=1", dict(variant="msam+")),  # msam and lsam with k = 1 are SAM
    ("lsam+, k=1", dict(variant="lsam+")),
    ("sam, k=3", dict(variant="sam", ascent_steps=3)),
    ("xsam (no search), k=3", dict(variant="fixed", alpha=0.5, ascent_steps=3)),
    ("msam, k=3", dict(variant="msam", ascent_steps=3)),
    ("lsam, k=3", dict(variant="lsam", ascent_steps=3)),
    ("sam + ASAM", dict(variant="sam", adaptive=True)),
    ("xsam (no search) + ASAM", dict(variant="fixed", alpha=0.5, adaptive=True)),
]


def math_update(theta, grads, backup, current, *, variant, alpha=1.0, ascent_steps=1,
                adaptive=False, search=False, counter=None, moved=lambda: None, refill=True):
    """XSAM's vector math of one update on ``theta`` without forward/backward passes: every
    "pass" copies ``grads`` into the gradient list ``current`` (not counted; with ``refill``
    False it leaves ``current`` as it is, for timing), the probes return 0."""
    from fairseq_xsam import core

    pause = counter.pause if counter is not None else contextlib.nullcontext

    def compute_grad():
        if refill:
            with pause():
                torch._foreach_copy_(current, grads)
        return current

    def compute_loss():
        with pause():
            return torch.zeros((), device=theta[0].device)

    with torch.no_grad():
        return core.sharpness_update(
            theta, compute_grad(), backup, core.Passes(compute_grad, compute_loss, moved),
            rho=0.05, ascent_steps=ascent_steps, variant=variant, alpha=alpha,
            search=core.Search(tuple(core.alpha_grid(2.0, 0.1)), 0.1) if search else None,
            adaptive=adaptive)


def count_traffic(theta, **kind) -> dict:
    """The traffic figures of one update of ``kind`` (see :data:`UPDATE_KINDS`) on ``theta``."""
    grads = [torch.randn_like(t) for t in theta]
    backup, current = ([torch.empty_like(t) for t in theta] for _ in range(2))
    param_bytes = sum(t.numel() * t.element_size() for t in theta)
    counter = Traffic(param_bytes)
    moved = kind.pop("moved", lambda: None)
    with counter:
        math_update(theta, grads, backup, current, counter=counter, moved=moved, **kind)
    return counter.figures()


def fp16_flat(theta):
    """fairseq's ``--fp16`` layout: one flat fp32 master tensor and the fp16 model weights that
    every move of θ refreshes (``FP16Optimizer._sync_fp32_params_to_fp16``)."""
    flat = torch.cat([t.detach().reshape(-1).float() for t in theta])
    half = [t.detach().half() for t in theta]

    def moved():
        offset = 0
        for p in half:  # fairseq's own loop
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    return [flat], moved


def traffic_table(theta) -> dict:
    """{label: figures} for every update kind, the fp16 flat master layout, and the path that
    many CUDA tensors take (scale in place first, :func:`fairseq_xsam.core.one_sweep_axpy`)."""
    from fairseq_xsam import core

    table = {label: count_traffic(theta, **dict(kind)) for label, kind in UPDATE_KINDS}
    for label, kind in (("sam, --fp16 flat master", dict(variant="sam")),
                        ("xsam (no search), --fp16 flat master",
                         dict(variant="fixed", alpha=0.5))):
        flat, moved = fp16_flat(theta)
        table[label] = count_traffic(flat, moved=moved, **kind)
    one_sweep = core.one_sweep_axpy
    core.one_sweep_axpy = lambda tensors: False
    try:
        for label, kind in (("sam, many CUDA tensors", dict(variant="sam")),
                            ("xsam (no search), many CUDA tensors",
                             dict(variant="fixed", alpha=0.5))):
            table[label] = count_traffic(theta, **kind)
    finally:
        core.one_sweep_axpy = one_sweep
    return table


def print_traffic(table) -> None:
    print("\n| update kind | reads | writes | sweeps: reduce/unary/binary/ternary/copy "
          "| small ops | param-sized allocations | host syncs |\n|---|---|---|---|---|---|---|")
    for label, f in table.items():
        sweeps = "/".join(f"{f['sweeps'][k]:g}" for k in KINDS)
        print(f"| {label} | {f['read']:g} | {f['written']:g} | {sweeps} | {f['small_ops']} | "
              f"{f['allocations']} | {f['host_syncs']} |")
    print("(reads and writes in sweeps over θ: 1 = every fp32 parameter once; the --fp16 rows "
          "count fp16 bytes as half a sweep)")


def sweep_buffers(theta):
    """Three lists shaped like ``theta`` and a 64 MiB block that evicts them from the caches
    (what a forward/backward pass does between an update's sweeps)."""
    return [[torch.rand_like(t) + 0.5 for t in theta] for _ in range(3)] + [
        torch.zeros(2 ** 24, device=theta[0].device)]


def sweep_times(buffers, device) -> dict:
    """Seconds of one sweep of each kind over ``buffers`` (:func:`sweep_buffers`), from cold
    caches, and of a small op."""
    x, y, z, flush = buffers
    s = torch.tensor(0.999, device=x[0].device)
    ops = {"reduce": lambda: torch._foreach_norm(x),
           "unary": lambda: torch._foreach_mul_(x, s),
           "binary": lambda: torch._foreach_add_(x, y, alpha=1e-3),
           "ternary": lambda: torch._foreach_addcmul_(x, y, z, value=1e-3),
           "copy": lambda: torch._foreach_copy_(y, z),
           "small": lambda: s * 2.0}
    out = {}
    for kind, op in ops.items():
        repeats = 50 if kind == "small" else 1
        flush.add_(1.0)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            op()
        sync(device)
        out[kind] = (time.perf_counter() - start) / repeats
    return out


def predicted_seconds(figures, times) -> float:
    """The traffic model's price of an update: its sweeps and small ops, each at the time
    measured for its kind."""
    return (sum(n * times[k] for k, n in figures["sweeps"].items())
            + figures["small_ops"] * times["small"])
