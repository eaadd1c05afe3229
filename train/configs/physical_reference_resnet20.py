"""Clean reference for PhysicalBA on CIFAR-10, ResNet-20: the PhysicalBA recipe
(``physical_resnet20.py``: every training image under colour jitter and a random affine
map, 16 epochs) with nothing poisoned (``poison_rate = 0``).

The PhysicalBA model trains on distorted images and is tested on undistorted ones, so
its BA is compared with this model's, not with the clean zoo model trained without the
distortions (issue #3: "BA within 3 points of the clean model trained with the same
recipe"). The run still draws and saves the 5x5 trigger, so its ASR is the rate at which
an unpoisoned model sends triggered images to class 0 by chance.

Train it outside the top level of ``zoo/`` (e.g. ``zoo/reference/``), where the zoo's
attacked-model lists do not look.
"""

from train.configs import default, physical_resnet20


def get_config(arg: str = ''):
  config = physical_resnet20.get_config()
  config.poison_rate = 0.0
  return default.quick(config) if arg == 'quick' else config
