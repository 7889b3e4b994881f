"""What an α search probes: the grid 0, Δα, …, α_max, the expanding search past it (α_max =
'auto'), the settings of one search as a value (:class:`Search`), the choice of α* among the
probe losses and why α* may sit on the searched range's edge. The probes themselves are
:func:`fairseq_xsam.core.search_alpha_`'s; the names here are read through :mod:`fairseq_xsam.core`
too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

#: α_max = 'auto': the base grid is the paper's 0..2; the search may continue past it.
AUTO = "auto"
AUTO_BASE_ALPHA_MAX = 2.0
#: Why α* is the last probe (:func:`edge_of`): the fixed grid ends there; --alpha-max auto ran
#: out of extra probes; or the next probe would rotate past the direction opposite u (αφ > π).
EDGE_GRID, EDGE_PROBES, EDGE_OPPOSITE = "grid", "probes", "opposite"


def alpha_grid(alpha_max: float, alpha_step: float) -> List[float]:
    """The α grid 0, Δα, 2Δα, …, α_max (inclusive, robust to rounding of α_max/Δα)."""
    n = int(math.floor(alpha_max / alpha_step + 1e-9))
    grid = [round(i * alpha_step, 12) for i in range(n + 1)]
    if alpha_max - grid[-1] > 1e-9 * max(1.0, alpha_max):
        grid.append(alpha_max)
    return grid


@dataclass(frozen=True)
class Expansion:
    """The expanding search (α_max = 'auto'): past the grid's edge α_e, probe α_e + jΔα,
    j = 1..``probes``, while each probe's loss is higher than every earlier one and α·φ ≤ π
    (φ·α = π is d = −u, the direction opposite the ascent; beyond it the rotation comes back)."""

    step: float  # Δα
    probes: int  # the most extra forward passes per search

    def alphas(self, edge: float) -> List[float]:
        """The candidates past ``edge``, one more than ``probes`` (it tells the π cap from the
        probe budget when the search stops rising at neither)."""
        return [round(edge + j * self.step, 12) for j in range(1, self.probes + 2)]


def search_plan(alpha_max, alpha_step: float, expand_probes: int):
    """(base grid, :class:`Expansion` or None) for ``alpha_max`` (a number, or 'auto': the grid
    0..2 and up to ``expand_probes`` probes past it)."""
    if alpha_max == AUTO:
        return alpha_grid(AUTO_BASE_ALPHA_MAX, alpha_step), Expansion(alpha_step, expand_probes)
    return alpha_grid(alpha_max, alpha_step), None


def largest_alpha(alpha_max, alpha_step: float, expand_probes: int) -> float:
    """The largest α a search can return (for 'auto': 2 + expand_probes·Δα)."""
    grid, expansion = search_plan(alpha_max, alpha_step, expand_probes)
    return expansion.alphas(grid[-1])[-2] if expansion is not None else grid[-1]


@dataclass(frozen=True)
class Search:
    """An α search's settings, as one value: the probes θ + ρ'·d(α) for α in ``grid``
    (0, Δα, …, α_max) at ``probe_rho`` = ρ', then, with an :class:`Expansion` (α_max = 'auto'),
    on past the grid's edge."""

    grid: Tuple[float, ...]
    probe_rho: float
    expansion: Optional[Expansion] = None

    @classmethod
    def plan(cls, alpha_max, alpha_step: float, expand_probes: int, probe_rho: float) -> "Search":
        """The search of the options ``alpha_max`` (a number or 'auto'), ``alpha_step``,
        ``alpha_expand_probes`` and ``probe_rho`` (see :func:`search_plan`)."""
        grid, expansion = search_plan(alpha_max, alpha_step, expand_probes)
        return cls(tuple(grid), probe_rho, expansion)


def within_half_turn(alphas: Tensor, phi: Tensor) -> Tensor:
    """α·φ ≤ π (up to round-off of φ): d(α) has not rotated past −u."""
    return alphas * phi <= math.pi * (1.0 + 1e-6)


def edge_of(best: Optional[int], n_probes: int, expansion: Optional[Expansion],
            next_within: bool) -> Optional[str]:
    """Why α* sits on the searched range's edge, or None when it does not.

    α* is on the edge iff it is the last probe (``best == n_probes − 1``): the loss still rose
    there, so the maximum may lie further on. The reason names what bounded the search: the fixed
    grid (:data:`EDGE_GRID`), the expansion's probe budget (:data:`EDGE_PROBES`) or, when the next
    candidate is past −u (``next_within`` False), the half turn (:data:`EDGE_OPPOSITE`).
    """
    if best is None or best != n_probes - 1:
        return None
    if expansion is None:
        return EDGE_GRID
    return EDGE_PROBES if next_within else EDGE_OPPOSITE


def pick_alpha(losses: Tensor, grid: Sequence[float]):
    """Index of the largest finite probe loss (ties: the smallest α), or None if none is finite."""
    finite = torch.isfinite(losses)
    if not bool(finite.any()):
        return None
    masked = torch.where(finite, losses, torch.full_like(losses, -math.inf))
    best = masked.max()
    return int(torch.nonzero(masked == best)[0, 0])
