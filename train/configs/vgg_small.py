"""A second architecture (paper App. M): the zoo v2 recipes on a small VGG with batch norm.

The paper's App. M trains VGG-19 (BN) on Tiny ImageNet (Table 6, Fig. 14). On this
CPU we train ``vgg11_bn_small`` (the VGG-11 layout at a quarter of the widths, 16 to
128 filters, about a quarter of ResNet-20's multiply-adds) on CIFAR-10 with each
attack's zoo v2 recipe (same target, trigger, poisoning rate, 16 epochs with crop+flip);
``:clean`` is the benign model of Fig. 2/14.

  python -m train.main --config train/configs/vgg_small.py:badnets \\
      --workdir zoo/vgg/cifar10_badnets_vgg11s --config.progress=False
  python -m train.main --config train/configs/vgg_small.py:clean \\
      --workdir zoo/vgg/cifar10_clean_vgg11s --config.progress=False

``--config.model=vgg19_bn`` gives the paper's network (GPU users). Append ``,quick``
for a tiny run (which uses the tiny ResNet, as every quick config does).
"""

from scaleup_jax.validation import InputError
from train.configs import clean_resnet20, v2

MODEL = 'vgg11_bn_small'
ATTACKS = ('clean',) + v2.ATTACKS


def get_config(arg: str = ''):
  parts = [p.strip() for p in arg.split(',') if p.strip()]
  quick = 'quick' in parts
  names = [p for p in parts if p != 'quick']
  if len(names) != 1 or names[0] not in ATTACKS:
    raise InputError(f'vgg_small config takes one of {ATTACKS} (and optionally ",quick"); '
                     f'got {arg!r}')
  name = names[0]
  arg = 'quick' if quick else ''
  if name == 'clean':
    config = clean_resnet20.get_config(arg)
  else:  # the attack's own quick shrinks (UAP, PGD and encoder steps) apply too
    config = v2.get_config(f'{name},{arg}')
  if not quick:
    config.model = MODEL
  return config
