"""A clean ResNet-20 on CIFAR-10 with the same recipe as the attacked models."""

from train.configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  return default.quick(config) if arg == 'quick' else config
