"""A fresh machine: data on first use, a fast offline failure, the zoo outside a checkout.

The download path is exercised for real against a local HTTP server on
127.0.0.1 that serves a small archive in CIFAR-10's binary format; nothing
reaches the network. The wheel test builds a wheel of this checkout and runs
it from a directory with no ``zoo/``.
"""

import functools
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scaleup_jax import data, paths

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def _fake_archive(path: Path, per_file: int = 3) -> dict:
  """Writes a CIFAR-10 binary archive; returns the expected rows per split."""
  rng = np.random.default_rng(0)
  expected = {'train': [], 'test': []}
  files = [(f'data_batch_{i}.bin', 'train') for i in range(1, 6)] + [('test_batch.bin', 'test')]
  with tarfile.open(path, 'w:gz') as tar:
    def add(name, payload):
      info = tarfile.TarInfo('cifar-10-batches-bin/' + name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
    for name, split in files:
      rows = []
      for _ in range(per_file):
        label = int(rng.integers(0, 10))
        chw = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
        rows.append(bytes([label]) + chw.tobytes())
        expected[split].append((label, chw.transpose(1, 2, 0)))
      add(name, b''.join(rows))
    add('batches.meta.txt', ('\n'.join(CLASSES) + '\n').encode())
  return expected


@pytest.fixture
def local_server(tmp_path):
  """Serves ``tmp_path/srv`` on 127.0.0.1; yields (base_url, srv_dir); stopped after."""
  srv_dir = tmp_path / 'srv'
  srv_dir.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(srv_dir))
  handler.log_message = lambda *a, **k: None
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_port}', srv_dir
  finally:
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/cifar-10-binary.tar.gz'


def test_first_use_downloads_and_prepares_cifar10(tmp_path, local_server, monkeypatch):
  base, srv_dir = local_server
  expected = _fake_archive(srv_dir / 'cifar-10-binary.tar.gz')
  monkeypatch.setenv(data.URL_ENV, f'{base}/cifar-10-binary.tar.gz')
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  target = tmp_path / 'tfds'
  train = data.load_split('cifar10', 'train', data_dir=target)  # download=None: allowed
  test = data.load_split('cifar10', 'test', data_dir=target)
  assert (target / 'cifar10' / '3.0.2' / 'dataset_info.json').is_file()
  for split, ds in (('train', train), ('test', test)):
    assert len(ds) == len(expected[split]) and ds.num_classes == 10
    # tfds shuffles rows when it writes them; compare (image, label) pairs as sets.
    got = sorted((np.round(img * 255).astype(np.uint8).tobytes(), int(lab))
                 for img, lab in zip(ds.images, ds.labels))
    want = sorted((img.tobytes(), lab) for lab, img in expected[split])
    assert got == want  # PNG is lossless: bit-exact pixels and their labels


def test_prepared_data_is_reused_without_network(tmp_path, local_server, monkeypatch):
  base, srv_dir = local_server
  _fake_archive(srv_dir / 'cifar-10-binary.tar.gz')
  monkeypatch.setenv(data.URL_ENV, f'{base}/cifar-10-binary.tar.gz')
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  data.load_split('cifar10', 'test', data_dir=tmp_path / 'tfds')
  monkeypatch.setenv(data.URL_ENV, _closed_port_url())  # the "network" is gone now
  assert len(data.load_split('cifar10', 'test', data_dir=tmp_path / 'tfds')) == 3


@pytest.mark.parametrize('url', [None, 'https://scaleup-jax-test.invalid/cifar-10-binary.tar.gz'],
                         ids=['closed_port', 'unresolvable_host'])
def test_offline_download_fails_fast_with_one_line(tmp_path, monkeypatch, url):
  monkeypatch.setenv(data.URL_ENV, url or _closed_port_url())
  monkeypatch.delenv(data.NO_DOWNLOAD_ENV, raising=False)
  t0 = time.perf_counter()
  with pytest.raises(data.DatasetNotFoundError) as err:
    data.load_split('cifar10', 'test', data_dir=tmp_path)
  elapsed = time.perf_counter() - t0
  msg = str(err.value)
  assert elapsed < data.PROBE_TIMEOUT_S + 3, f'offline failure took {elapsed:.1f} s'
  assert '\n' not in msg and str(tmp_path) in msg and '--data_dir' in msg
  assert 'cannot be downloaded' in msg
  assert not (tmp_path / 'cifar10').exists()  # nothing half-prepared left behind


