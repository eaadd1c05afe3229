"""Paper Table 2: the six attacks on Tiny ImageNet with ResNet-34 (GPU; not trainable on the CPU).

Tiny ImageNet is 200 classes of 64x64 images (100,000 train, 10,000 labelled
validation images, our test split). tfds ships no builder for it;
``scaleup_jax.data`` prepares it from ``tiny-imagenet-200.zip`` (downloaded, or
a local copy named by ``$SCALEUP_JAX_TINY_IMAGENET``). Each attack keeps its
CIFAR-10 zoo recipe (trigger type, poisoning rate), with:

* the paper's network and length: ResNet-34 (``config.model``), 200 epochs
  without crop+flip (App. C; Sec. 5.1 trains without augmentation);
* patch triggers scaled with the image side (x2: BadNets 3x3 -> 6x6,
  PhysicalBA 5x5 -> 10x10), since a 64x64 image has four times the pixels;
* TUAP and Label-Consistent craft their triggers on the Tiny ImageNet clean model
  (``CLEAN_CKPT``, the ``:clean`` run), not on the CIFAR-10 one;
* a target drawn from the 200 classes with the seed and rule of zoo v2
  (``v2.target_for``, the attack's name folded into ``TARGET_SEED``). The clean
  model's saturation class on Tiny ImageNet is not measured (no clean model
  here), so no class is avoided; run ``python -m eval.diagnose`` on a clean
  model (``:clean``) to check the draw, as zoo v2 did on CIFAR-10.

  # The one command a GPU user runs for Table 2 (trains seven models, then compares):
  bash train/tiny_imagenet_table2.sh zoo/tiny_imagenet

  python -m train.main --config train/configs/tiny_imagenet.py:badnets \\
      --workdir zoo/tiny_imagenet/badnets_resnet34 --config.progress=False

Append ``,quick`` for a tiny run (tests prepare a fake archive).
"""

from scaleup_jax.validation import InputError
from train.configs import clean_resnet20, v2

DATASET = 'tiny_imagenet'
NUM_CLASSES = 200
MODEL = 'resnet34'
EPOCHS = 200
PATCH_SCALE = 2  # 64x64 against CIFAR-10's 32x32
# TUAP and Label-Consistent craft their triggers on the clean model (``:clean``), trained first;
# train/tiny_imagenet_table2.sh passes its own path.
CLEAN_CKPT = 'zoo/tiny_imagenet/clean_resnet34'
ATTACKS = ('clean', 'badnets', 'label_consistent', 'physical', 'tuap', 'wanet', 'issba')


def get_config(arg: str = ''):
  parts = [p.strip() for p in arg.split(',') if p.strip()]
  quick = 'quick' in parts
  names = [p for p in parts if p != 'quick']
  if len(names) != 1 or names[0] not in ATTACKS:
    raise InputError(f'tiny_imagenet config takes one of {ATTACKS} (and optionally ",quick"); '
                     f'got {arg!r}')
  name = names[0]
  arg = 'quick' if quick else ''
  if name == 'clean':
    config = clean_resnet20.get_config(arg)
  else:  # the attack's own quick shrinks (UAP, PGD and encoder steps) apply too
    config = v2.get_config(f'{name},{arg}')
    config.target_label = v2.target_for(name, num_classes=NUM_CLASSES, avoid=())
    config.target_draw = {'seed': v2.TARGET_SEED, 'avoid': [], 'num_classes': NUM_CLASSES,
                          'attack': name}
    if 'size' in config.attack_kwargs:
      config.attack_kwargs.size = int(config.attack_kwargs.size) * PATCH_SCALE
    if 'clean_ckpt' in config.attack_kwargs:  # TUAP, Label-Consistent: a 200-class clean model
      config.attack_kwargs.clean_ckpt = CLEAN_CKPT
  config.dataset = DATASET
  config.augment = False
  if not quick:
    config.model = MODEL
    config.num_epochs = EPOCHS
  return config
