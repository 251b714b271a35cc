"""``make_flow(kind, dim, steps, context_dim)``: the flows the domains offer by name (--posterior, --policy)."""

from __future__ import annotations

from .autoregressive import IAFTransform
from .base import Flow, FlowTransform
from .coupling import AffineCoupling, SplineCoupling
from .planar import PlanarTransform

__all__ = ["FLOW_KINDS", "make_flow"]

FLOW_KINDS = ("planar", "iaf", "affine", "spline")


def make_flow(kind: str, dim: int, steps: int, context_dim: int = 0, hidden: tuple[int, ...] = (64,)) -> Flow:
    """A chain of ``steps`` transforms of one kind, alternating order/halves between steps.

    Args:
        kind: ``planar``, ``iaf`` (MADE), ``affine`` (RealNVP coupling) or ``spline`` (rational-quadratic
            coupling).
        dim: D.
        steps: K >= 1.
        context_dim: C (0: unconditional).
        hidden: hidden widths of the step networks (MADE, coupling conditioners).
    """
    if kind not in FLOW_KINDS:
        raise ValueError(f"unknown flow kind {kind!r}: choose one of {', '.join(FLOW_KINDS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"a flow needs at least one step, got steps={steps!r}")
    transforms: list[FlowTransform] = []
    for k in range(steps):
        if kind == "planar":
            transforms.append(PlanarTransform(dim, context_dim))
        elif kind == "iaf":
            transforms.append(IAFTransform(dim, hidden, context_dim, reverse=k % 2 == 1))
        elif kind == "affine":
            transforms.append(AffineCoupling(dim, hidden, context_dim, swap=k % 2 == 1))
        else:
            transforms.append(SplineCoupling(dim, hidden, context_dim, swap=k % 2 == 1))
    return Flow(transforms)
