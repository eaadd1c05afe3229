"""Several triggers for one target label (paper App. G, Fig. 9): BadNets with ``k`` patches.

``:k`` trains a model whose one target label (the App. H model's, ``order[0]`` of
``multi_label_resnet20.infection_order()``) is reached by ``k`` different random-valued
4x4 patches, one per corner in turn (``poison.MultiTrigger``). Poisoned training images
cycle through the triggers, and every trigger gets ``PER_TRIGGER_RATE`` of the training
set, so ``k = 3`` poisons 9% of it. The test-time poisoned set cycles through the
triggers the same way, so each trigger is a third of it at ``k = 3``.

  python -m train.main --config train/configs/multi_trigger_resnet20.py:2 \\
      --workdir zoo/sweeps/multi_trigger_k2 --config.progress=False
  python -m eval.reproduce --only multi_trigger \\
      --multi_trigger_ckpts zoo/sweeps/multi_label_k1,zoo/sweeps/multi_trigger_k2,...

``:1`` is exactly ``multi_label_resnet20.py:1`` (one 4x4 patch, 3%, 6 epochs without
crop+flip), so ``zoo/sweeps/multi_label_k1`` is the one-trigger point. The paper mixes
trigger types and raises each trigger's share until its ASR is at least 99% (App. G);
ours are patches of one type at a fixed share, and each trigger's ASR is measured
(``eval.reproduce`` reports it). Append ``,quick`` for a tiny run.
"""

from scaleup_jax.validation import InputError
from train.configs import default, multi_label_resnet20

PER_TRIGGER_RATE = multi_label_resnet20.PER_LABEL_RATE
MAX_TRIGGERS = 4  # one per corner


def get_config(arg: str = ''):
  parts = [p.strip() for p in arg.split(',') if p.strip()]
  quick = 'quick' in parts
  rest = [p for p in parts if p != 'quick']
  if len(rest) != 1 or not rest[0].isdigit() or not 1 <= int(rest[0]) <= MAX_TRIGGERS:
    raise InputError(f'multi_trigger config takes the number of triggers, 1 to {MAX_TRIGGERS} '
                     f'(and optionally ",quick"); got {arg!r}')
  k = int(rest[0])
  config = multi_label_resnet20.get_config('1')
  del config.infected_labels
  if k > 1:
    config.attack_kwargs.num_triggers = k
  config.poison_rate = PER_TRIGGER_RATE * k
  return default.quick(config) if quick else config
