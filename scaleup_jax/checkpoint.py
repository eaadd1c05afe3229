"""Run directories: orbax checkpoints plus the config and trigger that made them.

A run directory (also a model-zoo entry) holds::

    config.json      the training config (ml_collections, as JSON)
    trigger.npz      trigger kind and arrays, target, poisoned indices (absent if clean)
    metrics.json     BA / ASR and training history (written when training ends)
    checkpoints/<epoch>/   orbax checkpoint with items 'model' and 'train'
    manifest.json    what the files and weights must be (scaleup_jax.integrity)

The 'model' item holds only ``{'params', 'batch_stats'}``, so evaluation never
needs the optimizer state.

The manifest holds, under ``files``, the SHA-256 and size of ``config.json``,
``trigger.npz``, ``metrics.json`` and of every file of the latest checkpoint
step, and under ``checkpoints[<step>]`` the :func:`integrity.tree_digest` of
the step's ``model`` and ``train`` items and the hash of its ``extra`` JSON.
The digests of a step are written *before* orbax starts saving it, so every
committed step has them even after a kill mid-save; its file hashes are added
once orbax has committed it. :func:`load_run` and the training resume check
the files before restoring and the restored arrays after, and raise
:class:`integrity.IntegrityError` naming what differs. Run directories from
before manifests load with a one-line warning; seal them with
``python -m scaleup_jax.integrity seal DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from scaleup_jax import integrity
from scaleup_jax import models
from scaleup_jax.integrity import IntegrityError
from scaleup_jax.poison import (ExtraBackdoors, TriggerLike, load_extra_backdoors, load_trigger,
                               save_extra_backdoors, save_trigger)


EXTRA_BACKDOORS = 'extra_backdoors.npz'  # a run's backdoors beside the main one (App. H)
RUN_FILES = ('config.json', 'trigger.npz', EXTRA_BACKDOORS, 'metrics.json')


class CheckpointError(ValueError):
  """A checkpoint directory is missing, incomplete, corrupt or incompatible."""


def _model_item(state) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _train_item(state) -> dict:
  return {'opt_state': state.opt_state, 'step': state.step}


def _train_digest(item) -> dict[str, str]:
  """Digest of a 'train' item; ``step`` as int64 (saved int32, restored through a Python int)."""
  return integrity.tree_digest({'opt_state': item['opt_state'],
                                'step': np.int64(int(np.asarray(item['step'])))})


def _json_digest(obj) -> str:
  return integrity.sha256_bytes(integrity._canonical_json(obj))


def _step_prefix(step) -> str:
  return f'checkpoints/{int(step)}/'


def _step_files(workdir: Path, step) -> list[str]:
  """Paths (relative to ``workdir``) of every file of checkpoint ``step``."""
  root = Path(workdir) / 'checkpoints' / str(int(step))
  return sorted(f.relative_to(workdir).as_posix() for f in root.rglob('*') if f.is_file())


def _unchecked_warning(what: str) -> None:
  warnings.warn(what, integrity.MissingManifestWarning, stacklevel=3)


def _check_poisoning(workdir: Path, trigger, target, poison_indices) -> None:
  """Refuses to resume a run whose regenerated poisoning differs from its saved trigger."""
  f = workdir / 'trigger.npz'
  if trigger is None or not f.is_file():
    return
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', integrity.UncheckedFileWarning)
    arrays = integrity.load_npz_checked(f, 'trigger')
  old_idx = arrays.get('poison_indices')
  now = {k: np.asarray(v) for k, v in trigger.arrays().items()}
  old = {k: arrays[k] for k in now if k in arrays}
  same = (int(arrays['target']) == int(target) and set(old) == set(now)
          and (old_idx is None or np.array_equal(old_idx, np.asarray(poison_indices, np.int64)))
          and all(old[k].shape == now[k].shape and (
              np.array_equal(old[k], now[k]) if old[k].dtype.kind not in 'fc'
              else np.allclose(old[k], now[k], rtol=0, atol=1e-6)) for k in now))
  if not same:
    raise IntegrityError(
        f'{str(f)!r} (target, poisoned indices, trigger) differs from the poisoning this '
        'config regenerates; the checkpoints beside it were trained on the saved one. Use '
        'a new --workdir, or restore the settings the run was started with.')


def _same_extra(f: Path, extra: ExtraBackdoors) -> bool:
  """Whether ``f`` holds ``extra`` (False if it is absent or unreadable)."""
  try:
    return f.is_file() and integrity.npz_digest(
        integrity.load_npz_checked(f, 'extra_backdoors', allow_unchecked=False)
    ) == integrity.npz_digest(extra.arrays())
  except IntegrityError:
    return False


def _check_extra(workdir: Path, extra: ExtraBackdoors | None) -> None:
  """Refuses to resume a run whose regenerated extra backdoors differ from its saved ones."""
  f = workdir / EXTRA_BACKDOORS
  if (f.is_file() or extra is not None) and not (extra is not None and _same_extra(f, extra)):
    raise IntegrityError(
        f'{str(f)!r} (extra backdoors: triggers, targets, poisoned indices) differs from the '
        'poisoning this config regenerates, or only one of them exists; the checkpoints beside '
        'it were trained on the saved one. Use a new --workdir, or restore the settings the run '
        'was started with.')


def save_run_files(workdir: Path, config, trigger: TriggerLike | None, poison_indices,
                   resuming: bool = False, extra: ExtraBackdoors | None = None) -> None:
  """Writes ``config.json`` and (for attacks) ``trigger.npz`` and records them in the manifest.

  Files whose content has not changed are not rewritten. Writes are atomic.

  Args:
    workdir: the run directory.
    config: the training config.
    trigger: the test-time trigger, None for a clean run.
    poison_indices: indices of the poisoned training images.
    resuming: the run has checkpoints; its saved trigger must then equal
      ``trigger`` (same target, poisoned indices and arrays), and so must its
      saved extra backdoors.
    extra: the run's extra backdoors, written to :data:`EXTRA_BACKDOORS`.

  Raises:
    IntegrityError: when ``resuming`` and the saved poisoning differs.
  """
  workdir = Path(workdir)
  if resuming:
    _check_poisoning(workdir, trigger, config.target_label, poison_indices)
    _check_extra(workdir, extra)
  text = config.to_json_best_effort(indent=2)
  cfg_file = workdir / 'config.json'
  if not cfg_file.is_file() or cfg_file.read_text() != text:
    integrity.atomic_write_text(cfg_file, text)
  names = ['config.json']
  if trigger is not None:
    f = workdir / 'trigger.npz'
    want = integrity.npz_digest({**trigger.arrays(), 'kind': np.asarray(trigger.kind),
                                 'target': np.int64(config.target_label),
                                 'poison_indices': np.asarray(poison_indices, np.int64)})
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', integrity.UncheckedFileWarning)
        same = f.is_file() and integrity.npz_digest(
            integrity.load_npz_checked(f, 'trigger')) == want
    except IntegrityError:
      same = False
    if not same:
      save_trigger(f, trigger, config.target_label, poison_indices)
    names.append('trigger.npz')
  if extra is not None:
    if not _same_extra(workdir / EXTRA_BACKDOORS, extra):
      save_extra_backdoors(workdir / EXTRA_BACKDOORS, extra)
    names.append(EXTRA_BACKDOORS)
  manifest = integrity.read_manifest(workdir) or {'version': integrity.MANIFEST_VERSION,
                                                  'files': {}}
  for rel in names:
    manifest['files'][rel] = integrity.file_record(workdir / rel)
  manifest.setdefault('checkpoints', {})
  integrity.save_manifest(workdir, manifest)


def record_file(workdir: Path, rel: str) -> None:
  """Adds (or refreshes) the hash of ``workdir/rel`` in the run's manifest."""
  integrity.write_manifest(workdir, [rel])


