"""CIFAR-10 (and other tfds image datasets) as in-memory arrays, offline-safe.

Images leave this module as ``float32`` arrays in ``[0, 1]`` with shape
``(N, H, W, C)`` and labels as ``int32`` ``(N,)``. Reading goes through
``tfds.data_source``, which needs no TensorFlow. The data directory is, in
order: the ``data_dir`` argument, ``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``.

Data on first use: when CIFAR-10 is absent it is downloaded (with tfds' progress
bars and its registered checksum of the official archive) and prepared into that
directory in tfds' own ``array_record`` layout, by :class:`Cifar10Builder`, a
TensorFlow-free variant of tfds' ``cifar10`` builder (tfds' own one needs
TensorFlow to read the archive). ``download=False``, or the environment variable
``SCALEUP_JAX_NO_DOWNLOAD=1``, forbids it. Offline, a probe of the download
host fails within seconds with one line saying where the data was looked for.
Tiny ImageNet (``'tiny_imagenet'``, the paper's Table 2) is prepared the same way
from ``tiny-imagenet-200.zip``, a local file named by ``$SCALEUP_JAX_TINY_IMAGENET``
(no network needed) or the official download.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import socket
import tarfile
import urllib.parse
from pathlib import Path

import numpy as np

from scaleup_jax.validation import InputError


class DatasetNotFoundError(FileNotFoundError):
  """A tfds dataset is not prepared in any directory that was searched."""


NO_DOWNLOAD_ENV = 'SCALEUP_JAX_NO_DOWNLOAD'
# The official archive (tfds registers its checksum); overridable for mirrors and tests.
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
URL_ENV = 'SCALEUP_JAX_CIFAR10_URL'
# Tiny ImageNet (paper Table 2): 200 classes of 64x64 images; no tfds builder ships it.
TINY_IMAGENET_URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
TINY_IMAGENET_ENV = 'SCALEUP_JAX_TINY_IMAGENET'  # a local tiny-imagenet-200.zip, or a URL
TINY_IMAGENET_SHAPE = (64, 64, 3)
PREPARABLE = ('cifar10', 'tiny_imagenet')
PROBE_TIMEOUT_S = 5.0


def download_allowed(download: bool | None = None) -> bool:
  """``download`` if given, else True unless ``$SCALEUP_JAX_NO_DOWNLOAD`` is set (1/true/yes)."""
  if download is not None:
    return bool(download)
  return os.environ.get(NO_DOWNLOAD_ENV, '').strip().lower() not in ('1', 'true', 'yes')


def cifar10_url() -> str:
  return os.environ.get(URL_ENV) or CIFAR10_URL


def probe_url(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
  """None if a TCP connection to ``url``'s host opens within ``timeout`` s, else the reason.

  Name resolution runs in a worker thread so that a stalled resolver cannot
  hold the caller past ``timeout`` either.
  """
  parts = urllib.parse.urlsplit(url)
  host = parts.hostname or ''
  port = parts.port or (443 if parts.scheme == 'https' else 80)

  def connect():
    with socket.create_connection((host, port), timeout=timeout):
      return None

  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    pool.submit(connect).result(timeout=timeout)
    return None
  except concurrent.futures.TimeoutError:
    return f'no answer from {host}:{port} within {timeout:g} s'
  except OSError as e:
    return f'cannot reach {host}:{port} ({e.strerror or e})'
  finally:
    pool.shutdown(wait=False)


def _cifar10_builder_class():
  """tfds' ``cifar10`` builder, reading its archive without TensorFlow (defined lazily)."""
  import numpy as np
  from PIL import Image
  from tensorflow_datasets.image_classification import cifar

  class Cifar10Builder(cifar.Cifar10, skip_registration=True):
    """Same name, version, features and splits as tfds' ``cifar10``; Python I/O only."""

    name = 'cifar10'

    def _split_generators(self, dl_manager):
      archive = dl_manager.download(cifar10_url())
      info = self._cifar_info
      with tarfile.open(archive) as tar:
        member = tar.extractfile(info.prefix + info.label_files[0])
        self.info.features['label'].names = member.read().decode().split()
      return {'train': self._records(archive, 'train_', info.train_files),
              'test': self._records(archive, 'test_', info.test_files)}

    def _records(self, archive, prefix, files):
      index = 0
      with tarfile.open(archive) as tar:
        for name in files:
          raw = tar.extractfile(self._cifar_info.prefix + name).read()
          rows = np.frombuffer(raw, np.uint8).reshape(-1, 1 + 32 * 32 * 3)
          for row in rows:
            png = io.BytesIO()
            Image.fromarray(row[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(png, 'PNG')
            png.seek(0)
            yield index, {'id': f'{prefix}{index:05d}', 'label': int(row[0]), 'image': png}
            index += 1

  return Cifar10Builder


def _tiny_imagenet_builder_class():
  """A TensorFlow-free tfds builder for Tiny ImageNet (defined lazily).

  Reads the official ``tiny-imagenet-200.zip``: ``train/<wnid>/images/*.JPEG``
  (500 per class) is the ``train`` split, the labelled ``val/`` images
  (``val/val_annotations.txt``, 50 per class) the ``test`` split, as in the
  paper and BackdoorBox; the unlabelled ``test/`` folder is not used. Labels are
  the line numbers of ``wnids.txt``. Grey-scale JPEGs are converted to RGB, and
  every image is stored as a lossless PNG of its decoded pixels.
  """
  import zipfile

  import tensorflow_datasets as tfds
  from PIL import Image

  class TinyImagenetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """``tiny_imagenet`` 1.0.0: ``{'id', 'image' (64, 64, 3), 'label' (200)}``."""

    name = 'tiny_imagenet'
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description='Tiny ImageNet: 200 ImageNet classes, 64x64, 500 train and 50 '
                      'validation images per class (the validation images are the test split).',
          features=tfds.features.FeaturesDict({
              'id': tfds.features.Text(),
              'image': tfds.features.Image(shape=TINY_IMAGENET_SHAPE),
              'label': tfds.features.ClassLabel(num_classes=200),
          }),
          supervised_keys=('image', 'label'),
          homepage='http://cs231n.stanford.edu/')

    def _split_generators(self, dl_manager):
      source = tiny_imagenet_source()
      archive = Path(source) if Path(source).is_file() else dl_manager.download(source)
      with zipfile.ZipFile(archive) as z:
        root = _zip_root(z)
        wnids = z.read(f'{root}wnids.txt').decode().split()
        if len(wnids) != 200:
          raise DatasetNotFoundError(f'{archive}: wnids.txt names {len(wnids)} classes, not 200')
        self.info.features['label'].names = wnids
        index = {w: i for i, w in enumerate(wnids)}
        train = sorted(n for n in z.namelist() if n.startswith(f'{root}train/')
                       and n.lower().endswith('.jpeg'))
        val = [line.split('\t')[:2] for line in
               z.read(f'{root}val/val_annotations.txt').decode().splitlines() if line.strip()]
      train_items = [(n, index[n[len(f'{root}train/'):].split('/')[0]]) for n in train]
      val_items = [(f'{root}val/images/{f}', index[w]) for f, w in val]
      return {'train': self._records(archive, train_items),
              'test': self._records(archive, val_items)}

    def _generate_examples(self, *args):  # _split_generators yields the examples itself
      raise NotImplementedError

    def _records(self, archive, items):
      with zipfile.ZipFile(archive) as z:
        for member, label in items:
          img = Image.open(io.BytesIO(z.read(member))).convert('RGB')
          if img.size != TINY_IMAGENET_SHAPE[:2]:
            raise DatasetNotFoundError(f'{archive}: {member} is {img.size}, not 64x64')
          png = io.BytesIO()
          img.save(png, 'PNG')
          png.seek(0)
          yield member, {'id': member.rsplit('/', 1)[-1], 'label': label, 'image': png}

  return TinyImagenetBuilder


def _zip_root(z) -> str:
  """``'tiny-imagenet-200/'`` (or ``''``): the folder of ``wnids.txt`` in the archive."""
  for n in z.namelist():
    if n.endswith('wnids.txt'):
      return n[: -len('wnids.txt')]
  raise DatasetNotFoundError(f'{z.filename}: no wnids.txt; not a tiny-imagenet-200.zip archive')


def tiny_imagenet_source() -> str:
  """``$SCALEUP_JAX_TINY_IMAGENET`` (a local zip or a URL), else the official URL."""
  return os.environ.get(TINY_IMAGENET_ENV) or TINY_IMAGENET_URL


def prepare_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path:
  """Downloads and prepares ``name`` into ``data_dir`` (tfds layout); returns its directory.

  ``cifar10`` comes from the official archive (``$SCALEUP_JAX_CIFAR10_URL``
  overrides the URL); ``tiny_imagenet`` from ``tiny-imagenet-200.zip``, a local
  file or URL in ``$SCALEUP_JAX_TINY_IMAGENET``, else the official URL.

  Raises:
    DatasetNotFoundError: offline (the host probe fails within seconds), or
      the download itself fails; the message says where and how to point at
      a copy.
  """
  path = resolve_data_dir(data_dir)
  if name not in PREPARABLE:
    raise DatasetNotFoundError(
        f'tfds dataset {name!r} is not prepared under {str(path)!r} and only {PREPARABLE} '
        'are prepared automatically; prepare it with tfds (`tfds build`) and point --data_dir '
        'at it')
  if name == 'tiny_imagenet':
    url, hint = tiny_imagenet_source(), (f'set ${TINY_IMAGENET_ENV} to a local copy of '
                                         f'tiny-imagenet-200.zip ({TINY_IMAGENET_URL})')
    if not urllib.parse.urlsplit(url).scheme and not Path(url).is_file():
      raise DatasetNotFoundError(f'${TINY_IMAGENET_ENV} names {url!r}, which is not a file (nor '
                                 'a URL); point it at tiny-imagenet-200.zip')
    builder_class = _tiny_imagenet_builder_class()
  else:
    url, hint = cifar10_url(), f'set ${URL_ENV} to a mirror of {CIFAR10_URL}'
    builder_class = _cifar10_builder_class()
  reason = None if Path(url).is_file() else probe_url(url)
  if reason is not None:
    raise DatasetNotFoundError(
        f'tfds dataset {name!r} is not prepared under {str(path)!r} and cannot be downloaded: '
        f'{reason}. Point --data_dir or $TFDS_DATA_DIR at a tfds data directory that holds '
        f'it (or {hint}).')
  builder = builder_class(data_dir=str(path))
  try:
    builder.download_and_prepare(file_format='array_record')
  except Exception as e:  # network and checksum errors come in many types
    msg = str(e).splitlines()[0] if str(e) else ''
    raise DatasetNotFoundError(
        f'downloading {name!r} from {url} into {str(path)!r} failed: {type(e).__name__}: {msg}. '
        'Point --data_dir or $TFDS_DATA_DIR at a tfds data directory that holds it.') from None
  found = _find_prepared(name, path)
  if found is None:
    raise DatasetNotFoundError(f'preparing {name!r} under {str(path)!r} left no dataset_info.json')
  return found


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
    download: bool | None = None,
    max_examples: int | None = None,
) -> ImageDataset:
  """Loads a tfds image-classification split into memory.

  Args:
    name: tfds dataset name, e.g. ``'cifar10'``.
    split: ``'train'`` or ``'test'``.
    data_dir: tfds data directory; see the module docstring for the fallback.
    download: download and prepare the dataset if it is absent (network
      needed); None (default): yes, unless ``$SCALEUP_JAX_NO_DOWNLOAD`` is set.
    max_examples: read only the first ``max_examples`` rows (for quick runs).

  Returns:
    An :class:`ImageDataset` with float32 images in [0, 1].

  Raises:
    DatasetNotFoundError: the dataset is absent and may not or cannot be
      downloaded.
  """
  import tensorflow_datasets as tfds  # Heavy import; keep it local.

  path = resolve_data_dir(data_dir)
  if _find_prepared(name, path) is None:
    local = name == 'tiny_imagenet' and Path(tiny_imagenet_source()).is_file()
    if not local and not download_allowed(download):  # a local archive needs no network
      raise DatasetNotFoundError(
          f'tfds dataset {name!r} is not prepared under {str(path)!r} (looked for '
          f'{str(path / name)}/<version>/dataset_info.json) and downloading is off '
          f'(--nodownload or ${NO_DOWNLOAD_ENV}). Point --data_dir or $TFDS_DATA_DIR at a '
          f'tfds data directory that holds it, or allow the download.'
      )
    prepare_dataset(name, path)
  source = tfds.data_source(name, data_dir=str(path), download=False)
  if split not in source:
    raise InputError(f'dataset {name!r} has no split {split!r}; it has {sorted(source)}')
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


def class_names(name: str, data_dir: str | os.PathLike | None = None,
                num_classes: int | None = None) -> list[str]:
  """The label names of a prepared tfds dataset (``'0'..'K-1'`` if it has none)."""
  import json
  found = _find_prepared(name, resolve_data_dir(data_dir))
  if found is not None and (found / 'label.labels.txt').is_file():
    names = (found / 'label.labels.txt').read_text().split()
    if names and (num_classes is None or len(names) == num_classes):
      return names
  if found is not None:
    try:
      info = json.loads((found / 'features.json').read_text())
      names = info['featuresDict']['features']['label']['classLabel']['names']
      if names:
        return list(names)
    except (OSError, KeyError, ValueError, TypeError):
      pass
  return [str(k) for k in range(num_classes or 0)]

