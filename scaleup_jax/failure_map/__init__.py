"""SCALE-UP's failure map: trigger pattern x target class of short-recipe BadNets-style models.

* :mod:`~scaleup_jax.failure_map.experiment` -- per model: BA, ASR, AUROC
  (data-free, data-limited) and calibrated TPR at 5% FPR through
  :func:`scaleup_jax.evaluate.evaluate_detection`, and the mechanism (SPC of
  poisoned vs benign target-class images, where amplified images go, the sink
  classes of :mod:`scaleup_jax.diagnose`); ``failure_map.json``.
* :mod:`~scaleup_jax.failure_map.plots` -- heatmaps pattern x target, the mechanism plot.
* :mod:`~scaleup_jax.failure_map.report` -- the markdown (``docs/failure_map.md``),
  its sentences generated from the measured numbers.

``python -m eval.failure_map`` runs all three (issue #19).
"""

from scaleup_jax.failure_map.experiment import (FailureMapConfig, default_models, evaluate_model,
                                                load_results, run, write_outputs)

__all__ = ['FailureMapConfig', 'default_models', 'evaluate_model', 'load_results', 'run',
           'write_outputs']
