"""Classic bugs of the flow equations for scripts/mutation_check.py: each must make its tests fail."""

_JAC = "tests/test_flows.py::test_log_det_matches_the_autograd_jacobian"
_INV = "tests/test_flows.py::test_inverse_round_trip_and_its_log_det"
MUTANTS = [
    {
        "name": "flow-planar-log-det-sign",
        "path": "reparam_apps/flows/planar.py",
        "find": "log_det = torch.log1p((1.0 - h.square()) * wu)  # eq. 11-12",
        "replace": "log_det = torch.log1p(-(1.0 - h.square()) * wu)  # eq. 11-12",
        "tests": [_JAC],
    },
    {
        "name": "flow-planar-u-hat-without-the-minus-one",
        "path": "reparam_apps/flows/planar.py",
        "find": "(F.softplus(wu) - 1.0 - wu)",
        "replace": "(F.softplus(wu) - wu)",
        "tests": ["tests/test_flows.py::test_default_planar_is_invertible_whatever_u"],
    },
    {
        "name": "flow-iaf-mixes-m-with-sigma-not-one-minus-sigma",
        "path": "reparam_apps/flows/autoregressive.py",
        "find": "y = sigma * z + (1.0 - sigma) * m  # eq. 14",
        "replace": "y = sigma * z + sigma * m  # eq. 14",
        "tests": [_INV],
    },
    {
        "name": "flow-iaf-log-det-of-one-minus-sigma",
        "path": "reparam_apps/flows/autoregressive.py",
        "find": "return y, F.logsigmoid(s).sum(-1)  # eq. 15",
        "replace": "return y, F.logsigmoid(-s).sum(-1)  # eq. 15",
        "tests": [_JAC],
    },
    {
        "name": "flow-made-mask-not-strict",
        "path": "reparam_apps/flows/autoregressive.py",
        "find": "(out_deg[:, None] > prev[None, :])",
        "replace": "(out_deg[:, None] >= prev[None, :])",
        "tests": [_JAC],
    },
    {
        "name": "flow-affine-inverse-log-det-sign",
        "path": "reparam_apps/flows/coupling.py",
        "find": "return (xb - t) * torch.exp(-s), s",
        "replace": "return (xb - t) * torch.exp(-s), -s",
        "tests": [_INV],
    },
    {
        "name": "flow-affine-log-det-missing",
        "path": "reparam_apps/flows/coupling.py",
        "find": "return xb * torch.exp(s) + t, s",
        "replace": "return xb * torch.exp(s) + t, 0 * s",
        "tests": [_JAC],
    },
    {
        "name": "flow-spline-derivative-middle-term",
        "path": "reparam_apps/flows/spline.py",
        "find": "(d_k1 * xi.square() + 2 * s * one_m + d_k * (1 - xi).square())",
        "replace": "(d_k1 * xi.square() + s * one_m + d_k * (1 - xi).square())",
        "tests": ["tests/test_flows.py::test_spline_matches_its_derivative_and_is_identity_outside"],
    },
    {
        "name": "flow-log-density-adds-the-log-det",
        "path": "reparam_apps/flows/base.py",
        "find": "return z, log_q0 - log_det",
        "replace": "return z, log_q0 + log_det",
        "tests": ["tests/test_flows.py::test_noise_side_log_density_equals_the_inverse_one"],
    },
    {
        "name": "flow-log-density-forgets-the-base-scale",
        "path": "reparam_apps/flows/base.py",
        "find": "log_q0 = self.base._log_prob_from_noise(eps, z0).sum(-1)",
        "replace": "log_q0 = self.base._log_prob_from_noise(eps, eps).sum(-1) + self.base.scale.log().sum(-1)",
        "tests": ["tests/test_flows.py::test_noise_side_log_density_equals_the_inverse_one"],
    },
]
