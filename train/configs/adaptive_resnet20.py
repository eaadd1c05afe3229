"""The adaptive attack of the SCALE-UP paper (Eq. 5) on CIFAR-10, ResNet-20: BadNets
(random 3x3 patch, 10%, target 0) plus a loss term that trains scaled poisoned
images clip(n * x'), n in {3, 5, 7, 9, 11}, to keep their true labels."""

from train.configs import badnets_resnet20, default


def get_config(arg: str = ''):
  config = badnets_resnet20.get_config()
  config.attack = 'adaptive'
  config.attack_kwargs.scales = (3.0, 5.0, 7.0, 9.0, 11.0)
  config.attack_kwargs.weight = 1.0
  config.attack_kwargs.max_rows = 24
  return default.quick(config) if arg == 'quick' else config
