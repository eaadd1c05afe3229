"""A bounded closed-loop load generator, and the load test of docs/serving.md.

:func:`run_load` drives one server: ``concurrency`` client threads, each with
its own keep-alive HTTP connection, send pre-encoded requests back to back
until ``requests`` have completed or ``max_seconds`` have passed (whichever
comes first; warm-up requests are not counted), and it reports throughput and
latency percentiles.

:func:`load_test` (``python -m scaleup_jax.serve.loadgen``) starts two servers
of the same model on loopback, one with SCALE-UP (the calibrated firewall) and
one without detection (``--nodetection``), and measures both at several client
concurrencies in alternation (detect, bare, detect, bare, ...), so that a
change of the machine's background load hits both alike. The requests are
single CIFAR-10 test images as PNG uploads, a fraction of them stamped with the
model's trigger (so the store is written), from the images the defender did
not calibrate on.

  python -m scaleup_jax.serve.loadgen --out docs/results/serve              # the zoo model
  python -m scaleup_jax.serve.loadgen --concurrency 1,8 --requests 50 --out /tmp/lt
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import io
import os
import platform
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np

BOUNDARY = 'scaleup-loadgen-boundary'


def multipart_png(png: bytes, name: str = 'image.png') -> bytes:
  """A multipart/form-data body with one PNG file in the field ``image``."""
  head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
          'Content-Type: image/png\r\n\r\n').encode()
  return head + png + f'\r\n--{BOUNDARY}--\r\n'.encode()


def png_bytes(image: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.rint(np.asarray(image) * 255).astype(np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


@dataclasses.dataclass
class LoadResult:
  """One load phase: ``completed`` answers in ``seconds``."""

  concurrency: int
  completed: int
  errors: int
  seconds: float
  latencies_ms: list

  def summary(self) -> dict:
    lat = np.asarray(self.latencies_ms, np.float64)
    return {'concurrency': self.concurrency, 'completed': self.completed, 'errors': self.errors,
            'seconds': round(self.seconds, 2),
            'throughput_rps': round(self.completed / self.seconds, 2) if self.seconds else 0.0,
            'p50_ms': round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            'p99_ms': round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            'mean_ms': round(float(lat.mean()), 1) if lat.size else None}


def run_load(url: str, bodies: Sequence[bytes], concurrency: int, requests: int,
             max_seconds: float, warmup: int = 2, timeout_s: float = 120.0) -> LoadResult:
  """Closed-loop load on ``url`` (``POST /v1/classify``) with pre-encoded multipart ``bodies``.

  Args:
    url: the server's base URL (``http://127.0.0.1:PORT``).
    bodies: request bodies, used round-robin (client ``k`` starts at ``k``).
    concurrency: client threads, one keep-alive connection each.
    requests: stop after this many completed requests (all clients together).
    max_seconds: or after this long, whichever comes first.
    warmup: requests per client before the clock starts (not counted).

  Returns:
    A :class:`LoadResult`; a non-200 answer or a broken connection counts as
    an error (its latency is not recorded).
  """
  parts = urlsplit(url)
  headers = {'Content-Type': f'multipart/form-data; boundary={BOUNDARY}'}
  lock = threading.Lock()
  latencies, errors = [], [0]
  done = [0]
  start_evt = threading.Barrier(concurrency + 1)
  stop_at = [None]

  def connect():
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)

  def post(conn, body):
    conn.request('POST', '/v1/classify', body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    return r.status

  def client(k: int):
    conn = connect()
    i = k
    try:
      for _ in range(warmup):
        post(conn, bodies[i % len(bodies)])
        i += 1
    except (OSError, http.client.HTTPException):
      conn = connect()
    start_evt.wait()
    while True:
      with lock:
        if done[0] >= requests or time.perf_counter() >= stop_at[0]:
          return
        done[0] += 1
      t0 = time.perf_counter()
      try:
        status = post(conn, bodies[i % len(bodies)])
      except (OSError, http.client.HTTPException):
        status = None
        conn.close()
        conn = connect()
      dt = (time.perf_counter() - t0) * 1000.0
      i += 1
      with lock:
        if status == 200:
          latencies.append(dt)
        else:
          errors[0] += 1

  threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
  for t in threads:
    t.start()
  t_start = time.perf_counter()
  stop_at[0] = t_start + 10 ** 9
  start_evt.wait()
  t_start = time.perf_counter()
  stop_at[0] = t_start + max_seconds
  for t in threads:
    t.join()
  seconds = time.perf_counter() - t_start
  return LoadResult(concurrency, len(latencies), errors[0], seconds, latencies)


# ---------------------------------------------------------------- the load test


class Server:
  """``python -m eval.serve ARGS --port 0`` in a subprocess, until :meth:`stop`."""

  def __init__(self, args: Sequence[str], name: str, start_timeout_s: float = 1800.0):
    self.name = name
    self.cmd = [sys.executable, '-m', 'eval.serve', *args, '--port', '0']
    self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    self.log: list[str] = []
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    deadline = time.monotonic() + start_timeout_s
    while True:
      line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
      if line is None:
        raise RuntimeError(f'{name} server exited:\n{"".join(self.log)}')
      self.log.append(line)
      print(f'  [{name}] {line.rstrip()}', flush=True)
      if line.startswith('serving on '):
        self.url = line.split()[2]
        return

  def metrics(self) -> dict:
    import urllib.request
    with urllib.request.urlopen(self.url + '/metrics', timeout=30) as r:
      text = r.read().decode()
    out = {}
    for name in ('scaleup_batch_size_sum', 'scaleup_batch_size_count', 'scaleup_images_total',
                 'scaleup_flagged_total', 'scaleup_xla_compiles_since_ready'):
      m = re.search(rf'^{name} (\S+)$', text, re.M)
      out[name] = float(m.group(1)) if m else 0.0
    return out

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGINT)
      try:
        self.proc.wait(60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(30)


def machine() -> dict:
  """What the numbers were measured on: ``lscpu | head``, cores, memory, load, versions."""
  def run(cmd):
    try:
      return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
      return ''
  import jax
  lscpu = '\n'.join(run(['lscpu']).splitlines()[:10])
  mem = re.search(r'MemTotal:\s+(\d+) kB', Path('/proc/meminfo').read_text()) if Path(
      '/proc/meminfo').is_file() else None
  return {'lscpu_head': lscpu, 'cpus': os.cpu_count(), 'platform': platform.platform(),
          'python': platform.python_version(), 'jax': jax.__version__,
          'backend': jax.default_backend(),
          'memory_gib': round(int(mem.group(1)) / 2 ** 20, 1) if mem else None,
          'loadavg_start': list(os.getloadavg())}


def load_test(out: str | os.PathLike, concurrencies: Sequence[int] = (1, 8, 32),
              requests: int = 200, max_seconds: float = 60.0, rounds: int = 2,
              server_args: Sequence[str] = (), calibration: str | None = None,
              poisoned_fraction: float = 0.1, num_images: int = 256, seed: int = 0,
              command: str | None = None) -> dict:
  """Measures the firewall against the bare model at each concurrency; writes JSON and Markdown.

  Args:
    out: output directory (``loadtest.json``, ``loadtest.md``).
    concurrencies: client concurrencies.
    requests: completed requests per phase (bound).
    max_seconds: seconds per phase (bound).
    rounds: alternations detect/bare per concurrency; each phase's numbers
      are kept and the medians reported.
    server_args: extra ``eval.serve`` flags for both servers (``--ckpt``,
      ``--buckets``, ...).
    calibration: the firewall's calibration file; if it does not exist the
      detecting server is started with ``--calibrate`` to write it.
    poisoned_fraction: share of requests stamped with the model's trigger.
    num_images: distinct request images (CIFAR-10 test images outside the
      defender images of ``app.defender_indices(seed)``, which the firewall
      calibrates on).

  Returns:
    The results dict (also written to ``out/loadtest.json``).
  """
  import warnings
  from scaleup_jax import data, paths, poison
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  args = list(server_args)
  ckpt = None
  for i, a in enumerate(args):
    if a == '--ckpt':
      ckpt = args[i + 1]
    elif a.startswith('--ckpt='):
      ckpt = a.split('=', 1)[1]
  model_dir = Path(paths.resolve_ckpt(ckpt)) if ckpt else paths.zoo_model(paths.DEFAULT_MODEL)
  info = machine()
  print(f'machine: {info["cpus"]} CPUs, load average {info["loadavg_start"]}', flush=True)
  from scaleup_jax.serve.app import defender_indices
  test = data.load_split('cifar10', 'test')
  defense = defender_indices(seed, test.labels, test.num_classes, 100)
  rest = np.setdiff1d(np.arange(len(test.labels)), defense)
  rest = np.random.default_rng(seed).permutation(rest)[:num_images]
  images = test.images[rest]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    trigger, target = poison.load_trigger(model_dir / 'trigger.npz')
  rng = np.random.default_rng(seed)
  stamped = rng.random(len(images)) < poisoned_fraction
  images = np.where(stamped[:, None, None, None], np.asarray(trigger.apply(images)), images)
  bodies = [multipart_png(png_bytes(x), f'{i}.png') for i, x in enumerate(images)]
  cal = calibration or str(out / 'calibration_spc_alpha0.05_conformal.json')
  import shutil
  import tempfile
  store_dir = Path(tempfile.mkdtemp(prefix='scaleup-loadtest-'))
  store = store_dir / 'flags.sqlite'
  det_args = [*args, '--calibration', cal, '--store', str(store), '--seed', str(seed)]
  if not Path(cal).is_file():
    det_args.append('--calibrate')
  servers = {}
  try:
    servers['scaleup'] = Server(det_args, 'scaleup')
    servers['bare'] = Server([*args, '--nodetection'], 'bare')
    phases = []
    for c in concurrencies:
      for r in range(rounds):
        for name in ('scaleup', 'bare'):
          srv = servers[name]
          m0 = srv.metrics()
          res = run_load(srv.url, bodies, c, requests, max_seconds)
          m1 = srv.metrics()
          batches = m1['scaleup_batch_size_count'] - m0['scaleup_batch_size_count']
          row = {'server': name, 'round': r, **res.summary(),
                 'mean_batch': round((m1['scaleup_batch_size_sum'] - m0['scaleup_batch_size_sum'])
                                     / batches, 2) if batches else None,
                 'flagged': int(m1['scaleup_flagged_total'] - m0['scaleup_flagged_total']),
                 'compiles_since_ready': int(m1['scaleup_xla_compiles_since_ready']),
                 'loadavg': list(os.getloadavg())}
          phases.append(row)
          print(f'  c={c:<3} {name:<8} round {r}: {row["throughput_rps"]:7.2f} req/s  '
                f'p50 {row["p50_ms"]} ms  p99 {row["p99_ms"]} ms  batch {row["mean_batch"]}  '
                f'errors {row["errors"]}', flush=True)
  finally:
    for s in servers.values():
      s.stop()
    shutil.rmtree(store_dir, ignore_errors=True)
  summary = []
  for c in concurrencies:
    def med(name, key):
      vals = [p[key] for p in phases if p['concurrency'] == c and p['server'] == name
              and p[key] is not None]
      return float(np.median(vals)) if vals else None
    row = {'concurrency': c}
    for name in ('scaleup', 'bare'):
      for key in ('throughput_rps', 'p50_ms', 'p99_ms', 'mean_batch'):
        row[f'{name}_{key}'] = med(name, key)
    row['throughput_ratio'] = (round(row['scaleup_throughput_rps'] / row['bare_throughput_rps'], 3)
                               if row['bare_throughput_rps'] else None)
    row['p50_ratio'] = (round(row['scaleup_p50_ms'] / row['bare_p50_ms'], 2)
                        if row['bare_p50_ms'] else None)
    row['p99_ratio'] = (round(row['scaleup_p99_ms'] / row['bare_p99_ms'], 2)
                        if row['bare_p99_ms'] else None)
    summary.append(row)
  info['loadavg_end'] = list(os.getloadavg())
  result = {'command': command, 'machine': info, 'model': str(model_dir),
            'calibration': cal, 'server_args': args, 'requests_per_phase': requests,
            'max_seconds_per_phase': max_seconds, 'rounds': rounds,
            'request': 'one CIFAR-10 test image per request, PNG upload (multipart/form-data)',
            'images': int(len(images)), 'poisoned_fraction': poisoned_fraction,
            'stamped_images': int(stamped.sum()), 'target': int(target),
            'scaleup_server_log': servers['scaleup'].log if 'scaleup' in servers else [],
            'phases': phases, 'summary': summary}
  from scaleup_jax import integrity
  integrity.atomic_write_json(out / 'loadtest.json', result)
  integrity.atomic_write_text(out / 'loadtest.md', format_markdown(result))
  return result


def format_markdown(result: dict) -> str:
  m = result['machine']
  lines = ['# Load test: the SCALE-UP firewall against the same model without detection', '',
           'Command:', '', '```', result['command'] or 'python -m scaleup_jax.serve.loadgen', '```',
           '', f'Model `{Path(result["model"]).name}`; {result["request"]}; '
           f'{result["images"]} distinct images, {result["stamped_images"]} of them stamped with '
           f'the trigger (target {result["target"]}). Per phase: at most '
           f'{result["requests_per_phase"]} completed requests or {result["max_seconds_per_phase"]:g} s; '
           f'{result["rounds"]} round(s) per concurrency, alternating firewall and bare server '
           '(medians over rounds shown). Clients and servers share the machine (loopback).', '',
           '**Machine** (shared and busy: a model training ran in the background throughout, so '
           'absolute numbers are low and noisy; the ratios compare the two servers under the same '
           f'load): {m["cpus"]} CPUs, {m["memory_gib"]} GiB, {m["platform"]}, Python {m["python"]}, '
           f'JAX {m["jax"]} ({m["backend"]}); load average {m["loadavg_start"][0]:.1f} at the '
           f'start, {m["loadavg_end"][0]:.1f} at the end.', '', '```', m['lscpu_head'], '```', '',
           '| clients | firewall req/s | bare req/s | throughput ratio | firewall p50 / p99 ms | '
           'bare p50 / p99 ms | p50 ratio | p99 ratio | mean batch (firewall / bare) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in result['summary']:
    lines.append(
        f'| {r["concurrency"]} | {r["scaleup_throughput_rps"]:.2f} | {r["bare_throughput_rps"]:.2f} '
        f'| {r["throughput_ratio"]:.3f} | {r["scaleup_p50_ms"]:.0f} / {r["scaleup_p99_ms"]:.0f} | '
        f'{r["bare_p50_ms"]:.0f} / {r["bare_p99_ms"]:.0f} | {r["p50_ratio"]:.2f} | '
        f'{r["p99_ratio"]:.2f} | {r["scaleup_mean_batch"]:.2f} / {r["bare_mean_batch"]:.2f} |')
  errs = sum(p['errors'] for p in result['phases'])
  compiles = max((p['compiles_since_ready'] for p in result['phases']), default=0)
  lines += ['', f'Errors over all phases: {errs}. XLA compilations after start-up, largest '
            f'over phases: {compiles}.', '', 'Every phase:', '',
            '| clients | server | round | completed | s | req/s | p50 ms | p99 ms | mean batch | '
            'flagged | load avg (1 min) |', '|---|---|---|---|---|---|---|---|---|---|---|']
  for p in result['phases']:
    lines.append(f'| {p["concurrency"]} | {p["server"]} | {p["round"]} | {p["completed"]} | '
                 f'{p["seconds"]} | {p["throughput_rps"]} | {p["p50_ms"]} | {p["p99_ms"]} | '
                 f'{p["mean_batch"]} | {p["flagged"]} | {p["loadavg"][0]:.1f} |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m scaleup_jax.serve.loadgen', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', default='docs/results/serve', help='output directory (default: %(default)s)')
  p.add_argument('--concurrency', default='1,8,32', help='client concurrencies (default: %(default)s)')
  p.add_argument('--requests', type=int, default=200, help='completed requests per phase')
  p.add_argument('--max_seconds', type=float, default=60.0, help='seconds per phase')
  p.add_argument('--rounds', type=int, default=2, help='alternating rounds per concurrency')
  p.add_argument('--calibration', default=None,
                 help='calibration file of the firewall (made with --calibrate if absent; default '
                      'OUT/calibration_spc_alpha0.05_conformal.json)')
  p.add_argument('--poisoned_fraction', type=float, default=0.1)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('server_args', nargs='*', help='extra eval.serve flags for both servers, after --')
  args = p.parse_args(argv)
  command = 'python -m scaleup_jax.serve.loadgen ' + shlex.join(
      argv if argv is not None else sys.argv[1:])
  res = load_test(args.out, [int(c) for c in args.concurrency.split(',')], args.requests,
                  args.max_seconds, args.rounds, args.server_args, args.calibration,
                  args.poisoned_fraction, seed=args.seed, command=command.strip())
  print(format_markdown(res))
  return 0


if __name__ == '__main__':
  sys.exit(main())
