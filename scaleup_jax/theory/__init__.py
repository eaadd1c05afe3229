"""Kernel-regression toy for SCALE-UP's Theorem 1 (Guo et al., ICLR 2023).

* :mod:`scaleup_jax.theory.kernel` -- RBF Nadaraya-Watson regression (Eq. 6),
  log-space stable, and pixel amplification.
* :mod:`scaleup_jax.theory.toy_data` -- synthetic inputs in [0, 1]^D with K
  balanced classes, triggers and poisoned training sets.
* :mod:`scaleup_jax.theory.ntk` -- empirical NTK of a small Flax MLP and NTK
  regression.
* :mod:`scaleup_jax.theory.experiment` -- the sweeps (``run_theory``), run by
  ``python -m eval.theory``; see ``docs/theory.md``.

References:
  Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency", ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from scaleup_jax.theory.experiment import TheoryConfig, quick_config, run_theory, scale_metrics
from scaleup_jax.theory.kernel import (amplify, amplify_stack, nadaraya_watson, one_hot, rbf_kernel,
                                       rbf_log_kernel, squared_distances)
from scaleup_jax.theory.ntk import empirical_ntk, fit_ntk_regression, init_mlp, ntk_nadaraya_watson
from scaleup_jax.theory.toy_data import ToyProblem, apply_trigger, make_problem, make_trigger

__all__ = [
    'TheoryConfig', 'ToyProblem', 'amplify', 'amplify_stack', 'apply_trigger', 'empirical_ntk',
    'fit_ntk_regression', 'init_mlp', 'make_problem', 'make_trigger', 'nadaraya_watson',
    'ntk_nadaraya_watson', 'one_hot', 'quick_config', 'rbf_kernel', 'rbf_log_kernel', 'run_theory',
    'scale_metrics', 'squared_distances',
]
