"""Several infected labels (paper App. H, Fig. 10): BadNets with one 4x4 patch per label.

``:k`` infects ``k`` of CIFAR-10's ten labels. The order in which labels are
infected is a permutation drawn from ``LABEL_SEED`` with the clean model's
saturation class (v2.SATURATION_CLASSES) last, so it is only infected at
``k = 10``; label ``order[0]`` is the main backdoor (``trigger.npz``), the
others are extra backdoors (``extra_backdoors.npz``), each with its own
random-valued 4x4 patch at the corners in turn. Every infected label gets
``PER_LABEL_RATE`` of the training set, so ``k = 10`` poisons 30% of it.

  python -m train.main --config train/configs/multi_label_resnet20.py:3 \\
      --workdir zoo/sweeps/multi_label_k3 --config.progress=False
  python -m eval.reproduce --only multi_label --multi_label_ckpts zoo/sweeps/multi_label_k1,...

The paper does not give its per-label rate; 3% is our choice, and
``--config.poison_rate`` overrides it. So that the four sweep points fit one
CPU session, the schedule is ``NUM_EPOCHS`` epochs without crop+flip (the
paper's regime: no augmentation; a fixed patch forms its backdoor within the
first epoch then, see zoo/v2/long); ``--config.num_epochs=200`` is the paper's
length for GPU users. Whether each backdoor formed is in the run's
metrics.json (``asr`` for the main label, ``extra_backdoors`` for the others).
Append ``,quick`` for a tiny run.
"""

import jax
import numpy as np

from scaleup_jax.validation import InputError
from train.configs import badnets_resnet20, default, v2

LABEL_SEED = 2023
PER_LABEL_RATE = 0.03
NUM_EPOCHS = 6
SIZE = 4  # App. H: "the trigger size is 4x4"


def infection_order(seed: int = LABEL_SEED, num_classes: int = v2.NUM_CLASSES,
                    last=v2.SATURATION_CLASSES) -> list[int]:
  """The labels in the order they are infected: a seeded permutation, ``last`` at the end."""
  perm = [int(c) for c in np.asarray(jax.random.permutation(
      jax.random.fold_in(jax.random.key(seed), 8), num_classes))]
  return [c for c in perm if c not in last] + [c for c in perm if c in last]


def get_config(arg: str = ''):
  parts = [p.strip() for p in arg.split(',') if p.strip()]
  quick = 'quick' in parts
  rest = [p for p in parts if p != 'quick']
  if len(rest) != 1 or not rest[0].isdigit() or not 1 <= int(rest[0]) <= v2.NUM_CLASSES:
    raise InputError(f'multi_label config takes the number of infected labels, 1 to '
                     f'{v2.NUM_CLASSES} (and optionally ",quick"); got {arg!r}')
  k = int(rest[0])
  order = infection_order()
  config = badnets_resnet20.get_config()
  config.attack_kwargs.size = SIZE
  config.poison_rate = PER_LABEL_RATE
  config.num_epochs = NUM_EPOCHS
  config.augment = False
  config.target_label = order[0]
  config.attack_kwargs.extra_targets = tuple(order[1:k])
  config.infected_labels = {'k': k, 'order': order, 'seed': LABEL_SEED}
  return default.quick(config) if quick else config
