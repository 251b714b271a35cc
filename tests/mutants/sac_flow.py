"""Classic bugs of SAC's flow policy for scripts/mutation_check.py: each mutant must make its tests fail."""

_T = "tests/test_sac_flow_policy.py"
_WHOLE_MAP = f"{_T}::test_log_pi_is_the_change_of_variables_of_the_whole_map"
MUTANTS = [
    {
        "name": "sac-flow-squash-log-det-sign",
        "path": "agents/networks.py",
        "find": "return action, log_q - log_det",
        "replace": "return action, log_q + log_det",
        "tests": [_WHOLE_MAP + "[iaf]"],
    },
    {
        "name": "sac-flow-base-log-density-not-from-the-noise",
        "path": "agents/networks.py",
        "find": "u, log_q = self.pre_squash.rsample_and_log_prob(sample_shape)",
        "replace": "u = self.pre_squash.rsample(sample_shape); log_q = self.pre_squash.base.log_prob(u)",
        "tests": [_WHOLE_MAP + "[iaf]"],
    },
    {
        "name": "sac-flow-context-not-passed",
        "path": "agents/networks.py",
        "find": "self.flow(mu, std, context=h, validate_args=False)",
        "replace": "self.flow(mu, std, context=torch.zeros_like(h), validate_args=False)",
        "tests": [_WHOLE_MAP + "[iaf]"],
    },
    {
        "name": "sac-flow-context-detached-from-the-trunk",
        "path": "agents/networks.py",
        "find": "self.flow(mu, std, context=h, validate_args=False)",
        "replace": "self.flow(mu, std, context=h.detach(), validate_args=False)",
        "tests": [f"{_T}::test_pathwise_gradient_reaches_the_flow_and_matches_finite_differences"],
    },
    {
        "name": "sac-flow-mode-from-the-base-mean-as-noise",
        "path": "agents/networks.py",
        "find": "self.pre_squash.transform(torch.zeros_like(self.loc))",
        "replace": "self.pre_squash.transform(self.loc)",
        "tests": [_WHOLE_MAP + "[iaf]"],
    },
    {
        "name": "sac-flow-squash-without-the-box-log-det",
        "path": "reparam_apps/distributions/tanh_normal.py",
        "find": "(log_det + box.log_half_range).sum(-1)",
        "replace": "log_det.sum(-1)",
        "tests": [f"{_T}::test_tanh_squash_matches_torch_transforms_and_stays_finite"],
    },
]