def checkpoint_manager(workdir: Path, max_to_keep: int = 1) -> ocp.CheckpointManager:
  """An orbax manager over ``workdir/checkpoints`` (created if needed).

  Half-written steps left by a kill (``*.orbax-checkpoint-tmp*``) are removed.
  """
  return ocp.CheckpointManager(
      Path(workdir).absolute() / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True),
  )


def _workdir_of(manager) -> Path:
  return Path(manager.directory).parent


def record_checkpoint_files(workdir: Path, step: int | None) -> None:
  """Records the hashes of every file of committed checkpoint ``step``.

  Entries of steps no longer on disk (orbax keeps ``max_to_keep``) are
  dropped, files and digests alike.
  """
  workdir = Path(workdir)
  manifest = integrity.read_manifest(workdir)
  if manifest is None or step is None:
    return
  on_disk = {p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()}
  manifest['checkpoints'] = {k: v for k, v in manifest.get('checkpoints', {}).items()
                             if k in on_disk or k == str(int(step))}
  manifest['files'] = {k: v for k, v in manifest['files'].items()
                       if not k.startswith('checkpoints/') or k.split('/')[1] in on_disk}
  prefix = _step_prefix(step)
  manifest['files'] = {k: v for k, v in manifest['files'].items() if not k.startswith(prefix)}
  for rel in _step_files(workdir, step):
    manifest['files'][rel] = integrity.file_record(workdir / rel)
  manifest['checkpoints'].setdefault(str(int(step)), {})['files_recorded'] = True
  integrity.save_manifest(workdir, manifest)


