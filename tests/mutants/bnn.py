"""Classic bugs for scripts/mutation_check.py: each mutant must make the listed tests fail."""

_EQ = "tests/test_bnn_equations.py::"
_MOMENTS = _EQ + "test_training_output_has_the_exact_mean_and_variance"
_FLIPOUT = _EQ + "test_flipout_fourth_moments_show_both_sign_flips"
_GRADIENT = _EQ + "test_pathwise_gradient_is_unbiased"

MUTANTS = [
    # -- the ELBO's scaling (bnn/elbo.py) ------------------------------------------------------------------------
    {
        "name": "bnn-kl-over-batch-not-data-set",
        "path": "bnn/elbo.py",
        "find": "loss = nll + kl * (kl_weight / n_data)",
        "replace": "loss = nll + kl * (kl_weight / batch)",
        "tests": [_EQ + "test_kl_gradient_is_scaled_by_one_over_the_data_set_size_whatever_the_batch"],
    },
    {
        "name": "bnn-elbo-kl-sign-flipped",
        "path": "bnn/elbo.py",
        "find": "loss = nll + kl * (kl_weight / n_data)",
        "replace": "loss = nll - kl * (kl_weight / n_data)",
        "tests": [_EQ + "test_sampled_elbo_matches_a_hand_computation"],
    },
    {
        "name": "bnn-elbo-reported-terms-not-detached",
        "path": "bnn/elbo.py",
        "find": "nll=nll.detach(), kl=kl.detach()",
        "replace": "nll=nll, kl=kl",
        "tests": [_EQ + "test_sampled_elbo_matches_a_hand_computation"],
    },
    {
        "name": "bnn-blundell-weight-2-to-the-i",
        "path": "bnn/elbo.py",
        "find": "log_pi = -batch_index * math.log(2.0)",
        "replace": "log_pi = (batch_index - n_batches) * math.log(2.0)",
        "tests": [_EQ + "test_blundell_weights_are_2_to_the_m_minus_i_over_2_to_the_m_minus_1"],
    },
    # -- KL -------------------------------------------------------------------------------------------------------
    {
        "name": "bnn-mc-kl-sign-flipped",
        "path": "bnn/layers.py",
        "find": "kl_w = q_w.log_prob(w) - self.prior.log_prob(w)",
        "replace": "kl_w = self.prior.log_prob(w) - q_w.log_prob(w)",
        "tests": ["tests/test_bnn_layers.py::test_mc_kl_uses_the_weight_sample_of_the_forward_pass"],
    },
    {
        "name": "bnn-fused-kl-log-sigma-sign-flipped",
        "path": "bnn/_backends.py",
        "find": "(math.log(scale_p) - 0.5) - sigma.log().sum()",
        "replace": "(math.log(scale_p) - 0.5) + sigma.log().sum()",
        "tests": [_EQ + "test_closed_form_kl_and_its_gradient_match_torch_distributions"],
    },
    {  # the old test asserted total == expected + (total - expected): it could not see this
        "name": "bnn-model-kl-counts-the-first-layer-twice",
        "path": "bnn/layers.py",
        "find": "for layer in layers[1:]:",
        "replace": "for layer in layers:",
        "tests": ["tests/test_bnn_layers.py::"
                  "test_model_kl_sums_layers_and_mixture_prior_under_local_has_kl_and_gradient"],
    },
    {
        "name": "bnn-model-kl-detaches-later-layers",
        "path": "bnn/layers.py",
        "find": "kl = kl + layer.kl_divergence()",
        "replace": "kl = kl + layer.kl_divergence().detach()",
        "tests": [_EQ + "test_model_kl_is_the_sum_of_the_layers_and_each_forward_feeds_one_kl"],
    },
    # -- local reparameterization: variance x^2 sigma^2, on each path that has its own code --------------------------
    {
        "name": "bnn-local-variance-sigma-not-squared-eager",
        "path": "bnn/_backends.py",
        "find": "return sigma.square(), None  # (3)",
        "replace": "return sigma, None  # (3)",
        "tests": [_MOMENTS + "[linear-local-eager]"],
    },
    {
        "name": "bnn-local-variance-sigma-not-squared-fused",
        "path": "bnn/_backends.py",
        "find": "out = sigma.square()  # (3)",
        "replace": "out = sigma  # (3)",
        "tests": [_MOMENTS + "[linear-local-fused]"],
    },
    {  # the core's native kernel (recompiled on first use: a new source hash)
        "name": "bnn-local-variance-sigma-not-squared-native",
        "path": "reparam_apps/_native/gaussian_posterior.c",
        "find": "(kind == 1 ? sigma * z : sigma * sigma));",
        "replace": "(kind == 1 ? sigma * z : sigma));",
        "tests": [_MOMENTS + "[linear-local-native]"],
    },
    # -- Flipout: both sign flips (one line serves every backend) --------------------------------------------------
    {
        "name": "bnn-flipout-no-output-signs",
        "path": "bnn/layers.py",
        "find": "self._affine(x * sign_in, self._masked(terms.weight), terms.bias) * sign_out",
        "replace": "self._affine(x * sign_in, self._masked(terms.weight), terms.bias)",
        "tests": [_FLIPOUT + "[eager]"],
    },
    {
        "name": "bnn-flipout-no-input-signs",
        "path": "bnn/layers.py",
        "find": "self._affine(x * sign_in, self._masked(terms.weight), terms.bias) * sign_out",
        "replace": "self._affine(x, self._masked(terms.weight), terms.bias) * sign_out",
        "tests": [_FLIPOUT + "[fused]"],
    },
    # -- a missing gradient (an extra detach, a non-reparameterized sample) ------------------------------------------
    {
        "name": "bnn-reparam-eager-sample-not-reparameterized",
        "path": "bnn/_backends.py",
        "find": "w = q.rsample() if eps is None",
        "replace": "w = q.sample() if eps is None",
        "tests": [_GRADIENT + "[reparam-eager]"],
    },
    {
        "name": "bnn-local-mean-detached",
        "path": "bnn/layers.py",
        "find": "gamma = self._affine(x, self._masked(self.weight_mu), self.bias_mu)",
        "replace": "gamma = self._affine(x, self._masked(self.weight_mu.detach()), self.bias_mu)",
        "tests": [_GRADIENT + "[local-eager]"],
    },
    {
        "name": "bnn-local-variance-detached",
        "path": "bnn/layers.py",
        "find": "delta = self._affine(x.square(), self._masked(terms.weight), terms.bias)",
        "replace": "delta = self._affine(x.square(), self._masked(terms.weight.detach()), terms.bias)",
        "tests": [_GRADIENT + "[local-fused]"],
    },
    # -- bayesianize names the modules it leaves deterministic ----------------------------------------------------
    {
        "name": "bnn-bayesianize-silent-about-deterministic-modules",
        "path": "bnn/convert.py",
        "find": "    if left:\n",
        "replace": "    if False:\n",
        "tests": ["tests/test_bnn_layers.py::test_bayesianize_warns_about_every_module_it_leaves_deterministic"],
    },
]