def test_no_download_env_forbids_it(tmp_path, monkeypatch):
  monkeypatch.setenv(data.NO_DOWNLOAD_ENV, '1')
  monkeypatch.setenv(data.URL_ENV, _closed_port_url())
  with pytest.raises(data.DatasetNotFoundError, match='downloading is off'):
    data.load_split('cifar10', 'test', data_dir=tmp_path)
  assert data.download_allowed(True) and not data.download_allowed(False)


def test_detect_cli_offline_exits_with_one_line(tmp_path):
  env = {**os.environ, data.URL_ENV: _closed_port_url(), 'TFDS_DATA_DIR': str(tmp_path / 'none')}
  env.pop(data.NO_DOWNLOAD_ENV, None)
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, '-m', 'eval.detect', '--num_images', '10', '--noprogress'],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
  assert len(lines) == 1 and 'cannot be downloaded' in lines[0] and 'Traceback' not in r.stderr
  assert time.perf_counter() - t0 < 120


def test_zoo_resolution_order(tmp_path, monkeypatch):
  (tmp_path / 'env_zoo' / 'm' ).mkdir(parents=True)
  (tmp_path / 'env_zoo' / 'm' / 'config.json').write_text('{}')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(paths.ZOO_ENV, str(tmp_path / 'env_zoo'))
  assert paths.zoo_model('m') == tmp_path / 'env_zoo' / 'm'
  with pytest.raises(paths.ZooNotFoundError, match='--ckpt'):
    paths.zoo_model('absent_model')
  assert paths.resolve_ckpt('zoo/m') == tmp_path / 'env_zoo' / 'm'


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp('wheel')
  r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(ROOT), '--no-deps',
                      '--no-build-isolation', '-q', '-w', str(out)],
                     capture_output=True, text=True, timeout=300)
  if r.returncode != 0 and 'No module named' in r.stderr:
    pytest.skip(f'cannot build a wheel here: {r.stderr.strip()[-300:]}')
  assert r.returncode == 0, r.stderr[-2000:]
  (whl,) = out.glob('scaleup_jax-*.whl')
  site = out / 'site'
  with zipfile.ZipFile(whl) as z:
    z.extractall(site)
    names = z.namelist()
  return site, names


def test_wheel_carries_the_default_model(wheel):
  _, names = wheel
  base = f'zoo/{paths.DEFAULT_MODEL}/'
  for f in ('config.json', 'trigger.npz', 'metrics.json'):
    assert base + f in names
  assert any(n.startswith(base + 'checkpoints/') for n in names)
  assert not any(n.startswith('zoo/') and not n.startswith(base) for n in names)
  assert 'eval/cli.py' in names


def test_wheel_finds_and_loads_the_default_model_outside_a_checkout(wheel, tmp_path):
  site, _ = wheel
  # Only the unpacked wheel on the path: PYTHONPATH comes before the editable install.
  env = {**os.environ, 'PYTHONPATH': str(site)}
  env.pop(paths.ZOO_ENV, None)
  code = ('import scaleup_jax, sys; from scaleup_jax import paths, checkpoint;'
          'p = paths.zoo_model(); run = checkpoint.load_run(p);'
          'print(scaleup_jax.__file__); print(p); print(run.target)')
  r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  module_file, model_dir, target = r.stdout.split()[-3:]
  assert module_file.startswith(str(site)) and model_dir.startswith(str(site))
  assert int(target) == 0


def test_console_script_dispatches_to_entry_points():
  from eval import cli
  assert cli.main(['scaleup-jax']) == 2
  assert cli.main(['scaleup-jax', 'no-such-command']) == 2
  assert cli.main(['scaleup-jax', 'zoo', str(ROOT / 'zoo')]) == 0
  for name, (module, _, _) in cli.available().items():
    assert __import__('importlib').util.find_spec(module) is not None, name
