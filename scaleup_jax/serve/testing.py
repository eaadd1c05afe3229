"""A tiny random classifier served exactly like a real model (tests and demos).

A linear layer on the flattened 32x32x3 image with weights from a seeded PRNG
key, calibrated on seeded random images: it compiles in a fraction of the
ResNet-20's time, so the service's tests (HTTP, bad inputs, concurrency,
kill-and-restart) run in seconds. It detects nothing meaningful; the tests
compare the service's answers with the same computation done directly.

  python -m scaleup_jax.serve.testing --port 0 --store /tmp/f.sqlite --calibration /tmp/cal.json
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from scaleup_jax import calibration, scaleup
from scaleup_jax.serve import engine as engine_lib

IMAGE_SHAPE = (32, 32, 3)


def _linear_apply(variables, images):
  p = variables['params']
  return (images.reshape(images.shape[0], -1) - 0.5) @ p['kernel'] + p['bias']


def tiny_model(seed: int = 0, num_classes: int = 10) -> engine_lib.Model:
  """A seeded random linear classifier on ``(32, 32, 3)`` images: ``(x - 0.5) W + b``.

  Its weights come from ``numpy.random.default_rng(seed)`` (no eager JAX work,
  which compiles op by op), so building it costs nothing.
  """
  rng = np.random.default_rng(seed)
  d = int(np.prod(IMAGE_SHAPE))
  variables = {'params': {
      'kernel': jnp.asarray(rng.normal(0, 1 / np.sqrt(d), (d, num_classes)), jnp.float32),
      'bias': jnp.asarray(rng.normal(0, 0.1, (num_classes,)), jnp.float32)}}
  return engine_lib.Model(_linear_apply, variables, IMAGE_SHAPE, num_classes,
                          f'tiny-linear-{seed}', tuple(f'class{k}' for k in range(num_classes)))


def numpy_label_matrix(model: engine_lib.Model, images, scales=scaleup.DEFAULT_SCALES) -> np.ndarray:
  """The tiny model's label matrix computed in NumPy (float64), independently of JAX."""
  p = model.variables['params']
  w, b = np.asarray(p['kernel'], np.float64), np.asarray(p['bias'], np.float64)
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  cols = [np.argmax((np.clip(f * x, 0, 1) - 0.5) @ w + b, axis=1) for f in (1.0, *scales)]
  return np.stack(cols, axis=1).astype(np.int32)


def random_images(n: int, seed: int = 0) -> np.ndarray:
  """``n`` seeded images in [0, 1]: uniform noise times a brightness in [0.02, 1]."""
  rng = np.random.default_rng(seed)
  u = rng.random((n, *IMAGE_SHAPE))
  b = rng.uniform(0.02, 1.0, (n, 1, 1, 1))
  return (u * b).astype(np.float32)


def tiny_calibration(model: engine_lib.Model, path, alpha: float = 0.3, n: int = 200,
                     seed: int = 1, engine: engine_lib.Engine | None = None,
                     scales=scaleup.DEFAULT_SCALES) -> calibration.CalibratedDetector:
  """Calibrates SPC on ``n`` seeded random images at ``alpha`` and saves it to ``path``.

  The label matrix comes from ``engine`` (its compiled buckets) if given,
  else from :func:`numpy_label_matrix`.
  """
  images = random_images(n, seed)
  if engine is not None:
    scales = engine.scales
    lm = np.concatenate([engine.label_matrix(images[i : i + engine.max_batch])
                         for i in range(0, n, engine.max_batch)])
  else:
    lm = numpy_label_matrix(model, images, scales)
  det = calibration.calibrate_detector('spc', lm, scales, alpha, model.variables,
                                       meta={'calibration_images': n, 'made_by': 'serve.testing'})
  det.save(path)
  return det


