"""Normalizing flows under the core's contract: noise, transform, and the log-density from the noise.

    from reparam_apps.flows import Flow, IAFTransform, Reverse
    flow = Flow([IAFTransform(2, context_dim=8), Reverse(2), IAFTransform(2, context_dim=8)])
    q = flow(loc, scale, context=h)          # a FlowDistribution, batch shape from loc
    z, log_q = q.rsample_and_log_prob()      # eq. (1) of base.py: no inversion
"""

from .autoregressive import MADE, IAFTransform
from .base import Flow, FlowDistribution, FlowTransform, Reverse
from .builders import FLOW_KINDS, make_flow
from .coupling import AffineCoupling, SplineCoupling
from .planar import PlanarTransform
from .spline import rational_quadratic_spline, spline_parameters

__all__ = ["Flow", "FlowDistribution", "FlowTransform", "Reverse", "PlanarTransform", "MADE", "IAFTransform",
           "AffineCoupling", "SplineCoupling", "rational_quadratic_spline", "spline_parameters", "make_flow",
           "FLOW_KINDS"]
