"""WaNet on CIFAR-10, ResNet-20: warp grid k=4, strength s=0.5, 10% poisoned, noise-mode
cross samples at twice the poisoning rate, target 0 (Nguyen & Tran, ICLR 2021)."""

from train.configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.attack = 'wanet'
  config.attack_kwargs.k = 4
  config.attack_kwargs.s = 0.5
  config.attack_kwargs.grid_rescale = 1.0
  config.attack_kwargs.cross_ratio = 2.0
  config.poison_rate = 0.1
  config.target_label = 0
  return default.quick(config) if arg == 'quick' else config
