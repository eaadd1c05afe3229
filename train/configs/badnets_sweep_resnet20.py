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
the base 5 epochs (low rates); ``eval.reproduce`` reports each model's epochs
and draws each schedule as its own curve.

``eval.reproduce`` finds finished runs under ``zoo/sweeps/``: the poisoning-rate
sweep is those with size ``BASE_SIZE``, the trigger-size sweep those with rate
``BASE_RATE``. Append ``,quick`` (or use ``quick`` alone) for a tiny run.
"""

from scaleup_jax.reproduce import SWEEP_BASE_RATE as BASE_RATE, SWEEP_BASE_SIZE as BASE_SIZE
from scaleup_jax.validation import InputError
from train.configs import badnets_resnet20, default

EPOCHS = 5


def get_config(arg: str = ''):
  config = badnets_resnet20.get_config()
  config.num_epochs = EPOCHS
  config.poison_rate = BASE_RATE
  config.attack_kwargs.size = BASE_SIZE
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
    else:
      raise InputError(f"unknown sweep override {part!r}; expected rate=R, size=S, epochs=E or quick "
                       f"(got config argument {arg!r})")
  return default.quick(config) if quick else config


def workdir_name(rate: float, size: int, epochs: int = EPOCHS) -> str:
  """The run directory name under ``zoo/sweeps/`` for one sweep point."""
  return f'badnets_rate{rate:g}_size{size}' + ('' if epochs == EPOCHS else f'_e{epochs}')
