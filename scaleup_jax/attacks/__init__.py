"""Backdoor attacks as poisoning recipes over the training set.

``build_poisoning(key, train, config)`` turns the clean training set into what
the training loop consumes (a :class:`Poisoning`): poisoned images and labels,
a per-example flag, the test-time trigger and, for attacks that act during
training, a jittable batch transform or an extra loss term. Every random
choice comes from ``key``; the same key gives the same poisoned indices,
triggers and images.

==================  ===========  ==========================================
name                labels       recipe
==================  ===========  ==========================================
badnets             dirty        patch (:func:`poison.badnets_trigger`)
blended             dirty        blend with a noise image (alpha 0.2)
physical            dirty        patch + colour jitter / affine on poisoned
                                 images at every step (PhysicalBA)
wanet               dirty        smooth warp + noise-warped cross samples
issba               dirty        sample-specific StegaStamp residual
label_consistent    clean        target-class images, PGD on a clean model,
                                 plus four corner checkerboards
tuap                clean        target-class images + a targeted universal
                                 adversarial perturbation of a clean model
adaptive            dirty        BadNets + the paper's Eq. 5 term keeping
                                 scaled poisoned images at their true label
==================  ===========  ==========================================

References:
  Guo, Li, Chen, Wang, Yuan, Zhang, Jia. "SCALE-UP: An Efficient Black-box
  Input-level Backdoor Detection via Analyzing Scaled Prediction
  Consistency", ICLR 2023 (Sec. 5.4 and Eq. 5 for the adaptive attack).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from scaleup_jax import data as data_lib
from scaleup_jax import integrity
from scaleup_jax import paths
from scaleup_jax import poison
from scaleup_jax.validation import InputError

CLEAN, POISONED, CROSS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class AdaptiveLoss:
  """The extra term of the adaptive attack (SCALE-UP paper, Eq. 5).

  For up to ``max_rows`` poisoned rows of each batch, one scale ``n`` is drawn
  per row from ``scales`` and the model is also trained to give
  ``clip(n * x')`` the true label ``y`` of ``x'``; the term's weight is
  ``weight`` (the loss is ``CE(batch) + weight * sum CE(extra rows) / B``).
  """

  scales: tuple = (3.0, 5.0, 7.0, 9.0, 11.0)
  weight: float = 1.0
  max_rows: int = 24


@dataclasses.dataclass
class Poisoning:
  """A poisoned training set and what training needs to use it.

  Attributes:
    train: images ``(N, H, W, C)`` with triggers applied and labels after
      relabelling.
    true_labels: ``(N,)`` the clean labels.
    flags: ``(N,)`` int32: :data:`CLEAN`, :data:`POISONED` or :data:`CROSS`
      (WaNet's noise samples and a partial backdoor's cover images, which
      keep their labels).
    poison_indices: sorted indices of the poisoned examples.
    trigger: the test-time trigger (``apply(images)``), None for clean runs.
    extra: backdoors into other labels beside the main one
      (:class:`poison.ExtraBackdoors`), or None.
    batch_transform: ``(key, images (B,H,W,C), flags (B,)) -> images``,
      jittable, applied after crop/flip at every step; None if unused.
    adaptive: the extra loss of the adaptive attack, or None.
    info: JSON-able facts about the poisoning (e.g. UAP fooling rate).
  """

  train: data_lib.ImageDataset
  true_labels: np.ndarray
  flags: np.ndarray
  poison_indices: np.ndarray
  trigger: Any
  extra: poison.ExtraBackdoors | None = None
  batch_transform: Callable | None = None
  adaptive: AdaptiveLoss | None = None
  info: dict = dataclasses.field(default_factory=dict)


def _kwargs(config) -> dict:
  kw = config.get('attack_kwargs', None)
  return dict(kw.to_dict() if hasattr(kw, 'to_dict') else (kw or {}))


def _pop(kw: dict, defaults: dict) -> dict:
  return {k: kw.pop(k, v) for k, v in defaults.items()}


def source_classes(config) -> tuple[int, ...] | None:
  """A partial backdoor's source classes (``config.source_classes``), None for all classes."""
  sources = config.get('source_classes', ()) or ()
  return tuple(int(c) for c in sources) or None


def _dirty_label(key, train, config, trigger) -> Poisoning:
  """Stamps ``trigger`` on a ``poison_rate`` fraction of non-target images and relabels them.

  For a partial backdoor (``source_classes``), ``cover_rate`` of the training
  set, drawn from the other non-target classes, is stamped too and keeps its
  true labels (flag :data:`CROSS`), so that the trigger works on the source
  classes only (Wang et al. 2019's source-specific attack; paper App. K).
  """
  sources = source_classes(config)
  idx = poison.select_poison_indices(key, train.labels, config.poison_rate,
                                     config.target_label, sources)
  images, labels = poison.poison_dataset(train.images, train.labels, idx, trigger,
                                         config.target_label)
  flags = np.zeros(len(labels), np.int32)
  flags[idx] = POISONED
  info = {}
  cover_rate = float(config.get('cover_rate', 0.0) or 0.0)
  if cover_rate:
    if sources is None:
      raise InputError(f'cover_rate {cover_rate} needs source_classes (a partial backdoor): the '
                       'cover images are triggered images of the other classes')
    others = [c for c in range(train.num_classes)
              if c not in sources and c != config.target_label]
    cover = poison.select_poison_indices(jax.random.fold_in(key, 7), train.labels, cover_rate,
                                         config.target_label, others)
    images[cover] = trigger.apply(images[cover])
    flags[cover] = CROSS
    info['cover'] = {'rate': cover_rate, 'num_images': int(len(cover)), 'classes': others}
  return Poisoning(data_lib.ImageDataset(images, labels, train.num_classes),
                   np.asarray(train.labels), flags, idx, trigger, info=info)


def _clean_label_indices(key, train, config) -> np.ndarray:
  """``poison_rate * N`` images drawn from the target class only."""
  return poison.select_poison_indices(key, train.labels, config.poison_rate,
                                      config.target_label, (config.target_label,),
                                      include_target=True)


def _load_clean_model(path: str, num_classes: int):
  """The clean model an attack crafts its trigger on; it must know the dataset's classes
  (a CIFAR-10 model would craft a garbage trigger for a 200-class dataset, silently)."""
  from scaleup_jax import checkpoint as ckpt_lib
  return ckpt_lib.load_run(paths.resolve_ckpt(path), num_classes=num_classes)


def _info_file(workdir, kind: str, info: dict | None = None) -> dict:
  """Saves (``info`` given) or reads the facts of an expensive trigger beside its file.

  Saved atomically with a checksum (:func:`integrity.save_json_checked`, kind
  ``'trigger_info'``); a plain JSON file of an older version is accepted.
  """
  if workdir is None:
    return info or {}
  f = Path(workdir) / f'trigger_{kind}_info.json'
  if info is not None:
    info = json.loads(json.dumps(info, default=float))
    integrity.save_json_checked(f, info, 'trigger_info')
    return info
  return integrity.load_json_checked(f, 'trigger_info', allow_unchecked=True) if f.is_file() else {}


POISON_CACHE = 'poison_cache.npz'


def save_poison_cache(path, indices, images, settings: dict) -> None:
  """Atomically writes a poisoned-image cache with its checksum (kind ``'poison_cache'``)."""
  integrity.save_npz_checked(path, 'poison_cache', indices=np.asarray(indices),
                             images=np.asarray(images), settings=json.dumps(settings))


def load_poison_cache(path, settings: dict, indices) -> np.ndarray | None:
  """The cached images of ``path`` if made for ``indices``, else None.

  Raises:
    IntegrityError: naming the file, if it is unreadable or altered.
    InputError: if it was made with other attack settings than ``settings``.
  """
  z = integrity.load_npz_checked(path, 'poison_cache')
  missing = sorted({'indices', 'images'} - set(z))
  if missing:
    raise integrity.IntegrityError(f'{str(path)!r} lacks arrays {missing} of a poison cache')
  saved = json.loads(str(z['settings'])) if 'settings' in z else None
  _check_settings(saved, settings, Path(path))
  return z['images'] if np.array_equal(z['indices'], indices) else None


def _settings(config, exclude: tuple = ()) -> dict:
  """What an expensive trigger or poison cache depends on (saved beside it, checked on reuse);
  ``exclude`` names ``attack_kwargs`` that do not affect it."""
  kw = {k: v for k, v in _kwargs(config).items() if k not in exclude}
  settings = {'attack': config.attack, 'attack_kwargs': kw,
              'seed': config.get('seed', None), 'target_label': config.target_label,
              'dataset': config.get('dataset', None),
              'max_train_examples': config.get('max_train_examples', None) or 0}
  return json.loads(json.dumps(settings, sort_keys=True, default=float))


def _check_settings(saved: dict | None, now: dict, what: Path) -> None:
  """Raises :class:`InputError` if ``what`` was made with other attack settings than ``now``.

  Files written before settings were recorded (``saved`` None) are accepted.
  """
  if saved is None or saved == now:
    return

  def flat(d, prefix=''):
    out = {}
    for k, v in d.items():
      out.update(flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
    return out

  saved, now = flat(saved), flat(now)
  keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  diff = '; '.join(f'{k}: saved {saved.get(k)!r}, now {now.get(k)!r}' for k in keys)
  raise InputError(f'{what} was made with other attack settings than this run ({diff}). '
                   'The checkpoints beside it were trained on that poisoning: use a new '
                   '--workdir, or restore the old settings to resume.')


def _cached_trigger(workdir, kind: str, settings: dict):
  """The trigger saved in ``workdir/trigger.npz`` by an earlier start of this run.

  Raises :class:`InputError` if its info file records other ``settings``.
  """
  if workdir is None:
    return None
  f = Path(workdir) / 'trigger.npz'
  if not f.is_file():
    return None
  trig, _ = poison.load_trigger(f)
  if trig.kind != kind:
    return None
  _check_settings(_info_file(workdir, kind).get('settings'), settings, f)
  return trig


# ------------------------------------------------------------------ builders


def _add_extra_backdoors(key, out: Poisoning, targets, rate: float, make_trigger) -> None:
  """Adds one backdoor per label of ``targets`` to ``out`` in place (paper App. H, App. C).

  Backdoor ``i`` stamps ``make_trigger(key_i, i)`` on ``round(rate * N)``
  images drawn from those not poisoned yet and not of class ``targets[i]``,
  and relabels them ``targets[i]``.
  """
  num_classes = out.train.num_classes
  bad = [t for t in targets if not (isinstance(t, (int, np.integer)) and 0 <= t < num_classes)]
  if bad or len(set(targets)) != len(targets):
    raise InputError(f'extra_targets must be distinct classes in [0, {num_classes}); got '
                     f'{tuple(targets)}')
  images, labels = out.train.images, out.train.labels
  triggers, indices = [], []
  for i, (k, target) in enumerate(zip(jax.random.split(key, len(targets)), targets)):
    k_trigger, k_poison = jax.random.split(k)
    trigger = make_trigger(k_trigger, i)
    # Images poisoned already count as target-class images: never candidates again.
    free = np.where(out.flags == CLEAN, out.true_labels, target)
    idx = poison.select_poison_indices(k_poison, free, rate, target)
    images[idx] = trigger.apply(images[idx])
    labels[idx] = target
    out.flags[idx] = POISONED
    triggers.append(trigger)
    indices.append(idx)
  out.extra = poison.ExtraBackdoors(tuple(triggers), tuple(int(t) for t in targets),
                                    tuple(indices))
  out.info['extra_backdoors'] = {'targets': [int(t) for t in targets], 'rate': float(rate),
                                 'num_poisoned': [int(len(i)) for i in indices]}


def _badnets(key, train, config, kw, workdir):
  """BadNets; ``extra_targets`` (with ``extra_rate``, default the poisoning rate) adds one
  random patch per listed label, at the corners in turn after the main one's."""
  del workdir
  k_trigger, k_poison = jax.random.split(key)
  num_triggers = kw.pop('num_triggers', 1)
  extra_targets = tuple(kw.pop('extra_targets', ()) or ())
  extra_rate = kw.pop('extra_rate', None)
  shape = train.images.shape[1:]
  if num_triggers == 1:
    trigger = poison.badnets_trigger(k_trigger, shape, **kw)
  else:
    # Several triggers, one target: random patches at the corners in turn.
    corners = kw.pop('corners', poison.CORNERS)
    kw.pop('corner', None)  # each trigger gets its own corner
    keys = jax.random.split(k_trigger, num_triggers)
    trigger = poison.MultiTrigger(tuple(
        poison.badnets_trigger(keys[i], shape, corner=corners[i % len(corners)], **kw)
        for i in range(num_triggers)))
  out = _dirty_label(k_poison, train, config, trigger)
  if extra_targets:
    if config.target_label in extra_targets:
      raise InputError(f'extra_targets {extra_targets} include the main target '
                       f'{config.target_label}')
    first = poison.CORNERS.index(kw.pop('corner', 'bottom_right'))
    corners = [poison.CORNERS[(first + 1 + i) % len(poison.CORNERS)]
               for i in range(len(extra_targets))]
    _add_extra_backdoors(
        jax.random.fold_in(key, 6), out, extra_targets,
        config.poison_rate if extra_rate is None else float(extra_rate),
        lambda k, i: poison.badnets_trigger(k, shape, corner=corners[i], **kw))
  return out


def _blended(key, train, config, kw, workdir):
  del workdir
  k_trigger, k_poison = jax.random.split(key)
  trigger = poison.blended_trigger(k_trigger, train.images.shape[1:], **kw)
  return _dirty_label(k_poison, train, config, trigger)


def _physical(key, train, config, kw, workdir):
  del workdir
  from scaleup_jax.attacks import physical
  k_trigger, k_poison = jax.random.split(key)
  transform_kw = kw.pop('transform', {}) or {}
  trigger = poison.badnets_trigger(k_trigger, train.images.shape[1:], **kw)
  out = _dirty_label(k_poison, train, config, trigger)
  out.batch_transform = physical.physical_batch_transform(**transform_kw)
  out.info['transform'] = transform_kw or 'defaults of attacks.physical'
  return out


def _wanet(key, train, config, kw, workdir):
  del workdir
  from scaleup_jax.attacks import wanet
  k_trigger, k_poison = jax.random.split(key)
  k_cross = jax.random.fold_in(key, 2)
  cross_ratio = float(kw.pop('cross_ratio', 2.0))
  trigger = wanet.wanet_trigger(k_trigger, train.images.shape[1:], **kw)
  out = _dirty_label(k_poison, train, config, trigger)
  # Noise-mode cross samples: a random ``cross_ratio * num_poisoned`` of the
  # other images are warped with a freshly perturbed grid at every step.
  rest = np.flatnonzero(out.flags == CLEAN)
  n_cross = min(int(round(cross_ratio * len(out.poison_indices))), len(rest))
  cross = np.sort(rest[np.asarray(jax.random.choice(k_cross, len(rest), (n_cross,),
                                                    replace=False))])
  out.flags[cross] = CROSS
  out.batch_transform = wanet.wanet_batch_transform(trigger.grid)
  out.info['num_cross'] = int(n_cross)
  return out


def _issba(key, train, config, kw, workdir):
  from scaleup_jax.attacks import issba
  k_trigger, k_poison = jax.random.split(key)
  strength = float(kw.pop('strength', 1.0))  # applied to the residual, not part of training
  opts = _pop(kw, {'secret_len': 16, 'steps': 3000, 'encoder_images': 10000})
  opts.update(kw)
  settings = _settings(config, exclude=('strength',))
  trigger = _cached_trigger(workdir, 'encoder', settings)
  if trigger is None:
    n = min(int(opts.pop('encoder_images')), len(train))
    sub = np.asarray(jax.random.permutation(jax.random.fold_in(key, 3), len(train)))[:n]
    trigger, info = issba.issba_trigger_from_training(
        k_trigger, train.images[sub], secret_len=opts.pop('secret_len'),
        steps=opts.pop('steps'), progress=config.get('progress', True), **opts)
    info = {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
            for k, v in dict(info).items()}
    info = _info_file(workdir, 'encoder', {**info, 'settings': settings})
  else:
    info = _info_file(workdir, 'encoder')
  trigger = dataclasses.replace(trigger, strength=strength)
  out = _dirty_label(k_poison, train, config, trigger)
  out.info['encoder'] = info
  idx = out.poison_indices
  mse = np.mean((out.train.images[idx] - train.images[idx]) ** 2, axis=(1, 2, 3))
  out.info['strength'] = strength
  out.info['poisoned_psnr_db'] = float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))
  return out


