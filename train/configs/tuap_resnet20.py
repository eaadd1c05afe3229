"""TUAP on CIFAR-10, ResNet-20 (Zhao et al. 2020): a targeted universal adversarial
perturbation (L-inf 8/255) of the clean zoo model towards class 0, added as a
clean-label trigger to 5% of the training set, all from the target class."""

from train.configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.attack = 'tuap'
  config.attack_kwargs.eps = 8 / 255
  config.attack_kwargs.steps = 300
  config.attack_kwargs.batch_size = 128
  config.attack_kwargs.uap_images = 5000
  config.attack_kwargs.clean_ckpt = 'zoo/cifar10_clean_resnet20'
  config.poison_rate = 0.05
  config.target_label = 0
  if arg == 'quick':
    config = default.quick(config)
    config.attack_kwargs.steps = 2
    config.attack_kwargs.batch_size = 16
    config.attack_kwargs.uap_images = 64
  return config
