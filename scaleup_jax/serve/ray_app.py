"""The firewall on Ray Serve: the same FastAPI app, one compiled detector per replica.

``pip install -e ".[ray]"``, then::

  python -m eval.serve --ray --replicas 2 --calibration FILE      # a local Ray instance
  python -m eval.serve --ray --ray_address auto --replicas 4 ...  # join a running cluster

Each replica is a Ray actor that loads the model, loads the saved calibration
(checked against the model), compiles the buckets once in its constructor and
serves :func:`app.create_app` through ``serve.ingress`` (built at replica start
by ``__serve_build_asgi_app__``). Ray Serve's HTTP proxy spreads the requests
over the replicas; each replica batches its own. Every response carries
``X-Scaleup-Replica`` (host and process id) so that a client can see which
replica answered.

The store: replicas on one machine share the SQLite file (WAL mode, SQLite's
locks serialise the writers, each commit before its answer). SQLite needs a
local file system, so replicas on several machines each need their own store
file on local disk (the default ``--store`` path is per node) — or a store
service; see docs/serving.md, "Several machines".

A ``--calibrate`` run calibrates once on the driver, saves the file and deploys
replicas that load it, so replicas never race to write it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Callable

from scaleup_jax.serve import app as app_lib

APP_NAME = 'scaleup-firewall'


def _absolute(config: app_lib.ServeConfig, model_name: str) -> app_lib.ServeConfig:
  """Paths made absolute on the driver (replicas run in other working directories)."""
  def ab(p):
    return None if p is None else str(Path(p).expanduser().absolute())
  cal = config.calibration or str(app_lib.default_calibration_path(model_name, config.alpha,
                                                                   config.rule))
  store = config.store or str(app_lib.default_store_path(model_name))
  return dataclasses.replace(config, ckpt=ab(config.ckpt), calibration=ab(cal), store=ab(store),
                             token_file=ab(config.token_file), data_dir=ab(config.data_dir))


def replica_id() -> str:
  return f'{socket.gethostname()}:{os.getpid()}'


def make_deployment():
  """The Ray Serve deployment class (imports ray; call only where it is installed)."""
  from ray import serve

  @serve.deployment(name='Firewall')
  @serve.ingress()
  class Firewall:
    """One replica: its own model, compiled buckets, batcher and store connection."""

    def __init__(self, config: app_lib.ServeConfig, model_factory: Callable | None = None):
      from scaleup_jax.xla_flags import set_default_xla_flags
      set_default_xla_flags()
      self.config = config
      model = model_factory() if model_factory is not None else None
      self.firewall = app_lib.build_firewall(config, model=model, say=lambda s: None)
      self.token = app_lib.read_token(config)

    def __serve_build_asgi_app__(self):
      return app_lib.create_app(self.firewall, self.config, self.token, replica=replica_id())

  return Firewall


def deploy(config: app_lib.ServeConfig, replicas: int, model_factory: Callable | None = None,
           cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, say=print):
  """Deploys ``replicas`` firewall replicas on the connected Ray instance; returns the handle.

  Args:
    config: as for the embedded server; ``host``/``port`` are the Serve proxy's.
    replicas: number of replicas (>= 1).
    model_factory: a picklable ``() -> Model`` to serve instead of ``config.ckpt``
      (tests); None loads ``config.ckpt`` in each replica.
    cpus_per_replica, gpus_per_replica: Ray resources reserved per replica.
  """
  from ray import serve
  from scaleup_jax import paths
  if replicas < 1:
    raise app_lib.InputError(f'--replicas must be >= 1; got {replicas}')
  if model_factory is None:
    name = Path(paths.resolve_ckpt(config.ckpt) if config.ckpt else
                paths.zoo_model(paths.DEFAULT_MODEL)).name
    if config.ckpt is None:
      config = dataclasses.replace(config, ckpt=str(paths.zoo_model(paths.DEFAULT_MODEL)))
  else:
    name = model_factory().name
  config = _absolute(config, name)
  app_lib.read_token(config)  # a bad token file fails here, not in every replica
  if config.detection and config.calibrate:
    # Calibrate once here; the replicas load the file.
    model = model_factory() if model_factory is not None else None
    app_lib.build_firewall(dataclasses.replace(config, buckets=(max(config.buckets),)), model=model,
                           say=say).close()
    config = dataclasses.replace(config, calibrate=False)
  serve.start(http_options={'host': config.host, 'port': config.port})
  dep = make_deployment().options(
      num_replicas=replicas, max_ongoing_requests=max(8, config.max_queue),
      ray_actor_options={'num_cpus': cpus_per_replica, 'num_gpus': gpus_per_replica})
  t0 = time.perf_counter()
  handle = serve.run(dep.bind(config, model_factory), name=APP_NAME, route_prefix='/')
  say(f'{replicas} Ray Serve replicas ready ({time.perf_counter() - t0:.1f} s)')
  return handle


def serve_on_ray(config: app_lib.ServeConfig, replicas: int, address: str | None = None,
                 cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0,
                 say=print) -> None:
  """``python -m eval.serve --ray``: starts or joins Ray, deploys, serves until interrupted."""
  import ray
  from ray import serve
  ray.init(address=address, include_dashboard=False, log_to_driver=False)
  try:
    deploy(config, replicas, None, cpus_per_replica, gpus_per_replica, say)
    say(f'serving on http://{config.host}:{config.port}  (Ray Serve, {replicas} replicas; '
        'Ctrl-C stops)')
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    pass
  finally:
    serve.shutdown()
    ray.shutdown()