def _label_consistent(key, train, config, kw, workdir):
  from scaleup_jax.attacks import adversarial
  k_trigger, k_poison = jax.random.split(key)
  k_pgd = jax.random.fold_in(key, 4)
  pgd = _pop(kw, {'eps': 8 / 255, 'step': 2 / 255, 'steps': 10})
  clean_ckpt = kw.pop('clean_ckpt', 'zoo/cifar10_clean_resnet20')
  trigger = adversarial.label_consistent_trigger(k_trigger, train.images.shape[1:], **kw)
  idx = _clean_label_indices(k_poison, train, config)
  cache = Path(workdir) / POISON_CACHE if workdir is not None else None
  settings = _settings(config)
  adv = None
  if cache is not None and cache.is_file():
    adv = load_poison_cache(cache, settings, idx)
  if adv is None:
    clean = _load_clean_model(clean_ckpt, train.num_classes)
    adv = adversarial.pgd_dataset(k_pgd, clean.apply_fn, clean.variables, train.images[idx],
                                  train.labels[idx], progress=config.get('progress', True),
                                  **pgd)
    if cache is not None:
      save_poison_cache(cache, idx, adv, settings)
  images = np.array(train.images, copy=True)
  images[idx] = trigger.apply(adv)
  flags = np.zeros(len(train), np.int32)
  flags[idx] = POISONED
  return Poisoning(data_lib.ImageDataset(images, np.asarray(train.labels), train.num_classes),
                   np.asarray(train.labels), flags, idx, trigger,
                   info={'pgd': pgd, 'clean_ckpt': str(clean_ckpt)})


