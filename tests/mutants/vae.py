"""Classic bugs for scripts/mutation_check.py: each mutant must make the listed tests fail.

The VAE's bounds and score-function surrogate (vae/base.py, vae/gaussian.py, vae/categorical.py), the
Gaussian KL it uses (reparam_apps/kl.py) and the Gumbel-Softmax relaxation it trains through
(reparam_apps/distributions/gumbel_softmax.py). If a file is split, move each ``path`` to the file that
then holds the text.
"""

_EQ = "tests/test_vae_equations.py::"
_IWAE = [_EQ + "test_iwae_starts_at_the_elbo_increases_with_k_and_converges_to_log_evidence",
         _EQ + "test_categorical_elbo_and_iwae_against_enumeration"]
_SF_GAUSS = _EQ + "test_gaussian_score_function_loss_is_the_reinforce_surrogate"
_SF_CAT = _EQ + "test_categorical_score_function_loss_is_the_reinforce_surrogate"
_GUMBEL = _EQ + "test_gumbel_softmax_loss_and_gradient_against_an_independent_relaxation"

MUTANTS = [
    # -- the importance-weighted bound (3) ------------------------------------------------------------------------
    {
        "name": "vae-iwae-mean-of-log-weights",
        "path": "vae/base.py",
        "find": "partial.append(log_w.logsumexp(0))",
        "replace": "partial.append(log_w.mean(0) + math.log(log_w.shape[0]))",
        "tests": _IWAE,
    },
    {
        "name": "vae-iwae-missing-log-k",
        "path": "vae/base.py",
        "find": "torch.stack(partial).logsumexp(0) - math.log(k)",
        "replace": "torch.stack(partial).logsumexp(0)",
        "tests": _IWAE,
    },
    # -- the score-function surrogate (5) -------------------------------------------------------------------------
    {
        "name": "vae-loo-baseline-includes-own-sample",
        "path": "vae/base.py",
        "find": "b = (f.sum(0, keepdim=True) - f) / (s - 1)",
        "replace": "b = f.mean(0, keepdim=True)",
        "tests": [_SF_GAUSS, _SF_CAT],
    },
    {
        "name": "vae-score-function-surrogate-sign-flipped",
        "path": "vae/base.py",
        "find": "return ((f - b).detach() * log_q).mean(0)",
        "replace": "return ((b - f).detach() * log_q).mean(0)",
        "tests": [_SF_GAUSS, _SF_CAT],
    },
    {
        "name": "vae-running-mean-updated-before-use",
        "path": "vae/base.py",
        "find": ("            b = self._running_baseline(f)\n"
                 "            if self.training:\n"
                 "                self._update_running_mean(f)\n"),
        "replace": ("            if self.training:\n"
                    "                self._update_running_mean(f)\n"
                    "            b = self._running_baseline(f)\n"),
        "tests": [_SF_GAUSS],
    },
    {
        "name": "vae-running-mean-first-batch-includes-own-sample",
        "path": "vae/base.py",
        "find": "first = (f.sum() - f) / (m - 1) if m > 1 else torch.zeros_like(f)",
        "replace": "first = f.mean().expand_as(f)",
        "tests": [_SF_GAUSS],
    },
    {
        "name": "vae-mc-kl-sign-in-score-function",
        "path": "vae/gaussian.py",
        "find": "f = rec - beta * kl_s  # the whole ELBO integrand",
        "replace": "f = rec + beta * kl_s  # the whole ELBO integrand",
        "tests": [_SF_GAUSS],
    },
    # -- KL terms -------------------------------------------------------------------------------------------------
    {
        "name": "vae-analytic-kl-half-missing",
        "path": "reparam_apps/kl.py",
        "find": "return 0.5 * (log_var.exp() + loc.square() - 1.0 - log_var)",
        "replace": "return (log_var.exp() + loc.square() - 1.0 - log_var)",
        "tests": [_EQ + "test_elbo_estimate_and_analytic_kl_match_the_closed_form"],
    },
    {
        "name": "vae-analytic-kl-log-var-sign",
        "path": "reparam_apps/kl.py",
        "find": "return 0.5 * (log_var.exp() + loc.square() - 1.0 - log_var)",
        "replace": "return 0.5 * (log_var.exp() + loc.square() - 1.0 + log_var)",
        "tests": [_EQ + "test_elbo_estimate_and_analytic_kl_match_the_closed_form"],
    },
    {
        "name": "vae-categorical-kl-sign-of-log-k",
        "path": "vae/categorical.py",
        "find": "return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])",
        "replace": "return (log_q.exp() * log_q).sum(-1) - math.log(logits.shape[-1])",
        "tests": [_EQ + "test_categorical_elbo_and_iwae_against_enumeration"],
    },
    # -- Gumbel-Softmax and straight-through ----------------------------------------------------------------------
    {
        "name": "vae-gumbel-softmax-temperature-multiplied",
        "path": "reparam_apps/distributions/gumbel_softmax.py",
        "find": "(self.logits + eps) / self.temperature",
        "replace": "(self.logits + eps) * self.temperature",
        "tests": [_GUMBEL],
    },
    {
        "name": "vae-straight-through-forward-not-hard",
        "path": "reparam_apps/distributions/gumbel_softmax.py",
        "find": "return y_hard - y_soft.detach() + y_soft",
        "replace": "return y_soft",
        "tests": [_GUMBEL],
    },
    {
        "name": "vae-straight-through-backward-not-soft",
        "path": "reparam_apps/distributions/gumbel_softmax.py",
        "find": "return y_hard - y_soft.detach() + y_soft",
        "replace": "return y_hard",
        "tests": [_GUMBEL],
    },
    {
        "name": "vae-temperature-schedule-ignores-floor",
        "path": "vae/categorical.py",
        "find": "return max(self.temperature_min, self.temperature * math.exp(-self.anneal_rate * step))",
        "replace": "return self.temperature * math.exp(-self.anneal_rate * step)",
        "tests": ["tests/test_vae_model.py::test_temperature_annealing_schedule"],
    },
]
