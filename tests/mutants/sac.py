"""Classic bugs for scripts/mutation_check.py: each mutant must make the listed tests fail.

One mutant per classic SAC bug; every ``find`` occurs exactly once in its ``path`` (``agents/sac.py`` holds
the update and the rollout, ``agents/networks.py`` Polyak averaging).
"""

EQ = "tests/test_sac_equations.py"
UPDATE = f"{EQ}::test_update_losses_and_isolated_gradients"
UNIT = "tests/test_sac.py"

MUTANTS = [
    {
        "name": "sac-target-from-online-critic",
        "path": "agents/sac.py",
        "find": "self.critic_target(next_obs, next_a)",
        "replace": "self.critic(next_obs, next_a)",
        "tests": [f"{EQ}::test_target_matches_hand_computation_with_target_critics"],
    },
    {
        "name": "sac-target-ignores-termination",
        "path": "agents/sac.py",
        "find": "self.config.gamma * (1.0 - term) * (",
        "replace": "self.config.gamma * (",
        "tests": [f"{EQ}::test_target_matches_hand_computation_with_target_critics"],
    },
    {
        "name": "sac-buffer-stores-truncation-as-terminal",
        "path": "agents/sac.py",
        "find": "self.buffer.add(obs, actions, rew, real_next, term)",
        "replace": "self.buffer.add(obs, actions, rew, real_next, trunc)",
        "tests": [f"{EQ}::test_truncation_bootstraps_and_termination_does_not_through_learn"],
    },
    {
        "name": "sac-buffer-stores-done-as-terminal",
        "path": "agents/sac.py",
        "find": "self.buffer.add(obs, actions, rew, real_next, term)",
        "replace": "self.buffer.add(obs, actions, rew, real_next, done)",
        "tests": [f"{EQ}::test_truncation_bootstraps_and_termination_does_not_through_learn"],
    },
    {
        "name": "sac-target-with-autograd",
        "path": "agents/sac.py",
        "find": "    @torch.no_grad()\n    def compute_target(",
        "replace": "    def compute_target(",
        "tests": [EQ],
    },
    {
        "name": "sac-actor-action-detached",
        "path": "agents/sac.py",
        "find": "self.critic(obs, a_pi, detach_params=True)",
        "replace": "self.critic(obs, a_pi.detach(), detach_params=True)",
        "tests": [UPDATE],
    },
    {
        "name": "sac-actor-loss-trains-critics",
        "path": "agents/sac.py",
        "find": "self.critic(obs, a_pi, detach_params=True)",
        "replace": "self.critic(obs, a_pi, detach_params=False)",
        "tests": [UPDATE],
    },
    {
        "name": "sac-temperature-log-pi-not-detached",
        "path": "agents/sac.py",
        "find": "(log_pi.detach() + self.target_entropy)",
        "replace": "(log_pi + self.target_entropy)",
        "tests": [UPDATE],
    },
    {
        "name": "sac-temperature-loss-sign",
        "path": "agents/sac.py",
        "find": "loss = loss - (self.log_alpha * (",
        "replace": "loss = loss + (self.log_alpha * (",
        "tests": [UPDATE],
    },
    {
        "name": "sac-polyak-tau-swapped",
        "path": "agents/networks.py",
        "find": "torch._foreach_lerp_(target_params, params, tau)",
        "replace": "torch._foreach_lerp_(target_params, params, 1.0 - tau)",
        "tests": [f"{EQ}::test_update_polyak_averages_the_target_critics"],
    },
    {
        "name": "sac-polyak-direction-swapped",
        "path": "agents/sac.py",
        "find": "polyak_update(self._critic_params, self._target_params, cfg.tau)",
        "replace": "polyak_update(self._target_params, self._critic_params, cfg.tau)",
        "tests": [f"{EQ}::test_update_polyak_averages_the_target_critics"],
    },
    {
        "name": "sac-target-max-over-critics",
        "path": "agents/sac.py",
        "find": "self.critic_target(next_obs, next_a).min(dim=0).values",
        "replace": "self.critic_target(next_obs, next_a).max(dim=0).values",
        "tests": [f"{EQ}::test_target_matches_hand_computation_with_target_critics"],
    },
    {
        "name": "sac-actor-mean-over-critics",
        "path": "agents/sac.py",
        "find": "self.critic(obs, a_pi, detach_params=True).min(dim=0).values",
        "replace": "self.critic(obs, a_pi, detach_params=True).mean(dim=0)",
        "tests": [UPDATE],
    },
    {
        "name": "sac-target-without-alpha",
        "path": "agents/sac.py",
        "find": "(q_next - alpha * next_log_pi)",
        "replace": "(q_next - next_log_pi)",
        "tests": [f"{EQ}::test_target_matches_hand_computation_with_target_critics"],
    },
    {
        "name": "sac-alpha-not-detached",
        "path": "agents/sac.py",
        "find": "alpha = self.log_alpha.detach().exp()",
        "replace": "alpha = self.log_alpha.exp()",
        "tests": [UPDATE],
    },
    {
        "name": "sac-target-gets-log-alpha",
        "path": "agents/sac.py",
        "find": "self.compute_target(rew, next_obs, term, alpha)",
        "replace": "self.compute_target(rew, next_obs, term, self.log_alpha.detach())",
        "tests": [UPDATE],
    },
    {
        "name": "sac-critic-loss-mean-over-critics",
        "path": "agents/sac.py",
        "find": "0.5 * (q - y).square().mean(dim=1).sum()",
        "replace": "0.5 * (q - y).square().mean()",
        "tests": [UPDATE],
    },
    {
        "name": "sac-discount-dropped",
        "path": "agents/sac.py",
        "find": "rew + self.config.gamma * (1.0 - term)",
        "replace": "rew + (1.0 - term)",
        "tests": [f"{EQ}::test_target_matches_hand_computation_with_target_critics"],
    },
    # -- the guards and the resume path (agents/sac.py, persistence.py, cli.py) -----------------------------------
    {
        "name": "sac-nan-action-sent-to-the-env",
        "path": "agents/sac.py",
        "find": "if not np.isfinite(actions).all():",
        "replace": "if False:",
        "tests": [f"{UNIT}::test_a_nan_reward_stops_training_before_a_nan_action_reaches_the_env"],
    },
    {
        "name": "sac-logged-losses-not-checked",
        "path": "agents/sac.py",
        "find": "ex.check_finite_values(dict(zip(STAT_NAMES, stats, strict=True)), self.num_timesteps)",
        "replace": "pass",
        "tests": [f"{UNIT}::test_a_nan_reward_stops_training_before_a_nan_action_reaches_the_env"],
    },
    {
        "name": "sac-checkpoint-of-a-nan-model",
        "path": "agents/cli.py",
        "find": "check=model.networks())",
        "replace": "check=())",
        "tests": ["tests/test_sac_cli.py::test_a_nan_model_is_never_checkpointed"],
    },
    {
        "name": "sac-library-checkpoint-of-a-nan-model",
        "path": "agents/callbacks.py",
        "find": "ex.check_finite_parameters(model.networks(), model.num_timesteps, checkpoint=kept)",
        "replace": "pass",
        "tests": ["tests/test_sac_cli.py::test_a_nan_model_is_never_checkpointed"],
    },
    {
        "name": "sac-resume-drops-the-log-window",
        "path": "agents/persistence.py",
        "find": "model._window.update(",
        "replace": "dict(",
        "tests": [f"{UNIT}::test_learn_continues_after_load_identically"],
    },
    {
        "name": "sac-resume-without-the-torch-rng",
        "path": "agents/persistence.py",
        "find": 'torch.set_rng_state(tr["torch_rng"])',
        "replace": "None",
        "tests": [f"{UNIT}::test_learn_continues_after_load_identically"],
    },
    {
        "name": "sac-resume-drops-the-evaluation-state",
        "path": "agents/cli.py",
        "find": 'evaluation.load_state_dict(state["eval"])',
        "replace": "None",
        "tests": ["tests/test_sac_cli.py::test_ctrl_c_saves_mid_window_and_resume_equals_the_uninterrupted_run"],
    },
]