def finish_saves(manager) -> None:
  """Waits for the last checkpoint write and records its files in the manifest."""
  manager.wait_until_finished()
  record_checkpoint_files(_workdir_of(manager), manager.latest_step())


def save_train_state(manager, step: int, state, extra: dict) -> None:
  """Saves model variables, optimizer state and JSON-able ``extra`` at ``step``.

  First the previous step's files are recorded (its write has finished), then
  this step's digests, then orbax writes the step in the background.
  """
  workdir = _workdir_of(manager)
  manager.wait_until_finished()
  if integrity.read_manifest(workdir) is not None:
    record_checkpoint_files(workdir, manager.latest_step())
    manifest = integrity.read_manifest(workdir)
    manifest.setdefault('checkpoints', {})[str(int(step))] = {
        'model': integrity.tree_digest(_model_item(state)),
        'train': _train_digest(_train_item(state)),
        'extra': _json_digest(extra)}
    integrity.save_manifest(workdir, manifest)
  integrity.fault_point(f'checkpoint_saving:{step}')
  manager.save(
      step,
      args=ocp.args.Composite(
          model=ocp.args.StandardSave(_model_item(state)),
          train=ocp.args.StandardSave(_train_item(state)),
          extra=ocp.args.JsonSave(extra),
      ),
  )
  integrity.fault_point(f'checkpoint_saved:{step}')


def _verify_step_files(workdir: Path, manifest: dict, step: int) -> None:
  """Checks the recorded files of ``step`` and that no unrecorded file joined them."""
  entry = manifest.get('checkpoints', {}).get(str(int(step)))
  if entry is None:
    raise IntegrityError(
        f'checkpoint {str(workdir / "checkpoints" / str(step))!r} is not recorded in '
        f'{str(workdir / integrity.MANIFEST)!r} (copied from another run?)')
  if not entry.get('files_recorded'):
    return  # killed before the files were hashed: the weight digests still check it
  prefix = _step_prefix(step)
  listed = sorted(k for k in manifest['files'] if k.startswith(prefix))
  for rel in listed:
    integrity.check_file(workdir, rel, manifest['files'][rel])
  extra = sorted(set(_step_files(workdir, step)) - set(listed))
  if extra:
    raise IntegrityError(f'{str(workdir / extra[0])!r} is not listed in '
                         f'{str(workdir / integrity.MANIFEST)!r} (from another run?)')


def restore_train_state(manager, state):
  """Restores the latest checkpoint into ``state``; returns ``(state, extra)``.

  Checks the step against the run's manifest first (files) and after the
  restore (array digests). A run without a manifest (started before
  manifests existed) resumes after a one-line warning, and its manifest is
  started from the restored arrays.

  Raises:
    IntegrityError: if a file or a restored array differs from the manifest.
    CheckpointError: if orbax cannot read the step or it does not fit ``state``.
  """
  workdir = _workdir_of(manager)
  step = manager.latest_step()
  manifest = integrity.read_manifest(workdir)
  if manifest is not None:
    _verify_step_files(workdir, manifest, step)
  abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)
  try:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract(_model_item(state))),
            train=ocp.args.StandardRestore(abstract(_train_item(state))),
            extra=ocp.args.JsonRestore(),
        ),
    )
  except Exception as e:  # orbax/tensorstore raise many types for damaged or other files.
    msg = str(e).splitlines()[0] if str(e) else ''
    raise CheckpointError(
        f'cannot resume from checkpoint {str(Path(manager.directory) / str(step))!r} '
        f'(corrupt, or written by another config): {type(e).__name__}: {msg}') from None
  m, t = restored['model'], restored['train']
  extra = dict(restored['extra'])
  digests = {'model': integrity.tree_digest(m), 'train': _train_digest(t),
             'extra': _json_digest(extra)}
  where = str(Path(manager.directory) / str(step))
  if manifest is None:
    _unchecked_warning(f'run {str(workdir)!r} has no {integrity.MANIFEST} (started by an '
                       'older version): resuming without an integrity check; the manifest '
                       'is written from now on')
    manifest = integrity.read_manifest(workdir) or {'version': integrity.MANIFEST_VERSION,
                                                    'files': {}}
    manifest.setdefault('checkpoints', {})[str(int(step))] = digests
    integrity.save_manifest(workdir, manifest)
    record_checkpoint_files(workdir, step)
  else:
    want = manifest['checkpoints'][str(int(step))]
    for item in ('model', 'train'):
      if item in want:
        integrity.compare_digests(want[item], digests[item], f'{where}/{item}')
    if 'extra' in want and want['extra'] != digests['extra']:
      raise IntegrityError(f'{where}/extra differs from the manifest (altered or from '
                           'another run)')
    if not want.get('files_recorded'):
      record_checkpoint_files(workdir, step)
  state = state.replace(params=m['params'], batch_stats=m['batch_stats'],
                        opt_state=t['opt_state'], step=t['step'])
  return state, extra


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
  extra_backdoors: ExtraBackdoors | None = None  # backdoors beside the main one (App. H)

  def apply_fn(self, variables, images):
    """Logits ``(B, K)`` of images ``(B, H, W, C)`` in [0, 1] (inference mode)."""
    return self.model.apply(variables, images, train=False)


