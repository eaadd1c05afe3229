"""PhysicalBA on CIFAR-10, ResNet-20: a random-valued 5x5 patch (10% poisoned, target 0),
trained under colour jitter and a random affine map redrawn at every step
(Li et al. 2021, "Backdoor attack in the physical world").

As in BackdoorBox's PhysicalBA datasets, every training image is distorted, clean and
poisoned alike (``apply_to=(0, 1)``). Distorting only the poisoned images makes the
distortion itself a feature of the target class: a first run that did so had 5% ASR after
3 epochs (the BadNets model: 27%) on the undistorted test trigger.

The patch is 5x5, not BadNets' 3x3: rotation, 0.8-0.9 scaling and bilinear resampling blur
a 3x3 random-valued patch into a blob, and a run with it had 19% ASR after 6 of 16 epochs
(the BadNets model: 99.7%). BackdoorBox's example uses a white 3x3 square, which survives
blurring but is left unchanged by amplification (see docs/attacks.md on BadNets).
"""

from train.configs import badnets_resnet20, default


def get_config(arg: str = ''):
  config = badnets_resnet20.get_config()
  config.attack = 'physical'
  config.attack_kwargs.size = 5
  config.attack_kwargs.transform = {'apply_to': (0, 1)}
  return default.quick(config) if arg == 'quick' else config
