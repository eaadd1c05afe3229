"""Label-Consistent on CIFAR-10, ResNet-20 (Turner et al. 2019): 5% of the training set,
all from the target class 0, perturbed by PGD (L-inf 8/255) against the clean zoo
model so their content is hard to learn, plus 3x3 checkerboards in the four corners."""

from train.configs import default


def get_config(arg: str = ''):
  config = default.get_config()
  config.attack = 'label_consistent'
  config.attack_kwargs.eps = 8 / 255
  config.attack_kwargs.step = 2 / 255
  config.attack_kwargs.steps = 10
  config.attack_kwargs.size = 3
  config.attack_kwargs.clean_ckpt = 'zoo/cifar10_clean_resnet20'
  config.poison_rate = 0.05
  config.target_label = 0
  if arg == 'quick':
    config = default.quick(config)
    config.attack_kwargs.steps = 1
  return config
