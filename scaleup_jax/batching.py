"""Fixed-shape batching: pad the last batch and mask it, so nothing recompiles."""

from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from scaleup_jax.validation import InputError


def pad_to(batch: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 of ``batch`` to ``size`` by repeating its last row."""
  n = batch.shape[0]
  if n == size:
    return batch
  if n == 0 or n > size:
    raise ValueError(f'cannot pad a batch of {n} rows to {size}')
  reps = np.repeat(batch[-1:], size - n, axis=0)
  return np.concatenate([batch, reps], axis=0)


def map_batches(
    fn: Callable,
    images: np.ndarray,
    batch_size: int,
    desc: str | None = None,
    progress: bool = False,
):
  """Applies ``fn`` to fixed-size batches of ``images`` and concatenates.

  The last batch is padded to ``batch_size`` (so ``fn`` compiles once) and its
  padded rows are dropped from the result: every image gets exactly one output
  row.

  Args:
    fn: maps a ``(batch_size, ...)`` array to an array or a tuple of arrays,
      each with leading dimension ``batch_size``.
    images: ``(N, ...)`` host array.
    batch_size: fixed batch size.
    desc: progress-bar label.
    progress: show a tqdm progress bar.

  Returns:
    The outputs of ``fn`` (array or tuple), as numpy, each of leading size N.
  """
  n = len(images)
  if n == 0:
    raise InputError('no images to process (got an empty array)')
  outs = []
  starts = range(0, n, batch_size)
  for start in tqdm(starts, desc=desc, disable=not progress, unit='batch', leave=False):
    chunk = images[start : start + batch_size]
    valid = len(chunk)
    out = fn(pad_to(chunk, batch_size))
    outs.append((out, valid))
  # Convert to numpy only after every batch has been dispatched, so device work
  # overlaps with the host loop.
  def gather(getter):
    return np.concatenate([np.asarray(getter(o))[:v] for o, v in outs], axis=0)

  first = outs[0][0]
  if isinstance(first, tuple):
    return tuple(gather(lambda o, i=i: o[i]) for i in range(len(first)))
  return gather(lambda o: o)
