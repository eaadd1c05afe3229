"""Short-recipe models for SCALE-UP's failure map (docs/failure_map.md).

The 5-epoch sweep recipe (``badnets_sweep_resnet20.py``: crop + flip, seed 0,
rate 0.1) with the trigger pattern and the target class as the two axes of the
map. Patch patterns are BadNets squares one pixel from the bottom-right corner
(5x5 by default: at 3x3 the random patch had only just formed in 5 epochs);
``blend`` is a full-image uniform-noise pattern blended at alpha 0.2.

  python -m train.main --config train/configs/failure_map_resnet20.py:pattern=white,target=0 \\
      --workdir zoo/failure_map/white_t0 --config.progress=False
  python -m train.main --config train/configs/failure_map_resnet20.py:pattern=blend,target=3 \\
      --workdir zoo/failure_map/blend_t3 --config.progress=False

Overrides after the colon: ``pattern=`` one of :data:`PATTERNS`, ``target=``
a class index, ``rate=``, ``size=`` (patches only), ``epochs=``, ``quick``.
The point ``pattern=random,target=0`` is the sweep model
``zoo/sweeps/badnets_rate0.1_size5`` (same recipe, same seed).
"""

from train.configs import badnets_sweep_resnet20, default
from scaleup_jax import poison
from scaleup_jax.validation import InputError

PATTERNS = poison.PATCH_PATTERNS + ('blend',)
SIZE = 5
BLEND_ALPHA = 0.2


def get_config(arg: str = ''):
  config = badnets_sweep_resnet20.get_config()
  config.attack_kwargs.size = SIZE
  options = {}
  quick = False
  for part in filter(None, (p.strip() for p in arg.split(','))):
    key, _, value = part.partition('=')
    if key == 'quick' and not value:
      quick = True
    elif key in ('pattern', 'target', 'rate', 'size', 'epochs') and value:
      options[key] = value
    else:
      raise InputError(f'unknown failure-map override {part!r}; expected pattern=P, target=K, '
                       f'rate=R, size=S, epochs=E or quick (got config argument {arg!r})')
  pattern = options.get('pattern', 'random')
  if pattern not in PATTERNS:
    raise InputError(f'unknown failure-map pattern {pattern!r}; expected one of {PATTERNS}')
  if pattern == 'blend':
    if 'size' in options:
      raise InputError('size= applies to patch patterns, not to pattern=blend')
    config.attack = 'blended'
    config.attack_kwargs = {'alpha': BLEND_ALPHA}
  else:
    config.attack_kwargs.pattern = pattern
    config.attack_kwargs.size = int(options.get('size', SIZE))
  config.target_label = int(options.get('target', 0))
  if not 0 <= config.target_label < 10:
    raise InputError(f'target={config.target_label} is not a CIFAR-10 class index (0..9)')
  config.poison_rate = float(options.get('rate', config.poison_rate))
  config.num_epochs = int(options.get('epochs', config.num_epochs))
  config.failure_map = {'pattern': pattern, 'target': config.target_label}
  return default.quick(config) if quick else config


def workdir_name(pattern: str, target: int) -> str:
  """The run directory name under ``zoo/failure_map/`` for one map cell."""
  return f'{pattern}_t{target}'