def npy_bytes(images) -> bytes:
  """``images`` as the body of an ``application/x-npy`` request (``np.save``'s bytes)."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(images))
  return buf.getvalue()


class ServerProcess:
  """A server command in its own process, started and waited for until it prints its URL.

  The servers of this package (``eval.serve``, ``python -m scaleup_jax.serve.testing``, with or
  without Ray) print ``serving on <url> ...`` once they accept requests; this starts ``cmd``,
  reads its output in a background thread, and returns when that line comes.

  Args:
    cmd: the command line (argv list).
    cwd: its working directory.
    env: variables added to ``os.environ`` (``PYTHONUNBUFFERED=1`` always, so lines arrive
      as they are printed).
    timeout_s: how long to wait for the ``serving on`` line.
    stdin: a pipe to the server (for the Ray driver, which stops when its stdin closes).

  Attributes:
    proc: the ``subprocess.Popen``.
    url: the ``<url>`` of the ``serving on`` line.
    log: the output lines up to and including it.

  Raises:
    RuntimeError: with the output so far, if the server exits first or does not print the
      line within ``timeout_s`` (it is then killed).

  Example:
    >>> with ServerProcess([sys.executable, '-m', 'scaleup_jax.serve.testing', '--port', '0',
    ...                     '--store', 'f.sqlite', '--calibration', 'cal.json']) as srv:
    ...   httpx.get(srv.url + '/healthz')                               # doctest: +SKIP
  """

  def __init__(self, cmd: Sequence[str], cwd=None, env: dict | None = None,
               timeout_s: float = 240, stdin: bool = False):
    self.proc = subprocess.Popen(
        list(cmd), cwd=cwd, stdin=subprocess.PIPE if stdin else None, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})})
    self._lines: queue.Queue = queue.Queue()
    threading.Thread(target=self._pump, daemon=True).start()
    self.log: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
      try:
        line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
      except queue.Empty:
        self.kill()
        raise RuntimeError(f'server did not start within {timeout_s} s: {self.output()}') from None
      if line is None:
        raise RuntimeError(f'server exited (code {self.proc.wait()}): {self.output()}')
      self.log.append(line)
      if line.startswith('serving on '):
        self.url = line.split()[2]
        return

  def _pump(self) -> None:
    for line in self.proc.stdout:
      self._lines.put(line)
    self._lines.put(None)

  def output(self, tail: int = 3000) -> str:
    """The last ``tail`` characters of :attr:`log`."""
    return ''.join(self.log)[-tail:]

  def kill(self) -> None:
    """SIGKILL (no clean shutdown), then waits for the process."""
    if self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGKILL)
    self.proc.wait(30)

  def stop(self, timeout_s: float = 30) -> None:
    """A clean shutdown: closes stdin if piped, else SIGINT; SIGKILL after ``timeout_s``."""
    if self.proc.poll() is None:
      if self.proc.stdin is not None:
        self.proc.stdin.close()
      else:
        self.proc.send_signal(signal.SIGINT)
      try:
        self.proc.wait(timeout_s)
      except subprocess.TimeoutExpired:
        self.kill()

  def __enter__(self) -> 'ServerProcess':
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


def main(argv=None) -> int:
  from scaleup_jax.serve import app
  p = argparse.ArgumentParser(prog='python -m scaleup_jax.serve.testing', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--port', type=int, default=0)
  p.add_argument('--store', required=True)
  p.add_argument('--calibration', required=True, help='made (alpha 0.3) if absent')
  p.add_argument('--policy', default='flag')
  p.add_argument('--buckets', default='1,4')
  p.add_argument('--max_wait_ms', type=float, default=5.0)
  p.add_argument('--token_file', default=None)
  p.add_argument('--nodetection', action='store_true')
  p.add_argument('--synchronous', default='FULL')
  p.add_argument('--ray', type=int, default=0, metavar='N',
                 help='deploy N Ray Serve replicas on a local Ray instance (needs --port > 0); '
                      'stops when stdin closes')
  args = p.parse_args(argv)
  model = tiny_model()
  if not args.nodetection and not Path(args.calibration).is_file():
    tiny_calibration(model, args.calibration)
  cfg = app.ServeConfig(calibration=args.calibration, store=args.store, policy=args.policy,
                        buckets=tuple(int(b) for b in args.buckets.split(',')), port=args.port,
                        max_wait_ms=args.max_wait_ms, token_file=args.token_file,
                        detection=not args.nodetection, synchronous=args.synchronous)
  say = lambda s: print(s, flush=True)  # noqa: E731
  if args.ray:
    import ray
    from ray import serve
    from scaleup_jax.serve import ray_app
    ray.init(num_cpus=max(2, args.ray), include_dashboard=False, log_to_driver=False)
    try:
      ray_app.deploy(cfg, args.ray, model_factory=tiny_model, say=say)
      say(f'serving on http://{cfg.host}:{cfg.port}  (Ray Serve, {args.ray} replicas)')
      sys.stdin.read()  # until the parent closes stdin
    finally:
      serve.shutdown()
      ray.shutdown()
    return 0
  app.serve(cfg, app.build_firewall(cfg, model=model, say=say), say=say)
  return 0


if __name__ == '__main__':
  sys.exit(main())


class ThreadedServer:
  """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a background thread.

  Example:
    >>> with ThreadedServer(create_app(firewall)) as srv:
    ...   httpx.get(srv.url + '/healthz')
  """

  def __init__(self, app, host: str = '127.0.0.1'):
    import threading
    import time
    import uvicorn
    from scaleup_jax.serve.app import bind
    self._sock = bind(host, 0)
    self.port = self._sock.getsockname()[1]
    self.url = f'http://{host}:{self.port}'
    self.server = uvicorn.Server(uvicorn.Config(app, log_level='warning', lifespan='on',
                                                timeout_graceful_shutdown=5))
    self.thread = threading.Thread(target=self.server.run, kwargs={'sockets': [self._sock]},
                                   daemon=True)
    self.thread.start()
    t0 = time.monotonic()
    while not self.server.started:
      if not self.thread.is_alive() or time.monotonic() - t0 > 30:
        raise RuntimeError('uvicorn did not start')
      time.sleep(0.01)

  def stop(self) -> None:
    self.server.should_exit = True
    self.thread.join(15)
    self._sock.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()
