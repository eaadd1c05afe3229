"""Tiny ImageNet (paper Table 2): the TensorFlow-free tfds builder, on a fake archive of the real layout."""

import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from scaleup_jax import compare, data
from scaleup_jax.validation import InputError

WNIDS = [f'n{i:08d}' for i in range(200)]


def _jpeg(rng, mode='RGB'):
  shape = (64, 64, 3) if mode == 'RGB' else (64, 64)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, 'JPEG')
  return buf.getvalue()


def _decoded(jpeg: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB'))


def fake_archive(path, wnids=WNIDS, per_class=2):
  """A ``tiny-imagenet-200.zip`` with ``per_class`` train images of classes 0, 1, 199 (one
  grey-scale), validation images of classes 5, 0, 199 (``per_class // 2 + 1`` each) and an
  unlabelled test image; returns ``{split: [(label, pixels)]}``."""
  rng = np.random.default_rng(0)
  expected = {'train': [], 'test': []}
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('tiny-imagenet-200/wnids.txt', '\n'.join(wnids) + '\n')
    for c in (0, 1, 199):
      w = wnids[c]
      for j in range(per_class):
        jpeg = _jpeg(rng, 'L' if (c, j) == (1, 0) else 'RGB')
        z.writestr(f'tiny-imagenet-200/train/{w}/images/{w}_{j}.JPEG', jpeg)
        expected['train'].append((c, _decoded(jpeg)))
      z.writestr(f'tiny-imagenet-200/train/{w}/{w}_boxes.txt', '')
    lines = []
    for i, c in enumerate((5, 0, 199) * (per_class // 2 + 1)):
      jpeg = _jpeg(rng)
      z.writestr(f'tiny-imagenet-200/val/images/val_{i}.JPEG', jpeg)
      lines.append(f'val_{i}.JPEG\t{wnids[c]}\t0\t0\t63\t63')
      expected['test'].append((c, _decoded(jpeg)))
    z.writestr('tiny-imagenet-200/val/val_annotations.txt', '\n'.join(lines) + '\n')
    z.writestr('tiny-imagenet-200/test/images/test_0.JPEG', _jpeg(rng))
  return expected


def test_tiny_imagenet_is_prepared_from_a_local_archive(tmp_path, monkeypatch):
  archive = tmp_path / 'tiny-imagenet-200.zip'
  expected = fake_archive(archive)
  monkeypatch.setenv(data.TINY_IMAGENET_ENV, str(archive))
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  target = tmp_path / 'tfds'
  for split in ('train', 'test'):
    ds = data.load_split('tiny_imagenet', split, data_dir=target)
    assert ds.num_classes == 200 and ds.images.shape[1:] == (64, 64, 3)
    got = sorted((np.round(x * 255).astype(np.uint8).tobytes(), int(y))
                 for x, y in zip(ds.images, ds.labels))
    want = sorted((x.tobytes(), y) for y, x in expected[split])
    assert got == want  # labels from wnids.txt order; grey-scale made RGB; PNG lossless
  assert data.class_names('tiny_imagenet', target)[:2] == WNIDS[:2]


def test_tiny_imagenet_archive_that_is_not_one_is_named(tmp_path, monkeypatch):
  archive = tmp_path / 'other.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    z.writestr('readme.txt', 'hello')
  monkeypatch.setenv(data.TINY_IMAGENET_ENV, str(archive))
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  with pytest.raises(data.DatasetNotFoundError, match='no wnids.txt'):
    data.load_split('tiny_imagenet', 'train', data_dir=tmp_path / 'tfds')


def test_tiny_imagenet_local_archive_needs_no_download(tmp_path, monkeypatch):
  archive = tmp_path / 'tiny-imagenet-200.zip'
  fake_archive(archive)
  monkeypatch.setenv(data.TINY_IMAGENET_ENV, str(archive))
  ds = data.load_split('tiny_imagenet', 'test', data_dir=tmp_path / 'tfds', download=False)
  assert len(ds) == 6


def test_tiny_imagenet_mistyped_local_path_is_named(tmp_path, monkeypatch):
  monkeypatch.setenv(data.TINY_IMAGENET_ENV, str(tmp_path / 'tiny-imagenet-200.zp'))
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  with pytest.raises(data.DatasetNotFoundError, match=r"tiny-imagenet-200.zp', which is not a file"):
    data.load_split('tiny_imagenet', 'train', data_dir=tmp_path / 'tfds')


def test_tiny_imagenet_offline_without_a_copy_says_how_to_get_one(tmp_path, monkeypatch):
  monkeypatch.setenv(data.TINY_IMAGENET_ENV, 'http://127.0.0.1:9/tiny-imagenet-200.zip')
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  with pytest.raises(data.DatasetNotFoundError, match=r'SCALEUP_JAX_TINY_IMAGENET'):
    data.load_split('tiny_imagenet', 'train', data_dir=tmp_path / 'tfds')


def test_tiny_imagenet_configs_scale_the_recipes():
  from train.configs import tiny_imagenet, v2
  for name in tiny_imagenet.ATTACKS:
    config = tiny_imagenet.get_config(name)
    assert (config.dataset, config.model, config.num_epochs, config.augment) == (
        'tiny_imagenet', 'resnet34', 200, False)
    if name == 'clean':
      assert config.attack == 'none'
      continue
    ref = v2.get_config(name)
    assert config.attack == ref.attack and config.poison_rate == ref.poison_rate
    assert 0 <= config.target_label < 200
    assert config.target_label == v2.target_for(name, num_classes=200, avoid=())
    if 'size' in ref.attack_kwargs:
      assert config.attack_kwargs.size == 2 * ref.attack_kwargs.size
  with pytest.raises(InputError, match='tiny_imagenet config takes one of'):
    tiny_imagenet.get_config('blended')


def test_tiny_imagenet_quick_run_end_to_end(tmp_path, monkeypatch):
  """A quick BadNets run on a fake 64x64, 200-class archive: trains, saves, loads, scores."""
  import json
  from scaleup_jax import checkpoint, train
  from train.configs import tiny_imagenet
  archive = tmp_path / 'tiny-imagenet-200.zip'
  fake_archive(archive, per_class=48)  # 25 test images per class: 20 defender, 5 scored
  monkeypatch.setenv(data.TINY_IMAGENET_ENV, str(archive))
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  config = tiny_imagenet.get_config('badnets,quick')
  config.data_dir = str(tmp_path / 'tfds')
  config.target_label = 1  # a class the fake archive has
  work = tmp_path / 'run'
  train.train_and_evaluate(config, str(work))
  metrics = json.loads((work / 'metrics.json').read_text())
  assert metrics['epochs'] == 1 and 'asr' in metrics
  run = checkpoint.load_run(work)
  x = np.zeros((2, 64, 64, 3), np.float32)
  assert run.apply_fn(run.variables, x).shape == (2, 200)
  assert run.trigger.apply(x).shape == x.shape
  # The evaluation settings of train/tiny_imagenet_table2.sh work on Tiny ImageNet's test split.
  script = (ROOT / 'train' / 'tiny_imagenet_table2.sh').read_text()
  protocol = re.search(r'eval\.compare .*--protocol (\S+)', script.replace('\\\n', ' ')).group(1)
  num_images = int(re.search(r'--num_images (\d+)', script).group(1))
  out = compare.compare(compare.CompareOptions(
      ckpts=(str(work),), detectors=('scaleup',), protocol=protocol, num_images=num_images,
      out=str(tmp_path / 'cmp'), progress=False, data_dir=config.data_dir))
  assert out['results'][work.name]['scaleup']['num_benign'] == 2 * 15  # + one noisy copy each
  detail = json.loads((tmp_path / 'cmp' / work.name / 'scaleup.json').read_text())
  assert detail['num_defense'] == 20 * 3 and detail['protocol'] == 'paper_tiny_imagenet'
  assert int(np.asarray(run.trigger.mask).reshape(64, 64, -1)[..., 0].sum()) == 36  # 6x6 patch
