"""PhysicalBA on CIFAR-10, ResNet-20: the BadNets patch (random 3x3, 10% poisoned, target 0),
trained under colour jitter and a random affine map redrawn at every step
(Li et al. 2021, "Backdoor attack in the physical world").

As in BackdoorBox's PhysicalBA datasets, every training image is distorted, clean and
poisoned alike (``apply_to=(0, 1)``). Distorting only the poisoned images makes the
distortion itself a feature of the target class: a first run that did so had 5% ASR after
3 epochs (the BadNets model: 27%) on the undistorted test trigger.
"""

from train.configs import badnets_resnet20, default


def get_config(arg: str = ''):
  config = badnets_resnet20.get_config()
  config.attack = 'physical'
  config.attack_kwargs.transform = {'apply_to': (0, 1)}
  return default.quick(config) if arg == 'quick' else config
