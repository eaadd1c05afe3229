"""``kill -9`` under load loses no flagged record whose response was sent (issue #20).

The server runs in its own process (the tiny model of ``serve.testing``, the
default store settings: WAL, ``synchronous=FULL``). Client threads post
requests back to back and log every flagged result they receive; the server is
killed with SIGKILL while requests are in flight, restarted on the same store,
and every logged flag must be in the store (records for requests whose answer
never arrived are allowed: they were written before the answer).
"""

import io
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from conftest import ROOT
from scaleup_jax.serve import testing

START_TIMEOUT_S = 180


class ServerProcess:
  def __init__(self, tmp, *extra):
    cmd = [sys.executable, '-m', 'scaleup_jax.serve.testing', '--port', '0',
           '--store', str(tmp / 'flags.sqlite'), '--calibration', str(tmp / 'cal.json'),
           '--buckets', '1,4', *extra]
    self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    self.lines = queue.Queue()
    threading.Thread(target=self._pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    log = []
    while True:
      try:
        line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
      except queue.Empty:
        self.kill()
        pytest.fail(f'server did not start within {START_TIMEOUT_S} s: {"".join(log)}')
      if line is None:
        pytest.fail(f'server exited: {"".join(log)}')
      log.append(line)
      if line.startswith('serving on '):
        self.url = line.split()[2]
        return

  def _pump(self):
    for line in self.proc.stdout:
      self.lines.put(line)
    self.lines.put(None)

  def kill(self):
    if self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGKILL)
    self.proc.wait(30)


def npy(a):
  buf = io.BytesIO()
  np.save(buf, a)
  return buf.getvalue()


def test_kill9_under_load_loses_no_answered_flag(tmp_path):
  pool = testing.random_images(64, seed=11)
  server = ServerProcess(tmp_path)
  answered, errors, stop = [], [], threading.Event()
  lock = threading.Lock()

  def client(seed):
    rng = np.random.default_rng(seed)
    with httpx.Client(timeout=30) as c:
      while not stop.is_set():
        idx = rng.choice(len(pool), size=int(rng.integers(1, 5)), replace=False)
        try:
          r = c.post(server.url + '/v1/classify', content=npy(pool[idx]),
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
  again = ServerProcess(tmp_path)
  try:
    r = httpx.post(again.url + '/v1/classify', content=npy(pool), timeout=60,
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
