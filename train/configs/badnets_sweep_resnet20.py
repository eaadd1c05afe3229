"""BadNets models for the paper's ablations (Fig. 7a trigger size, Fig. 7b poisoning rate).

A cheaper recipe than the zoo's (5 epochs instead of 16) so that a sweep of
several models fits a CPU; every model of a sweep shares it, including the
base point (rate 0.1, size 3) that both sweeps share. The argument after the
colon overrides the rate, the patch size and the number of epochs:

  python -m train.main --config train/configs/badnets_sweep_resnet20.py:rate=0.01 \
      --workdir zoo/sweeps/badnets_rate0.01_size3
  python -m train.main --config train/configs/badnets_sweep_resnet20.py:size=5 \
      --workdir zoo/sweeps/badnets_rate0.1_size5
  python -m train.main --config train/configs/badnets_sweep_resnet20.py:rate=0.05,epochs=10 \
      --workdir zoo/sweeps/badnets_rate0.05_size3_e10

``epochs=E`` lengthens the schedule for points whose backdoor does not form in
the base 5 epochs (low rates); ``augment=0`` drops crop+flip (the paper's regime,
Sec. 5.1, in which a patch backdoor forms far sooner); ``attack=physical`` trains
PhysicalBA instead (the patch under colour jitter and a random affine map, as in
``physical_resnet20.py``) for the PhysicalBA curve of Fig. 7a:

  python -m train.main --config train/configs/badnets_sweep_resnet20.py:rate=0.004,size=5,epochs=6,augment=0 \
      --workdir zoo/sweeps/badnets_rate0.004_size5_e6_noaug
  python -m train.main --config train/configs/badnets_sweep_resnet20.py:attack=physical,size=3,epochs=6,augment=0 \
      --workdir zoo/sweeps/physical_rate0.1_size3_e6_noaug

(The 0.4% point formed with the 5x5 patch, ASR 91.86%, and not with the 3x3 one, 2.67%.)
``eval.reproduce`` reports each model's schedule (epochs, whether it used crop+flip, and
on the poisoning-rate axis a patch size other than 3) and draws each schedule as its own
curve.

``eval.reproduce`` finds finished runs under ``zoo/sweeps/``: the poisoning-rate
sweep is those with size ``BASE_SIZE`` (and other sizes below ``BASE_RATE``), the
trigger-size sweep those with rate ``BASE_RATE``. Append ``,quick`` (or use ``quick``
alone) for a tiny run.
"""

from scaleup_jax.reproduce import SWEEP_BASE_RATE as BASE_RATE, SWEEP_BASE_SIZE as BASE_SIZE
from scaleup_jax.reproduce import SWEEP_TARGET
from scaleup_jax.validation import InputError
from train.configs import badnets_resnet20, default

EPOCHS = 5
ATTACKS = ('badnets', 'physical')


def get_config(arg: str = ''):
  config = badnets_resnet20.get_config()
  config.num_epochs = EPOCHS
  config.poison_rate = BASE_RATE
  config.attack_kwargs.size = BASE_SIZE
  config.target_label = SWEEP_TARGET  # badnets_resnet20's target; eval.reproduce keys on it
  quick = False
  for part in filter(None, (p.strip() for p in arg.split(','))):
    key, _, value = part.partition('=')
    if key == 'quick' and not value:
      quick = True
    elif key == 'rate' and value:
      config.poison_rate = float(value)
    elif key == 'size' and value:
      config.attack_kwargs.size = int(value)
    elif key == 'epochs' and value:
      config.num_epochs = int(value)
    elif key == 'augment' and value in ('0', '1'):
      config.augment = value == '1'
    elif key == 'attack' and value in ATTACKS:
      config.attack = value
      if value == 'physical':
        config.attack_kwargs.transform = {'apply_to': (0, 1)}
    else:
      raise InputError(f"unknown sweep override {part!r}; expected rate=R, size=S, epochs=E, "
                       f"augment=0|1, attack={'|'.join(ATTACKS)} or quick "
                       f"(got config argument {arg!r})")
  return default.quick(config) if quick else config


def workdir_name(rate: float, size: int, epochs: int = EPOCHS, augment: bool = True,
                 attack: str = 'badnets') -> str:
  """The run directory name under ``zoo/sweeps/`` for one sweep point."""
  return (f'{attack}_rate{rate:g}_size{size}' + ('' if epochs == EPOCHS and augment
                                                 else f'_e{epochs}')
          + ('' if augment else '_noaug'))
