"""Run directories: orbax checkpoints plus the config and trigger that made them.

A run directory (also a model-zoo entry) holds::

    config.json      the training config (ml_collections, as JSON)
    trigger.npz      trigger kind and arrays, target, poisoned indices (absent if clean)
    metrics.json     BA / ASR and training history (written when training ends)
    checkpoints/<epoch>/   orbax checkpoint with items 'model' and 'train'

The 'model' item holds only ``{'params', 'batch_stats'}``, so evaluation never
needs the optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from scaleup_jax import models
from scaleup_jax.poison import TriggerLike, load_trigger, save_trigger


class CheckpointError(ValueError):
  """A checkpoint directory is missing, incomplete, corrupt or incompatible."""


def save_run_files(workdir: Path, config, trigger: TriggerLike | None, poison_indices) -> None:
  """Writes ``config.json`` and (for attacks) ``trigger.npz`` into ``workdir``."""
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  if trigger is not None:
    save_trigger(workdir / 'trigger.npz', trigger, config.target_label, poison_indices)


def checkpoint_manager(workdir: Path, max_to_keep: int = 1) -> ocp.CheckpointManager:
  """An orbax manager over ``workdir/checkpoints`` (created if needed)."""
  return ocp.CheckpointManager(
      Path(workdir).absolute() / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
  )


def save_train_state(manager, step: int, state, extra: dict) -> None:
  """Saves model variables, optimizer state and JSON-able ``extra`` at ``step``."""
  manager.save(
      step,
      args=ocp.args.Composite(
          model=ocp.args.StandardSave(
              {'params': state.params, 'batch_stats': state.batch_stats}),
          train=ocp.args.StandardSave({'opt_state': state.opt_state, 'step': state.step}),
          extra=ocp.args.JsonSave(extra),
      ),
  )


def restore_train_state(manager, state):
  """Restores the latest checkpoint into ``state``; returns ``(state, extra)``."""
  step = manager.latest_step()
  abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
  restored = manager.restore(
      step,
      args=ocp.args.Composite(
          model=ocp.args.StandardRestore(
              abstract({'params': state.params, 'batch_stats': state.batch_stats})),
          train=ocp.args.StandardRestore(
              abstract({'opt_state': state.opt_state, 'step': state.step})),
          extra=ocp.args.JsonRestore(),
      ),
  )
  m, t = restored['model'], restored['train']
  state = state.replace(params=m['params'], batch_stats=m['batch_stats'],
                        opt_state=t['opt_state'], step=t['step'])
  return state, dict(restored['extra'])


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A trained model ready for inference."""

  model: models.ResNet
  variables: Any
  config: ml_collections.ConfigDict
  trigger: TriggerLike | None
  target: int | None
  metrics: dict | None
  path: Path

  def apply_fn(self, variables, images):
    """Logits ``(B, K)`` of images ``(B, H, W, C)`` in [0, 1] (inference mode)."""
    return self.model.apply(variables, images, train=False)


def load_run(path, num_classes: int | None = None) -> LoadedRun:
  """Loads a run directory written by :func:`scaleup_jax.train.train_and_evaluate`.

  Args:
    path: the run directory (contains ``config.json`` and ``checkpoints/``).
    num_classes: if given, the number of classes the caller expects; a
      checkpoint for another number is rejected.

  Raises:
    CheckpointError: with the offending path or value, if the directory is
      missing, has no checkpoint, is corrupt or has the wrong class count.
  """
  path = Path(path).expanduser().absolute()
  if not path.is_dir():
    raise CheckpointError(f'checkpoint directory {str(path)!r} does not exist')
  cfg_file = path / 'config.json'
  if not cfg_file.is_file():
    raise CheckpointError(f'{str(path)!r} is not a run directory: it has no config.json')
  try:
    config = ml_collections.ConfigDict(json.loads(cfg_file.read_text()))
  except (json.JSONDecodeError, TypeError) as e:
    raise CheckpointError(f'corrupt {cfg_file}: {e}') from None
  ckpt_dir = path / 'checkpoints'
  manager = None
  if ckpt_dir.is_dir():
    manager = ocp.CheckpointManager(ckpt_dir)
  step = manager.latest_step() if manager is not None else None
  if step is None:
    raise CheckpointError(f'no checkpoint found under {str(ckpt_dir)!r}')

  trigger, target = None, None
  trig_file = path / 'trigger.npz'
  if trig_file.is_file():
    try:
      trigger, target = load_trigger(trig_file)
    except Exception as e:  # zip/npz errors come in many types.
      raise CheckpointError(f'corrupt trigger file {str(trig_file)!r}: {e}') from None

  metrics = None
  if (path / 'metrics.json').is_file():
    metrics = json.loads((path / 'metrics.json').read_text())

  try:
    restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
    stored = restored['model']
    stored_classes = int(stored['params']['head']['bias'].shape[0])
  except Exception as e:  # orbax/tensorstore raise many types for damaged files.
    msg = str(e).splitlines()[0] if str(e) else ''
    raise CheckpointError(
        f'corrupt or unreadable checkpoint {str(ckpt_dir / str(step))!r}: '
        f'{type(e).__name__}: {msg}') from None
  if num_classes is not None and stored_classes != num_classes:
    raise CheckpointError(
        f'checkpoint {str(path)!r} has {stored_classes} classes, expected {num_classes}')

  model = models.get_model(config.model, stored_classes)
  image_shape = tuple(config.get('image_shape', (32, 32, 3)))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               np.zeros((1, *image_shape), np.float32)))
  want = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), dict(abstract))
  got = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), dict(stored))
  if want != got:
    raise CheckpointError(
        f'checkpoint {str(path)!r} does not match model {config.model!r} with '
        f'{stored_classes} classes (parameter shapes differ)')
  restored = {'model': jax.tree.map(jax.numpy.asarray, stored)}
  variables = {'params': restored['model']['params'],
               'batch_stats': restored['model']['batch_stats']}
  return LoadedRun(model, variables, config, trigger, target, metrics, path)
