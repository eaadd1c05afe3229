"""BadNets on CIFAR-10, ResNet-20: a random-valued 3x3 patch, 10% poisoned, target 0."""

from train.configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.attack = 'badnets'
  config.attack_kwargs.size = 3
  config.attack_kwargs.corner = 'bottom_right'
  config.attack_kwargs.pattern = 'random'
  config.poison_rate = 0.1
  config.target_label = 0
  return default.quick(config) if arg == 'quick' else config
