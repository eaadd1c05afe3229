"""The firewall on Ray Serve: two replicas answer, each compiled once, and the store stays consistent.

Skipped when Ray is not installed (``pip install -e ".[ray]"``); bounded in
time: the local Ray instance must be up within START_TIMEOUT_S and the whole
exchange is a few dozen requests.
"""

import importlib.util
import socket
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ROOT
from scaleup_jax.serve import testing

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec('ray') is None,
    reason='Ray is not installed (optional extra: pip install -e ".[ray]")')]

START_TIMEOUT_S = 240


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_ray_serve_replicas_answer_and_share_a_consistent_store(tmp_path):
  port = free_port()
  store = tmp_path / 'flags.sqlite'
  testing.tiny_calibration(testing.tiny_model(), tmp_path / 'cal.json')
  server = testing.ServerProcess(
      [sys.executable, '-m', 'scaleup_jax.serve.testing', '--ray', '2', '--port', str(port),
       '--store', str(store), '--calibration', str(tmp_path / 'cal.json'), '--buckets', '1,4'],
      cwd=ROOT, env={'RAY_USAGE_STATS_ENABLED': '0'}, timeout_s=START_TIMEOUT_S, stdin=True)
  try:
    url = f'http://127.0.0.1:{port}'
    pool = testing.random_images(32, seed=5)

    def post(i):
      idx = [(i + k) % len(pool) for k in range(1 + i % 4)]
      with httpx.Client(timeout=60) as c:
        r = c.post(url + '/v1/classify', content=testing.npy_bytes(pool[idx]),
                   headers={'content-type': 'application/x-npy'})
      return r.status_code, r.headers.get('x-scaleup-replica'), r.json()

    with ThreadPoolExecutor(8) as ex:
      answers = list(ex.map(post, range(48)))
    assert all(status == 200 for status, _, _ in answers), [a for a in answers if a[0] != 200][:2]
    replicas = {rep for _, rep, _ in answers}
    assert len(replicas) == 2 and None not in replicas, replicas
    flagged = {(b['request_id'], x['index'], x['image_sha256'])
               for _, _, b in answers for x in b['results'] if x['flagged']}
    assert flagged
    with httpx.Client(timeout=30) as c:
      health = [c.get(url + '/healthz') for _ in range(12)]
    assert all(h.json()['compiles_since_ready'] == 0 for h in health)
  finally:
    server.stop(90)  # the driver shuts Ray Serve down when its stdin closes
  db = sqlite3.connect(store)
  rows = db.execute('SELECT request_id, image_index, image_sha256 FROM flags').fetchall()
  assert db.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
  db.close()
  assert len(rows) == len(set(rows)) and set(rows) == flagged
