"""Training a (possibly backdoored) classifier: pure steps and a resumable loop.

``train_and_evaluate(config, workdir)`` poisons the training set as the config
says, trains with SGD + momentum under a warmup-cosine schedule with random
crop and flip, saves an orbax checkpoint every epoch (resuming from the last
one after a kill), and writes benign accuracy (BA) and attack success rate
(ASR) to ``workdir/metrics.json``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from scaleup_jax import attacks
from scaleup_jax import checkpoint as ckpt_lib
from scaleup_jax import data as data_lib
from scaleup_jax import integrity
from scaleup_jax import models
from scaleup_jax import poison
from scaleup_jax import scaleup
from scaleup_jax.batching import map_batches
from scaleup_jax.validation import InputError


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_train_state(key, model, image_shape, tx) -> TrainState:
  """Initialises parameters and batch statistics for ``(1, *image_shape)`` inputs."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      tx=tx,
  )


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum, decoupled-from-loss L2 weight decay, warmup + cosine."""
  total = config.num_epochs * steps_per_epoch
  warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=config.learning_rate / 10,
      peak_value=config.learning_rate,
      warmup_steps=warmup,
      decay_steps=max(total, 1),
      end_value=0.0,
  )
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )


def augment(key, images, pad: int = 4):
  """Random crop after ``pad``-pixel zero padding, and random horizontal flip.

  Args:
    key: PRNG key.
    images: ``(B, H, W, C)`` float in [0, 1].
    pad: padding in pixels on each side before cropping back to ``(H, W)``.

  Returns:
    Augmented images, same shape.
  """
  b, h, w, c = images.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  out = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], out[:, :, ::-1, :], out)


def train_step(state: TrainState, batch, adaptive: attacks.AdaptiveLoss | None = None
               ) -> tuple[TrainState, dict]:
  """One SGD step on ``batch = {'image': (B,H,W,C), 'label': (B,)}``.

  With ``adaptive`` (the adaptive attack, SCALE-UP Eq. 5) the batch also holds
  ``'flag'`` ``(B,)``, ``'true_label'`` ``(B,)`` and ``'key'``; scaled copies
  of its poisoned rows (:func:`scaleup_jax.attacks.adaptive_rows`) join the
  forward pass with their true labels, weighted by ``adaptive.weight``.
  """
  images, labels = batch['image'], batch['label']
  b = images.shape[0]
  weights = jnp.ones((b,), jnp.float32) / b
  if adaptive is not None:
    extra, extra_labels, valid = attacks.adaptive_rows(
        batch['key'], images, batch['flag'], batch['true_label'], adaptive)
    images = jnp.concatenate([images, extra])
    labels = jnp.concatenate([labels, extra_labels])
    weights = jnp.concatenate([weights, valid * (adaptive.weight / b)])

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        train=True,
        mutable=['batch_stats'],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(weights * ce), (logits, ce, updates)

  (loss, (logits, ce, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates['batch_stats'])
  correct = jnp.argmax(logits[:b], -1) == labels[:b]
  metrics = {'loss': jnp.mean(ce[:b]), 'accuracy': jnp.mean(correct)}
  if adaptive is not None:
    n_valid = jnp.maximum(jnp.sum(valid), 1)
    metrics['adaptive_loss'] = jnp.sum(jnp.where(valid, ce[b:], 0.0)) / n_valid
  return state, metrics


def make_batch_prep(batch_transform=None, augmentation: bool = True):
  """``prep(key, images, flags) -> images``: crop/flip, then the attack's batch transform.

  ``augmentation=False`` skips crop/flip: the paper's regime for every attack
  but PhysicalBA (Sec. 5.1, App. C).
  """

  def prep(key, images, flags):
    if augmentation:
      images = augment(key, images)
    if batch_transform is not None:
      images = batch_transform(jax.random.fold_in(key, 1), images, flags)
    return images

  return prep


@functools.partial(jax.jit, static_argnums=0)
def _predict(apply_fn, variables, images):
  return scaleup.predict_labels(apply_fn, variables, images)


def predict_labels(apply_fn, variables, images, batch_size: int = 500, progress=False):
  """Predicted labels ``(N,)`` for host images ``(N, H, W, C)``, batched and padded.

  One compiled function per ``apply_fn`` (a static argument, so keep the same
  object across calls, as the training loop does) and batch shape; the
  variables are an argument, so new weights after each epoch do not recompile.
  """
  fn = functools.partial(_predict, apply_fn, variables)
  return map_batches(fn, images, batch_size, desc='predict', progress=progress)


def backdoor_metrics(apply_fn, variables, test: data_lib.ImageDataset, trigger, target,
                     batch_size=500, progress=False, source_classes=None) -> dict:
  """Benign accuracy on ``test`` and, if ``trigger`` is given, attack success rate.

  ASR is the fraction of triggered test images whose true label is not the
  target that the model assigns to the target. For a partial backdoor
  (``source_classes``), ASR counts the images of the source classes only, and
  ``asr_non_source`` the triggered images of the other non-target classes
  (low when the backdoor is really source-specific).
  """
  preds = predict_labels(apply_fn, variables, test.images, batch_size, progress)
  out = {'ba': float(np.mean(preds == test.labels)), 'num_test': int(len(test))}
  if trigger is not None:
    poisoned, true, _ = poison.poisoned_test_set(test.images, test.labels, trigger, target)
    ppreds = predict_labels(apply_fn, variables, poisoned, batch_size, progress)
    hit = ppreds == target
    if source_classes is None:
      out['asr'] = float(np.mean(hit))
      out['num_poisoned_test'] = int(len(poisoned))
    else:
      src = np.isin(true, np.asarray(source_classes))
      out['asr'] = float(np.mean(hit[src]))
      out['num_poisoned_test'] = int(src.sum())
      out['asr_non_source'] = float(np.mean(hit[~src])) if (~src).any() else float('nan')
  return out


def prepare_data(config, key, workdir=None):
  """Loads the splits and poisons the training set (:func:`attacks.build_poisoning`).

  Returns:
    ``(poisoning, test)``; ``poisoning.trigger`` is None for a clean run.
  """
  attacks.check_attack_name(config.attack)
  load = functools.partial(data_lib.load_split, config.dataset, data_dir=config.data_dir,
                           download=config.get('download'))
  train = load('train', max_examples=config.max_train_examples or None)
  test = load('test', max_examples=config.max_test_examples or None)
  return attacks.build_poisoning(key, train, config, workdir), test


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config``, checkpointing to ``workdir``; returns the final metrics.

  Resumes from the latest checkpoint in ``workdir`` if there is one, after
  checking it against the run's ``manifest.json`` (see
  :mod:`scaleup_jax.checkpoint`). Writes ``config.json``, ``trigger.npz``
  (mask, pattern, poison indices, target), ``checkpoints/``, the manifest and,
  at the end, ``metrics.json``; a kill at any point resumes to the same model.
  """
  if int(config.num_epochs) < 1:
    raise InputError(f'num_epochs must be at least 1, got {config.num_epochs}')
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  root = jax.random.key(config.seed)
  k_data, k_init, k_train = jax.random.split(root, 3)

  poisoning, test = prepare_data(config, k_data, workdir)
  train, trigger, poison_idx = poisoning.train, poisoning.trigger, poisoning.poison_indices
  sources = attacks.source_classes(config)  # None, or a partial backdoor's source classes

  model = models.get_model(config.model, train.num_classes)
  steps_per_epoch = len(train) // config.batch_size
  if steps_per_epoch == 0:
    raise InputError(f'batch_size {config.batch_size} exceeds the {len(train)} training images')
  tx = make_optimizer(config, steps_per_epoch)
  state = create_train_state(k_init, model, train.images.shape[1:], tx)

  manager = ckpt_lib.checkpoint_manager(workdir)
  start_epoch, history, elapsed = 0, [], 0.0
  resuming = manager.latest_step() is not None
  if resuming:
    state, extra = ckpt_lib.restore_train_state(manager, state)
    start_epoch, history = extra['epoch'], extra['history']
    elapsed = extra.get('train_seconds', 0.0)
    print(f'Resuming from epoch {start_epoch} in {workdir}', flush=True)
  # Written after the checkpoint was verified, so a refused resume changes nothing.
  ckpt_lib.save_run_files(workdir, config, trigger, poison_idx, resuming=resuming,
                          extra=poisoning.extra)

  jit_step = jax.jit(functools.partial(train_step, adaptive=poisoning.adaptive), donate_argnums=0)
  jit_prep = jax.jit(make_batch_prep(poisoning.batch_transform,
                                     augmentation=bool(config.get('augment', True))))
  apply_eval = functools.partial(model.apply, train=False)
  quick_test = test.take(np.arange(min(len(test), config.eval_subset)))

  for epoch in range(start_epoch, config.num_epochs):
    integrity.fault_point(f'epoch_start:{epoch}')
    t0 = time.time()
    k_epoch = jax.random.fold_in(k_train, epoch)
    k_perm, k_aug = jax.random.split(k_epoch)
    perm = np.asarray(jax.random.permutation(k_perm, len(train)))
    bar = tqdm(range(steps_per_epoch), desc=f'epoch {epoch + 1}/{config.num_epochs}',
               unit='step', disable=not config.progress, dynamic_ncols=True)
    sums = {}
    for step in bar:
      idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
      k_step = jax.random.fold_in(k_aug, step)
      flags = poisoning.flags[idx]
      batch = {'image': jit_prep(k_step, train.images[idx], flags), 'label': train.labels[idx]}
      if poisoning.adaptive is not None:
        batch.update(flag=flags, true_label=poisoning.true_labels[idx],
                     key=jax.random.fold_in(k_step, 2))
      state, metrics = jit_step(state, batch)
      if step % config.log_every == 0 or step == steps_per_epoch - 1:
        metrics = jax.device_get(metrics)
        sums.update({k: float(v) for k, v in metrics.items()})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}")
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    quick = backdoor_metrics(apply_eval, variables, quick_test, trigger, config.target_label,
                             source_classes=sources)
    elapsed += time.time() - t0
    record = {'epoch': epoch + 1, 'train_loss': sums['loss'],
              'train_accuracy': sums['accuracy'], 'seconds': elapsed, **quick}
    if 'adaptive_loss' in sums:
      record['train_adaptive_loss'] = sums['adaptive_loss']
    history.append(record)
    print(json.dumps(record), flush=True)
    ckpt_lib.save_train_state(manager, epoch + 1, state,
                              {'epoch': epoch + 1, 'history': history, 'train_seconds': elapsed})
  ckpt_lib.finish_saves(manager)

  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  final = backdoor_metrics(apply_eval, variables, test, trigger, config.target_label,
                           progress=config.progress, source_classes=sources)
  if poisoning.extra is not None:
    final['extra_backdoors'] = [
        {'target': t, 'asr': backdoor_metrics(apply_eval, variables, test, trig, t)['asr']}
        for trig, t in zip(poisoning.extra.triggers, poisoning.extra.targets)]
  metrics = {
      **final,
      'model': config.model,
      'attack': config.attack,
      'target_label': int(config.target_label),
      'poison_rate': float(config.poison_rate),
      'num_poisoned_train': int(len(poison_idx)),
      'poisoning': poisoning.info,
      'num_train': int(len(train)),
      'epochs': int(config.num_epochs),
      'train_seconds': round(elapsed, 1),
      'train_images_per_second': round(
          steps_per_epoch * config.batch_size * config.num_epochs / max(elapsed, 1e-9), 1),
      'command': ' '.join([os.path.basename(sys.executable), '-m', 'train.main'] + sys.argv[1:]),
      'jax_version': jax.__version__,
      'device': jax.devices()[0].device_kind,
      'history': history,
  }
  integrity.atomic_write_json(workdir / 'metrics.json', metrics)
  ckpt_lib.record_file(workdir, 'metrics.json')
  print(f"BA {final['ba']:.4f}" + (f"  ASR {final['asr']:.4f}" if 'asr' in final else ''),
        flush=True)
  return metrics