def load_run(path, num_classes: int | None = None) -> LoadedRun:
  """Loads a run directory written by :func:`scaleup_jax.train.train_and_evaluate`.

  Args:
    path: the run directory (contains ``config.json`` and ``checkpoints/``).
    num_classes: if given, the number of classes the caller expects; a
      checkpoint for another number is rejected.

  The files are checked against the run's ``manifest.json`` before anything is
  read, and the restored weights against the digests recorded when they were
  saved; a directory without a manifest loads after a one-line
  :class:`integrity.MissingManifestWarning`.

  Raises:
    CheckpointError: with the offending path or value, if the directory is
      missing, has no checkpoint, is corrupt or has the wrong class count.
    IntegrityError: naming the file or array, if anything differs from the
      manifest (flipped bytes, truncation, a missing file, files or weights
      of another run, an edited config).
  """
  path = Path(path).expanduser().absolute()
  if not path.is_dir():
    raise CheckpointError(f'checkpoint directory {str(path)!r} does not exist')
  cfg_file = path / 'config.json'
  if not cfg_file.is_file():
    raise CheckpointError(f'{str(path)!r} is not a run directory: it has no config.json')
  ckpt_dir = path / 'checkpoints'
  manager = None
  if ckpt_dir.is_dir():
    manager = ocp.CheckpointManager(ckpt_dir)
  step = manager.latest_step() if manager is not None else None
  if step is None:
    raise CheckpointError(f'no checkpoint found under {str(ckpt_dir)!r}')
  manifest = _verify_run_files(path, step)
  try:
    config = ml_collections.ConfigDict(json.loads(cfg_file.read_text()))
  except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'corrupt {cfg_file}: {e}') from None

  trigger, target = None, None
  trig_file = path / 'trigger.npz'
  if trig_file.is_file():
    try:
      with warnings.catch_warnings():
        # Vouched for by the manifest, or the run's own warning said it is unchecked.
        warnings.simplefilter('ignore', integrity.UncheckedFileWarning)
        trigger, target = load_trigger(trig_file)
    except IntegrityError:
      raise
    except Exception as e:  # zip/npz errors come in many types.
      raise CheckpointError(f'corrupt trigger file {str(trig_file)!r}: {e}') from None

  extra = None
  if (path / EXTRA_BACKDOORS).is_file():
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', integrity.UncheckedFileWarning)
        extra = load_extra_backdoors(path / EXTRA_BACKDOORS)
    except IntegrityError:
      raise
    except Exception as e:  # zip/npz errors come in many types.
      raise CheckpointError(f'corrupt extra-backdoor file {str(path / EXTRA_BACKDOORS)!r}: '
                            f'{e}') from None

  metrics = None
  if (path / 'metrics.json').is_file():
    try:
      metrics = json.loads((path / 'metrics.json').read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f'corrupt {str(path / "metrics.json")!r}: {e}') from None

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
  if manifest is not None:
    integrity.compare_digests(manifest['checkpoints'][str(int(step))]['model'],
                              integrity.tree_digest(stored),
                              f'weights of {str(ckpt_dir / str(step))!r}')
  restored = {'model': jax.tree.map(jax.numpy.asarray, stored)}
  variables = {'params': restored['model']['params'],
               'batch_stats': restored['model']['batch_stats']}
  return LoadedRun(model, variables, config, trigger, target, metrics, path, extra)


