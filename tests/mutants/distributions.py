"""Classic bugs for scripts/mutation_check.py: each mutant must make the listed tests fail."""

_D = "tests/test_distributions.py::"
_T = "tests/test_distributions_torch.py::"
_TANH = "reparam_apps/distributions/tanh_normal.py"
_LS = "reparam_apps/distributions/loc_scale.py"
_KS = _D + "test_samples_pass_ks_test_and_moments"

MUTANTS = [
    # -- TanhNormal's log-det (2)-(3) -----------------------------------------------------------------------------
    {
        "name": "dist-tanh-logdet-softplus-sign",
        "path": _TANH,
        "find": "return 2.0 * (LOG2 - abs_u - F.softplus(-2.0 * abs_u))",
        "replace": "return 2.0 * (LOG2 - abs_u + F.softplus(-2.0 * abs_u))",
        "tests": [_D + "test_tanh_log_det_jacobian_exact_and_finite"],
    },
    {
        "name": "dist-tanh-logdet-softplus-argument",
        "path": _TANH,
        "find": "return 2.0 * (LOG2 - abs_u - F.softplus(-2.0 * abs_u))",
        "replace": "return 2.0 * (LOG2 - abs_u - F.softplus(-abs_u))",
        "tests": [_D + "test_tanh_log_det_jacobian_exact_and_finite"],
    },
    {
        "name": "dist-tanh-logdet-missing-log2",
        "path": _TANH,
        "find": "return 2.0 * (LOG2 - abs_u - F.softplus(-2.0 * abs_u))",
        "replace": "return 2.0 * (-abs_u - F.softplus(-2.0 * abs_u))",
        "tests": [_D + "test_tanh_log_det_jacobian_exact_and_finite"],
    },
    {
        "name": "dist-tanh-fused-missing-log2-constant",
        "path": _TANH,
        "find": "self._log_q_const = -(HALF_LOG_2PI + 2 * LOG2) * self.event_shape.numel() - log_volume",
        "replace": "self._log_q_const = -HALF_LOG_2PI * self.event_shape.numel() - log_volume",
        "tests": [_D + "test_tanh_normal_log_prob_matches_sb3_and_torch"],
    },
    {
        "name": "dist-tanh-fused-logdet-sign",
        "path": _TANH,
        "find": "torch.logaddexp(u, -u), alpha=2.0)",
        "replace": "torch.logaddexp(u, -u), alpha=-2.0)",
        "tests": [_D + "test_tanh_normal_log_prob_matches_sb3_and_torch"],
    },
    {
        "name": "dist-tanh-fused-backward-logdet-gradient",
        "path": _TANH,
        "find": "g_u = torch.addcmul(g_u, a, g_lq, value=2.0)",
        "replace": "g_u = torch.addcmul(g_u, a, g_lq, value=1.0)",
        "tests": [_D + "test_tanh_normal_fused_gradient_matches_plain_ops"],
    },
    {
        "name": "dist-tanh-log-prob-logdet-sign",
        "path": _TANH,
        "find": "log_det = log_minus + log_plus",
        "replace": "log_det = log_minus - log_plus",
        "tests": [_D + "test_tanh_normal_log_prob_as_the_action_nears_the_bounds_matches_float64"],
    },
    {
        "name": "dist-tanh-log-prob-through-the-rounded-action",
        "path": _TANH,
        "find": "one_minus, one_plus = (self.high - value) / self._half_range, (value - self.low) / self._half_range",
        "replace": "one_minus, one_plus = 1.0 - (value - self._mid) / self._half_range, "
                   "1.0 + (value - self._mid) / self._half_range",
        "tests": [_D + "test_tanh_normal_log_prob_as_the_action_nears_the_bounds_matches_float64"],
    },
    {
        "name": "dist-tanh-cdf-unclamped-beyond-the-bounds",
        "path": _TANH,
        "find": "u = torch.atanh(self._unsquash(value).clamp(-1.0, 1.0))",
        "replace": "u = torch.atanh(self._unsquash(value))",
        "tests": [_T + "test_tanh_normal_cdf_at_and_beyond_bounds_and_icdf_round_trip"],
    },
    # -- location-scale families: densities, noise, cdf/icdf ----------------------------------------------------
    {
        "name": "dist-laplace-log-prob-normaliser",
        "path": _LS,
        "find": "return -eps.abs() - LOG2",
        "replace": "return -eps.abs() + LOG2",
        "tests": [_T + "test_shapes_support_constraints_and_torch_equivalent[Laplace-0]"],
    },
    {
        "name": "dist-laplace-noise-one-sided",
        "path": _LS,
        "find": "u = 2.0 * uniform_open(self._noise_shape(sample_shape), self.loc) - 1.0",
        "replace": "u = uniform_open(self._noise_shape(sample_shape), self.loc) - 1.0",
        "tests": [_KS + "[Laplace]"],
    },
    {
        "name": "dist-logistic-log-prob-one-softplus",
        "path": _LS,
        "find": "return -eps - 2.0 * F.softplus(-eps)",
        "replace": "return -eps - F.softplus(-eps)",
        "tests": [_T + "test_shapes_support_constraints_and_torch_equivalent[Logistic-0]"],
    },
    {
        "name": "dist-logistic-noise-sign",
        "path": _LS,
        "find": "return u.log() - torch.log1p(-u)",
        "replace": "return u.log() + torch.log1p(-u)",
        "tests": [_KS + "[Logistic]"],
    },
    {
        "name": "dist-gumbel-log-prob-exp-sign",
        "path": _LS,
        "find": "return -(eps + torch.exp(-eps))",
        "replace": "return -(eps + torch.exp(eps))",
        "tests": [_T + "test_shapes_support_constraints_and_torch_equivalent[Gumbel-0]"],
    },
    {
        "name": "dist-gumbel-noise-min-stable",
        "path": _LS,
        "find": "return -torch.log(-torch.log(uniform_open(self._noise_shape(sample_shape), self.loc)))",
        "replace": "return torch.log(-torch.log(uniform_open(self._noise_shape(sample_shape), self.loc)))",
        "tests": [_KS + "[Gumbel]"],
    },
    {
        "name": "dist-icdf-divides-by-scale",
        "path": _LS,
        "find": "return self.transform(self._base_icdf(value))  # (2)",
        "replace": "return self.loc + self._base_icdf(value) / self.scale",
        "tests": [_T + "test_cdf_icdf_moments_mode_match_scipy[Normal]"],
    },
    {
        "name": "dist-cdf-multiplies-by-scale",
        "path": _LS,
        "find": "return self._base_cdf(self._standardize(value))  # (2)",
        "replace": "return self._base_cdf((value - self.loc) * self.scale)",
        "tests": [_T + "test_cdf_icdf_moments_mode_match_scipy[Laplace]"],
    },
    {
        "name": "dist-normal-cdf-erfc-sign",
        "path": _LS,
        "find": "return 0.5 * torch.erfc(eps * -_SQRT_HALF)",
        "replace": "return 0.5 * torch.erfc(eps * _SQRT_HALF)",
        "tests": [_T + "test_cdf_icdf_moments_mode_match_scipy[Normal]"],
    },
    {
        "name": "dist-lognormal-mode-sign",
        "path": _LS,
        "find": "return torch.exp(self.loc - self.scale.square())",
        "replace": "return torch.exp(self.loc + self.scale.square())",
        "tests": [_T + "test_cdf_icdf_moments_mode_match_scipy[LogNormal]"],
    },
    # -- GumbelSoftmax --------------------------------------------------------------------------------------------
    {
        "name": "dist-concrete-score-sign",
        "path": "reparam_apps/distributions/gumbel_softmax.py",
        "find": "score = self.logits - self.temperature * log_y",
        "replace": "score = self.logits + self.temperature * log_y",
        "tests": [_D + "test_gumbel_softmax_with_a_tiny_probability_is_finite_and_correct"],
    },
    # -- KL registrations and closed forms ------------------------------------------------------------------------
    {
        "name": "dist-kl-registration-argument-order",
        "path": "reparam_apps/kl.py",
        "find": "return sum_rightmost(elementwise(vp[0], vp[1], vq[0], vq[1]), vp[2])",
        "replace": "return sum_rightmost(elementwise(vq[0], vq[1], vp[0], vp[1]), vp[2])",
        "tests": [_T + "test_registered_kl_matches_torch_for_every_combination[Laplace]"],
    },
    {
        "name": "dist-kl-tanh-argument-order",
        "path": "reparam_apps/kl.py",
        "find": "kl_normal_normal(p.loc, p.scale, q.loc, q.scale)",
        "replace": "kl_normal_normal(q.loc, q.scale, p.loc, p.scale)",
        "tests": [_T + "test_closed_form_kl_matches_monte_carlo[TanhNormal]"],
    },
    {
        "name": "dist-kl-gumbel-gamma-argument",
        "path": "reparam_apps/kl.py",
        "find": "torch.exp(torch.lgamma(1.0 + ratio) - d)",
        "replace": "torch.exp(torch.lgamma(ratio) - d)",
        "tests": [_T + "test_closed_form_kl_matches_monte_carlo[Gumbel]"],
    },
    {
        "name": "dist-kl-laplace-exponent-scale",
        "path": "reparam_apps/kl.py",
        "find": "ratio * torch.exp(-d / scale_q)",
        "replace": "ratio * torch.exp(-d / scale_p)",
        "tests": [_T + "test_closed_form_kl_matches_monte_carlo[Laplace]"],
    },
    # -- validation -----------------------------------------------------------------------------------------------
    {
        "name": "dist-validation-ignores-the-support",
        "path": "reparam_apps/distributions/base.py",
        "find": "inside = self._elementwise_support.check(value) & ~torch.isinf(value)",
        "replace": "inside = ~torch.isinf(value)",
        "tests": [_T + "test_nan_values_raise_and_values_outside_the_support_get_minus_inf[TanhNormal]"],
    },
    {
        "name": "dist-validation-misses-minus-inf",
        "path": "reparam_apps/distributions/base.py",
        "find": "if math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or not pos):",
        "replace": "if math.isfinite(hi) and (lo > 0 or not pos):",
        "tests": [_T + "test_nan_inf_and_nonpositive_parameters_are_named"],
    },
]
