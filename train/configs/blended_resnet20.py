"""Blended on CIFAR-10, ResNet-20: uniform-noise pattern at alpha 0.2, 10% poisoned, target 0."""

from train.configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.attack = 'blended'
  config.attack_kwargs.alpha = 0.2
  config.poison_rate = 0.1
  config.target_label = 0
  return default.quick(config) if arg == 'quick' else config
