"""``kill -9`` under load loses no flagged record whose response was sent (issue #20).

The server runs in its own process (the tiny model of ``serve.testing``, the
default store settings: WAL, ``synchronous=FULL``). Client threads post
requests back to back and log every flagged result they receive; the server is
killed with SIGKILL while requests are in flight, restarted on the same store,
and every logged flag must be in the store (records for requests whose answer
never arrived are allowed: they were written before the answer).
"""

import sqlite3
import sys
import threading
import time

import httpx
import numpy as np

from conftest import ROOT
from scaleup_jax.serve import testing

START_TIMEOUT_S = 180


def start_server(tmp):
  """The tiny-model server on ``tmp``'s store, as its own process (``serve.testing``)."""
  return testing.ServerProcess(
      [sys.executable, '-m', 'scaleup_jax.serve.testing', '--port', '0', '--store',
       str(tmp / 'flags.sqlite'), '--calibration', str(tmp / 'cal.json'), '--buckets', '1,4'],
      cwd=ROOT, timeout_s=START_TIMEOUT_S)


def test_kill9_under_load_loses_no_answered_flag(tmp_path):
  pool = testing.random_images(64, seed=11)
  server = start_server(tmp_path)
  answered, errors, stop = [], [], threading.Event()
  lock = threading.Lock()

  def client(seed):
    rng = np.random.default_rng(seed)
    with httpx.Client(timeout=30) as c:
      while not stop.is_set():
        idx = rng.choice(len(pool), size=int(rng.integers(1, 5)), replace=False)
        try:
          r = c.post(server.url + '/v1/classify', content=testing.npy_bytes(pool[idx]),
                     headers={'content-type': 'application/x-npy'})
        except httpx.TransportError:
          return  # the server is gone
        if r.status_code != 200:
          with lock:
            errors.append(r.text)
          continue
        body = r.json()
        with lock:
          answered.extend((body['request_id'], res['index'], res['image_sha256'])
                          for res in body['results'] if res['flagged'])

  threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
  for t in threads:
    t.start()
  try:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
      with lock:
        if len(answered) >= 40:
          break
      time.sleep(0.05)
    server.kill()  # SIGKILL with requests in flight
  finally:
    stop.set()
    for t in threads:
      t.join(60)
    server.kill()
  assert not errors, errors[:3]
  with lock:
    logged = set(answered)
  assert len(logged) >= 40, f'only {len(logged)} flagged answers before the kill'

  db = sqlite3.connect(tmp_path / 'flags.sqlite')
  assert db.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
  stored = set(db.execute('SELECT request_id, image_index, image_sha256 FROM flags'))
  db.close()
  missing = logged - stored
  assert not missing, f'{len(missing)} answered flags lost, e.g. {sorted(missing)[:3]}'

  # The restarted server keeps the old records and appends new ones.
  again = start_server(tmp_path)
  try:
    r = httpx.post(again.url + '/v1/classify', content=testing.npy_bytes(pool), timeout=60,
                   headers={'content-type': 'application/x-npy'})
    assert r.status_code == 200
    new = {(r.json()['request_id'], x['index'], x['image_sha256']) for x in r.json()['results']
           if x['flagged']}
    assert new
  finally:
    again.kill()
  db = sqlite3.connect(tmp_path / 'flags.sqlite')
  after = set(db.execute('SELECT request_id, image_index, image_sha256 FROM flags'))
  db.close()
  assert stored | new == after