def _tuap(key, train, config, kw, workdir):
  from scaleup_jax.attacks import adversarial
  k_uap, k_poison = jax.random.split(key)
  opts = _pop(kw, {'eps': 8 / 255, 'steps': 300, 'batch_size': 128, 'uap_images': 5000})
  clean_ckpt = kw.pop('clean_ckpt', 'zoo/cifar10_clean_resnet20')
  opts.update(kw)
  settings = _settings(config)
  trigger = _cached_trigger(workdir, 'additive', settings)
  info = {'uap': dict(opts), 'clean_ckpt': str(clean_ckpt), 'settings': settings}
  if trigger is None:
    clean = _load_clean_model(clean_ckpt, train.num_classes)
    n = min(int(opts.pop('uap_images')), len(train))
    sub = np.asarray(jax.random.permutation(jax.random.fold_in(key, 5), len(train)))[:n]
    delta = adversarial.targeted_uap(k_uap, clean.apply_fn, clean.variables, train.images[sub],
                                     config.target_label, progress=config.get('progress', True),
                                     **opts)
    trigger = adversarial.AdditiveTrigger(delta)
    # Fooling rate of the clean model on the UAP's own (non-target) images.
    info['fooling_rate'] = float(adversarial.uap_fooling_rate(
        clean.apply_fn, clean.variables, train.images[sub], delta, config.target_label,
        labels=train.labels[sub]))
    info = _info_file(workdir, 'additive', info)
  else:
    info = _info_file(workdir, 'additive') or info
  idx = _clean_label_indices(k_poison, train, config)
  images = np.array(train.images, copy=True)
  images[idx] = trigger.apply(images[idx])
  flags = np.zeros(len(train), np.int32)
  flags[idx] = POISONED
  return Poisoning(data_lib.ImageDataset(images, np.asarray(train.labels), train.num_classes),
                   np.asarray(train.labels), flags, idx, trigger, info=info)


