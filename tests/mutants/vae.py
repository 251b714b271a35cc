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
_FLOWS = "tests/test_vae_flows.py::"

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
    # -- the flow posterior (vae/gaussian.py eqs. (6)-(8)) ---------------------------------------------------------
    {
        "name": "vae-flow-training-kl-from-the-base-density",
        "path": "vae/gaussian.py",
        "find": "kl = mc_kl(q, prior, z=z, log_q=log_q)",
        "replace": "kl = mc_kl(q.base, prior, z=z)",
        "tests": [_FLOWS + "test_training_loss_uses_that_log_q_and_a_monte_carlo_kl"],
    },
    {
        "name": "vae-flow-elbo-kl-sign",
        "path": "vae/gaussian.py",
        "find": "kl = (log_q - self.log_prior(z)).mean(0)  # eq. (8)",
        "replace": "kl = (self.log_prior(z) - log_q).mean(0)  # eq. (8)",
        "tests": [_FLOWS + "test_iwae_1_equals_the_elbo_and_iwae_k_is_the_log_mean_weight"],
    },
    {
        "name": "vae-flow-context-dropped",
        "path": "vae/gaussian.py",
        "find": "return self.flow(mu, sigma, context=h, validate_args=False)",
        "replace": "return self.flow(mu, sigma, context=torch.zeros_like(h), validate_args=False)",
        "tests": [_FLOWS + "test_per_sample_log_q_is_the_base_density_minus_the_steps_log_dets"],
    },
    {
        "name": "vae-flow-context-detached-from-the-encoder",
        "path": "vae/nets.py",
        "find": "return self.net[-1](h), h",
        "replace": "return self.net[-1](h), h.detach()",
        "tests": [_FLOWS + "test_per_sample_log_q_is_the_base_density_minus_the_steps_log_dets"],
    },
    {
        "name": "vae-flow-score-function-log-q-along-the-sampling-path",
        "path": "vae/gaussian.py",
        "find": ("        z = q.sample((self.sf_samples,))  # (S, B, L)\n"
                 "        log_q = q.log_prob(z)  # (S, B), differentiable in the encoder "
                 "(a flow: through its inverse)\n"),
        "replace": ("        z, log_q = q.rsample_and_log_prob((self.sf_samples,))\n"
                    "        z = z.detach()\n"),
        "tests": [_FLOWS + "test_score_function_loss_with_a_flow_is_the_reinforce_surrogate"],
    },
    {
        "name": "vae-flow-reconstruct-at-the-base-mean",
        "path": "vae/gaussian.py",
        "find": "return self.decode(self._q(mu, log_var, h).transform(torch.zeros_like(mu)))",
        "replace": "return self.decode(mu)",
        "tests": [_FLOWS + "test_flow_vae_checkpoint_round_trips"],
    },
    {
        "name": "vae-flow-cli-kl-default-stays-analytic",
        "path": "vae/config.py",
        "find": 'defaults["kl"] = "mc"',
        "replace": "pass",
        "tests": [_FLOWS + "test_a_flow_posterior_defaults_to_the_monte_carlo_kl_and_the_model_refuses_bad_input"],
    },
]