def num_backdoors(run: LoadedRun) -> int:
  """How many backdoors ``run`` carries: the main one plus its extra ones (0 for clean)."""
  if run.trigger is None:
    return 0
  return 1 + (len(run.extra_backdoors) if run.extra_backdoors is not None else 0)


def select_backdoor(run: LoadedRun, index: int) -> LoadedRun:
  """``run`` seen through backdoor ``index``: 0 is the main one (``trigger.npz``),
  ``i >= 1`` the extra backdoor ``i - 1`` (:data:`EXTRA_BACKDOORS`).

  The returned run's ``trigger`` and ``target`` are that backdoor's, so every
  evaluation tool measures it unchanged.

  Raises:
    InputError: if ``index`` is not one of the run's backdoors.
  """
  from scaleup_jax.validation import InputError
  n = num_backdoors(run)
  if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
    raise InputError(f'backdoor {index!r} does not exist: {str(run.path)!r} has {n} '
                     f'backdoor(s), numbered 0 (main) to {n - 1}')
  if index == 0:
    return run
  extra = run.extra_backdoors
  return dataclasses.replace(run, trigger=extra.triggers[index - 1],
                             target=int(extra.targets[index - 1]))


def _verify_run_files(path: Path, step: int) -> dict | None:
  """Checks a run directory's files against its manifest; returns the manifest.

  Checks every listed run file (config, trigger, metrics), that config and
  trigger are listed where present, and the files of checkpoint ``step``.
  Warns once and returns None for a directory without a manifest.
  """
  manifest = integrity.read_manifest(path)
  if manifest is None:
    _unchecked_warning(f'run {str(path)!r} has no {integrity.MANIFEST} (written by an older '
                       'version): loaded without an integrity check; seal it with '
                       '`python -m scaleup_jax.integrity seal DIR`')
    return None
  files = manifest['files']
  for rel in ('config.json', 'trigger.npz', EXTRA_BACKDOORS):
    if (path / rel).is_file() and rel not in files:
      raise IntegrityError(f'{str(path / rel)!r} is not listed in '
                           f'{str(path / integrity.MANIFEST)!r} (from another run?)')
  for rel in sorted(files):
    if not rel.startswith('checkpoints/'):
      integrity.check_file(path, rel, files[rel])
  _verify_step_files(path, manifest, step)
  return manifest


def seal_run(path, force: bool = False) -> dict:
  """Writes the manifest of a finished run directory that has none.

  Restores the latest checkpoint (which must load and fit its config), then
  records the digests of its ``model`` and ``extra`` items, the hashes of all
  its files and of the run files. The ``train`` item is covered by its file
  hashes only (its digest keys depend on the optimizer's tree structure).

  Args:
    path: the run directory.
    force: replace an existing manifest (the files are trusted as they are).

  Returns:
    The manifest written.

  Raises:
    IntegrityError: if the directory has a manifest and ``force`` is False.
    CheckpointError: if the checkpoint cannot be loaded.
  """
  path = Path(path).expanduser().absolute()
  if integrity.read_manifest(path) is not None and not force:
    raise IntegrityError(f'{str(path)!r} already has a {integrity.MANIFEST} (pass --force to '
                         'replace it, or verify it)')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', integrity.MissingManifestWarning)
    if force:
      (path / integrity.MANIFEST).unlink(missing_ok=True)
    run = load_run(path)  # readable, fits its config
  manager = ocp.CheckpointManager(path / 'checkpoints')
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(),
                                                           extra=ocp.args.JsonRestore()))
  del run
  manifest = {'version': integrity.MANIFEST_VERSION, 'files': {},
              'checkpoints': {str(int(step)): {
                  'model': integrity.tree_digest(restored['model']),
                  'extra': _json_digest(dict(restored['extra']))}}}
  for rel in RUN_FILES:
    if (path / rel).is_file():
      manifest['files'][rel] = integrity.file_record(path / rel)
  integrity.save_manifest(path, manifest)
  record_checkpoint_files(path, step)
  return integrity.read_manifest(path)


def verify_run(path) -> LoadedRun:
  """Loads a run directory with every check of :func:`load_run`; a missing manifest is an error."""
  path = Path(path).expanduser().absolute()
  if integrity.read_manifest(path) is None:
    raise IntegrityError(f'{str(path)!r} has no {integrity.MANIFEST}')
  return load_run(path)
