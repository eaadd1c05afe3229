"""Zoo v2 BadNets plus small extra poisonings of the other labels (paper App. C).

For its data-limited models the paper injects "less amount (<= 5%) of poisoned
samples to affect labels other than the target label", so that the attacked
model reacts to noisy and out-of-distribution inputs like a clean one (App. C,
"Training details"). The paper does not say which triggers; here each other
label gets its own random-valued patch (same size as the main one, at the
corners in turn) on ``EXTRA_RATE`` of the training set: nine labels x 0.5% =
4.5% in all. Positives at evaluation are the main backdoor's, as in the paper.

  python -m train.main --config train/configs/badnets_extra_resnet20.py \\
      --workdir zoo/v2/cifar10_badnets_extra_resnet20 --config.progress=False
"""

from train.configs import default, v2

EXTRA_RATE = 0.005


def get_config(arg: str = ''):
  config = v2.get_config('badnets')
  config.attack_kwargs.extra_targets = tuple(
      c for c in range(v2.NUM_CLASSES) if c != config.target_label)
  config.attack_kwargs.extra_rate = EXTRA_RATE
  return default.quick(config) if arg == 'quick' else config
