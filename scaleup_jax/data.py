"""CIFAR-10 (and other tfds image datasets) as in-memory arrays, offline-safe.

Images leave this module as ``float32`` arrays in ``[0, 1]`` with shape
``(N, H, W, C)`` and labels as ``int32`` ``(N,)``. Reading goes through
``tfds.data_source``, which needs no TensorFlow. The data directory is, in
order: the ``data_dir`` argument, ``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
  """A tfds dataset is not prepared in any directory that was searched."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """Images ``(N, H, W, C)`` float32 in [0, 1] and labels ``(N,)`` int32."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices) -> 'ImageDataset':
    indices = np.asarray(indices)
    return ImageDataset(self.images[indices], self.labels[indices], self.num_classes)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
  """Returns the tfds data directory: argument, then $TFDS_DATA_DIR, then default."""
  if data_dir:
    return Path(data_dir).expanduser()
  if os.environ.get('TFDS_DATA_DIR'):
    return Path(os.environ['TFDS_DATA_DIR']).expanduser()
  return Path('~/tensorflow_datasets').expanduser()


def _find_prepared(name: str, data_dir: Path) -> Path | None:
  root = data_dir / name
  if not root.is_dir():
    return None
  for info in sorted(root.glob('*/dataset_info.json'), reverse=True):
    return info.parent
  return None


def load_split(
    name: str = 'cifar10',
    split: str = 'train',
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    max_examples: int | None = None,
) -> ImageDataset:
  """Loads a tfds image-classification split into memory.

  Args:
    name: tfds dataset name, e.g. ``'cifar10'``.
    split: ``'train'`` or ``'test'``.
    data_dir: tfds data directory; see the module docstring for the fallback.
    download: allow tfds to download and prepare the dataset if it is absent
      (needs network access).
    max_examples: read only the first ``max_examples`` rows (for quick runs).

  Returns:
    An :class:`ImageDataset` with float32 images in [0, 1].

  Raises:
    DatasetNotFoundError: the dataset is absent and ``download`` is False.
  """
  import tensorflow_datasets as tfds  # Heavy import; keep it local.

  path = resolve_data_dir(data_dir)
  if not download and _find_prepared(name, path) is None:
    raise DatasetNotFoundError(
        f'tfds dataset {name!r} is not prepared under {str(path)!r} (looked for '
        f'{str(path / name)}/<version>/dataset_info.json). Point --data_dir or '
        f'$TFDS_DATA_DIR at a tfds data directory that holds it, or pass '
        f'--download on a machine with network access.'
    )
  source = tfds.data_source(name, data_dir=str(path), download=download)
  if split not in source:
    raise ValueError(f'dataset {name!r} has no split {split!r}; it has {sorted(source)}')
  ds = source[split]
  n = len(ds) if max_examples is None else min(max_examples, len(ds))
  images = np.empty((n,) + tuple(ds[0]['image'].shape), np.uint8)
  labels = np.empty((n,), np.int32)
  chunk = 2048
  for start in range(0, n, chunk):
    rows = ds.__getitems__(list(range(start, min(start + chunk, n))))
    images[start : start + len(rows)] = np.stack([r['image'] for r in rows])
    labels[start : start + len(rows)] = [r['label'] for r in rows]
  num_classes = int(source[split].dataset_info.features['label'].num_classes)
  return ImageDataset(images.astype(np.float32) / 255.0, labels, num_classes)
