"""PhysicalBA on CIFAR-10, ResNet-20: the BadNets patch (random 3x3, 10% poisoned, target 0),
with the poisoned images re-distorted at every step by colour jitter and a random affine map
(Li et al. 2021, "Backdoor attack in the physical world")."""

from train.configs import badnets_resnet20, default


def get_config(arg: str = ''):
  config = badnets_resnet20.get_config()
  config.attack = 'physical'
  return default.quick(config) if arg == 'quick' else config