def _adaptive(key, train, config, kw, workdir):
  spec = AdaptiveLoss(**_pop(kw, {f.name: f.default for f in dataclasses.fields(AdaptiveLoss)}))
  spec = dataclasses.replace(spec, scales=tuple(float(s) for s in spec.scales))
  out = _badnets(key, train, config, kw, workdir)
  out.adaptive = spec
  out.info['adaptive'] = dataclasses.asdict(spec)
  return out


ATTACKS: dict[str, Callable] = {
    'badnets': _badnets,
    'blended': _blended,
    'physical': _physical,
    'wanet': _wanet,
    'issba': _issba,
    'label_consistent': _label_consistent,
    'tuap': _tuap,
    'adaptive': _adaptive,
}


def check_attack_name(name: str) -> None:
  """Raises :class:`InputError` unless ``name`` is ``'none'`` or in :data:`ATTACKS`."""
  if name != 'none' and name not in ATTACKS:
    raise InputError(f"unknown attack {name!r}; expected 'none' or one of {sorted(ATTACKS)}")


def build_poisoning(key: jax.Array, train: data_lib.ImageDataset, config,
                    workdir: str | Path | None = None) -> Poisoning:
  """Poisons ``train`` as ``config`` says (``attack``, ``attack_kwargs``, ``poison_rate``,
  ``target_label``, ``source_classes``).

  Args:
    key: PRNG key; the trigger, poisoned indices and any randomness of the
      recipe are derived from it.
    train: the clean training set.
    config: the training config (see ``train/configs``).
    workdir: run directory; expensive steps (PGD images, UAP, steganography
      encoder) are reused from it when a run resumes.

  Returns:
    A :class:`Poisoning`; for ``attack='none'`` the clean set with no trigger.

  Raises:
    InputError: for an unknown attack name or option.
  """
  name = config.attack
  check_attack_name(name)
  if name == 'none':
    return Poisoning(train, np.asarray(train.labels), np.zeros(len(train), np.int32),
                     np.zeros((0,), np.int64), None)
  if not 0 <= config.target_label < train.num_classes:
    raise InputError(f'target_label {config.target_label} is not a class of this '
                     f'{train.num_classes}-class dataset')
  try:
    return ATTACKS[name](key, train, config, _kwargs(config), workdir)
  except TypeError as e:  # unknown keyword of a trigger factory
    if 'unexpected keyword' in str(e):
      raise InputError(f'attack {name!r}: {e}') from None
    raise


def adaptive_rows(key, images, flags, true_labels, spec: AdaptiveLoss):
  """The extra rows of the adaptive attack's loss for one batch.

  Args:
    key: PRNG key (draws one scale per row).
    images: ``(B, H, W, C)`` the batch after augmentation.
    flags: ``(B,)`` int.
    true_labels: ``(B,)`` int.
    spec: the :class:`AdaptiveLoss`.

  Returns:
    ``(extra_images (R, H, W, C), extra_labels (R,), valid (R,) bool)`` with
    ``R = spec.max_rows``: the first ``R`` poisoned rows scaled by a random
    ``n`` and clipped, their true labels, and which rows are real.
  """
  rows = min(spec.max_rows, images.shape[0])
  order = jnp.argsort((flags != POISONED).astype(jnp.int32), stable=True)[:rows]
  valid = flags[order] == POISONED
  n = jax.random.choice(key, jnp.asarray(spec.scales, images.dtype), (rows,))
  extra = jnp.clip(images[order] * n[:, None, None, None], 0.0, 1.0)
  return extra, true_labels[order], valid
