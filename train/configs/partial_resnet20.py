"""A partial (source-label-specific) BadNets backdoor (paper App. K, Table 5).

The trigger sends images of ``NUM_SOURCES`` source classes to the target and
leaves the other classes alone: the poisoned images (``poison_rate``) come from
the source classes only, and ``COVER_RATE`` of the training set, drawn from the
other non-target classes, carries the trigger with its true label (the cover
images of Wang et al. 2019's source-specific attack). The paper does not give
its source classes, rates or trigger; everything else is the recipe of
``multi_label_resnet20.py:1`` (one 4x4 random-valued patch, 3% poisoning,
``NUM_EPOCHS`` epochs without crop+flip, the same target), so that model is
the matched all-sources reference. The source classes are drawn from
``SOURCE_SEED`` among the classes other than the target and the clean model's
saturation class; the draw is recorded in ``config.source_draw``.

  python -m train.main --config train/configs/partial_resnet20.py \\
      --workdir zoo/sweeps/partial_badnets --config.progress=False

At evaluation the positives are the triggered images of the source classes
(``evaluate.build_eval_arrays(source_classes=...)``, read from the run's
config), and ``metrics.json`` reports the ASR on them (``asr``) and on the
other classes (``asr_non_source``). Append ``:quick`` for a tiny run.
"""

import jax
import numpy as np

from train.configs import default, multi_label_resnet20, v2

SOURCE_SEED = 2023
NUM_SOURCES = 3
COVER_RATE = 0.03


def source_draw(target: int, seed: int = SOURCE_SEED, num: int = NUM_SOURCES,
                avoid=v2.SATURATION_CLASSES) -> tuple[int, ...]:
  """``num`` source classes, a seeded draw over the classes not ``target`` nor in ``avoid``."""
  allowed = np.array([c for c in range(v2.NUM_CLASSES) if c != target and c not in avoid])
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), 11),
                                           len(allowed)))
  return tuple(sorted(int(c) for c in allowed[perm[:num]]))


def get_config(arg: str = ''):
  config = multi_label_resnet20.get_config('1')
  del config.infected_labels
  config.source_classes = source_draw(config.target_label)
  config.cover_rate = COVER_RATE
  config.source_draw = {'seed': SOURCE_SEED, 'num': NUM_SOURCES,
                        'avoid': [int(c) for c in v2.SATURATION_CLASSES]}
  return default.quick(config) if arg == 'quick' else config
