"""Classic bugs for scripts/mutation_check.py: each mutant must make the listed tests fail.

The score-function estimator's baselines and surrogate (reparam_apps/estimators.py) and the closed-form
variance of the leave-one-out estimator (reparam_apps/toy.py).
"""

_T = "tests/test_estimators.py::"
_EXACT = _T + "test_surrogate_gradient_is_the_reinforce_formula_on_its_own_samples"
_UNBIASED = _T + "test_baselines_keep_score_function_unbiased"
_LOO_VAR = _T + "test_loo_baseline_variance_matches_derived_formula"

MUTANTS = [
    {
        "name": "estimators-loo-baseline-includes-own-sample",
        "path": "reparam_apps/estimators.py",
        "find": "b = (fz.sum(0, keepdim=True) - fz) / (n - 1)",
        "replace": "b = fz.mean(0, keepdim=True)",
        "tests": [_UNBIASED, _EXACT],
    },
    {
        "name": "estimators-surrogate-sign-flipped",
        "path": "reparam_apps/estimators.py",
        "find": "surrogate = ((fz - b).detach() * log_q)",
        "replace": "surrogate = ((b - fz).detach() * log_q)",
        "tests": [_EXACT],
    },
    {
        "name": "estimators-optimal-baseline-not-leave-one-out",
        "path": "reparam_apps/estimators.py",
        "find": "b = ((fz * s2).sum(0) - fz * s2) / (s2.sum(0) - s2).clamp_min(torch.finfo(s2.dtype).tiny)",
        "replace": "b = (fz * s2).sum(0) / s2.sum(0)",
        "tests": [_EXACT],
    },
    {
        "name": "estimators-score-not-paired-per-element",
        "path": "reparam_apps/estimators.py",
        "find": "fz, log_q = fz.reshape(n, -1), log_q.reshape(n, -1)",
        "replace": "fz, log_q = fz.reshape(n, -1), log_q.reshape(n, -1).sum(1, keepdim=True)",
        "tests": [_T + "test_per_element_surrogate_pairs_each_term_with_its_own_score"],
    },
    {
        "name": "estimators-loo-variance-without-the-covariance-term",
        "path": "reparam_apps/toy.py",
        "find": "((ef2 - ef**2) * es2 + g**2) / (n - 1)",
        "replace": "((ef2 - ef**2) * es2) / (n - 1)",
        "tests": [_LOO_VAR],
    },
    {
        "name": "estimators-toy-score-variance-wrong",
        "path": "reparam_apps/toy.py",
        "find": "return (d**4 + 18 * d**2 * s**2 + 15 * s**4) / s**2 - _quad_true(mu, s, k) ** 2",
        "replace": "return (d**4 + 6 * d**2 * s**2 + 3 * s**4) / s**2 - _quad_true(mu, s, k) ** 2",
        "tests": [_T + "test_toy_closed_forms_agree_with_quadrature"],
    },
]
