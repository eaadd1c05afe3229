"""Baseline input-level backdoor detectors with SCALE-UP's interface.

Each module has a pure, jit-compatible scoring function over a batch
(``*_scores``, returning ``(preds, scores)`` with higher = more likely
poisoned) and a factory ``make(apply_fn, variables=None, *, key,
benign_images=None, benign_labels=None, **options)`` returning a
:class:`~scaleup_jax.baselines.common.Detector`. Pick detectors by name with
:func:`scaleup_jax.detectors.make`; see ``docs/baselines.md``.

================  ==============  ==================================  =============
module            needs           benign data                         paper
================  ==============  ==================================  =============
``strip``         probabilities   required (overlays)                 Gao+ 2019
``shrinkpad``     labels          no                                  Li+ 2021
``deepsweep``     labels          no                                  Qiu+ 2021
``frequency``     none            required (training, clean class)    Zeng+ 2021
``ibd_psc``       parameters      required (layer choice)             Hou+ 2024
``teco``          labels          no                                  Liu+ 2023
================  ==============  ==================================  =============
"""

from scaleup_jax.baselines import (common, corruptions, deepsweep, frequency, ibd_psc,
                                   image_ops, shrinkpad, strip, teco)
from scaleup_jax.baselines.common import Detector

__all__ = ['Detector', 'common', 'corruptions', 'deepsweep', 'frequency', 'ibd_psc',
           'image_ops', 'shrinkpad', 'strip', 'teco']
