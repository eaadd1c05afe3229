"""The HTTP service: FastAPI app factory, operator token, configuration and the embedded server.

Endpoints (see docs/serving.md):

* ``POST /v1/classify``: one or several images (PNG/JPEG upload, ``.npy`` or
  JSON array) -> per image the label, SPC, score and decision, and a request id;
* ``GET /healthz``: liveness and the configuration in force (model, buckets,
  detector's score and alpha);
* ``GET /metrics``: Prometheus text (requests, images, flags, batch sizes,
  latency, queue, store size, XLA compilations since ready);
* ``GET /review`` (HTML), ``GET /review/api/flags[/{id}]`` (JSON),
  ``GET /review/flags/{id}/thumbnail.png`` and ``/image`` (download): the
  trace-back store, behind the operator token; with no token configured these
  answer 404.

The operator token comes from ``--token_file`` or ``$SCALEUP_JAX_SERVE_TOKEN``
(never a command-line value, which other users can read in the process
table). It is compared in constant time (``hmac.compare_digest``), sent as
``Authorization: Bearer <token>`` by programs, or exchanged on the sign-in form
for a session cookie (HttpOnly, SameSite=Strict, 8 hours; an HMAC of its
expiry under a key derived from the token, so every replica accepts it and
rotating the token ends every session).

Example:
  >>> cfg = ServeConfig(calibration='runs/serve/cifar10_badnets_resnet20/calibration_spc_alpha0.05.json')
  >>> serve(cfg)           # blocks; python -m eval.serve is this
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.responses import Response

from scaleup_jax import calibration
from scaleup_jax import scaleup
from scaleup_jax.serve import decode, review
from scaleup_jax.serve import engine as engine_lib
from scaleup_jax.serve import store as store_lib
from scaleup_jax.serve.batcher import Busy, Closed
from scaleup_jax.serve.firewall import POLICIES, Firewall, StoreUnavailable
from scaleup_jax.validation import InputError

log = logging.getLogger('scaleup_jax.serve')

TOKEN_ENV = 'SCALEUP_JAX_SERVE_TOKEN'
MIN_TOKEN_CHARS = 16
SESSION_COOKIE = 'scaleup_review'
SESSION_S = 8 * 3600


@dataclasses.dataclass
class ServeConfig:
  """Everything ``python -m eval.serve`` configures (its flags, one to one).

  The threshold always comes from a saved calibration: ``calibration`` names
  the file (from ``eval.detect --save_detectors`` or a previous
  ``calibrate``), and ``calibrate`` (re)computes it first from the defender's
  benign test images (``num_defense_per_class`` per class, the split of
  ``evaluate.split_test_set`` under ``seed``) at budget ``alpha``.
  """

  ckpt: str | None = None  # None: the zoo BadNets ResNet-20
  calibration: str | None = None  # None: runs/serve/<model>/calibration_spc_alpha<a>_<rule>.json
  calibrate: bool = False
  calibration_images: str | None = None  # .npy of the defender's own benign images to calibrate on
  alpha: float = 0.05
  rule: str = 'conformal'
  scales: tuple = scaleup.DEFAULT_SCALES  # of a new calibration; a loaded one brings its own
  num_defense_per_class: int = 100
  seed: int = 0  # defender split and tie coins
  data_dir: str | None = None
  download: bool | None = None
  detection: bool = True  # False: the same model served without detection (baseline)
  policy: str = 'flag'
  buckets: tuple = engine_lib.DEFAULT_BUCKETS
  method: str = 'auto'
  max_wait_ms: float = 5.0
  max_queue: int = 1024
  max_images: int = 64
  max_body_bytes: int = 8 << 20
  max_pixels: int = 4096 * 4096
  request_timeout_s: float = 60.0
  store: str | None = None  # None: runs/serve/<model>/flags.sqlite
  store_images: bool = True
  retention_records: int = 100_000
  retention_days: float = 0.0  # 0: no age limit
  synchronous: str = 'FULL'
  token_file: str | None = None  # else $SCALEUP_JAX_SERVE_TOKEN; neither: review endpoints off
  cookie_secure: bool = False  # set behind TLS
  host: str = '127.0.0.1'
  port: int = 8000
  access_log: bool = False


def default_calibration_path(model_name: str, alpha: float, rule: str) -> Path:
  return Path('runs') / 'serve' / model_name / f'calibration_spc_alpha{alpha:g}_{rule}.json'


def default_store_path(model_name: str) -> Path:
  return Path('runs') / 'serve' / model_name / 'flags.sqlite'


def read_token(config: ServeConfig) -> str | None:
  """The operator token from ``config.token_file`` or ``$SCALEUP_JAX_SERVE_TOKEN`` (None: off).

  Raises:
    InputError: an unreadable file or a token shorter than :data:`MIN_TOKEN_CHARS`.
  """
  if config.token_file:
    try:
      token = Path(config.token_file).expanduser().read_text().strip()
    except OSError as e:
      raise InputError(f'cannot read the operator token file {config.token_file!r}: '
                       f'{e.strerror}') from None
    where = f'token file {config.token_file!r}'
  else:
    token = os.environ.get(TOKEN_ENV, '').strip()
    where = f'${TOKEN_ENV}'
    if not token:
      return None
  if len(token) < MIN_TOKEN_CHARS:
    raise InputError(f'the operator token in {where} has {len(token)} characters; use at least '
                     f'{MIN_TOKEN_CHARS} (e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")')
  return token


# ---------------------------------------------------------------- building the firewall


def defender_indices(seed: int, labels, num_classes: int, num_per_class: int) -> np.ndarray:
  """Indices of the defender's benign test images: the ones ``eval.detect --seed SEED`` holds out.

  ``evaluate.build_eval_arrays(key(seed), ...)`` splits its key in three and
  gives the first to ``evaluate.split_test_set``; so does this (a test checks
  that the two agree).

  Returns:
    int64 indices, ``num_per_class`` per class (fewer if a class has fewer).
  """
  import jax
  from scaleup_jax import evaluate
  k_split = jax.random.split(jax.random.key(int(seed)), 3)[0]
  defense, _ = evaluate.split_test_set(k_split, np.asarray(labels), num_classes, num_per_class, 0)
  return defense


def calibrate_on_defender_images(engine: engine_lib.Engine, config: ServeConfig,
                                 dataset: str = 'cifar10') -> calibration.CalibratedDetector:
  """A calibrated SPC detector from the defender's benign images, through ``engine``.

  The images are ``config.calibration_images`` (a ``.npy`` file) if set, else
  the ``num_defense_per_class`` per class of the model's test split that
  ``evaluate.split_test_set(key(seed), ...)`` holds out for the defender (the
  images ``eval.detect`` calibrates on). They are scored by the engine's
  compiled buckets (no extra compile).

  Args:
    engine: compiled on the detector's scales.
    config: ``alpha``, ``rule``, ``calibration_images``,
      ``num_defense_per_class``, ``seed``, ``data_dir``, ``download``.
    dataset: the model's tfds dataset.

  Returns:
    The :class:`calibration.CalibratedDetector` (not yet saved).

  Raises:
    InputError: unreadable or invalid images, or too few of them to certify
      ``alpha`` under the conformal rule.
  """
  from scaleup_jax import integrity
  from scaleup_jax.validation import check_images
  model = engine.model
  if config.calibration_images:
    try:
      images = np.load(config.calibration_images, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise InputError(f'cannot read calibration images {config.calibration_images!r}: '
                       f'{e}') from None
    images = check_images(images, model.image_shape)
    source = {'calibration_images_file': str(Path(config.calibration_images).absolute()),
              'calibration_images_sha256': integrity.sha256_file(config.calibration_images),
              'selection': 'every image of the file'}
  else:
    from scaleup_jax import data as data_lib
    if config.num_defense_per_class < 1:
      raise InputError(f'num_defense_per_class must be >= 1 to calibrate; got '
                       f'{config.num_defense_per_class}')
    test = data_lib.load_split(dataset, 'test', config.data_dir, download=config.download)
    defense_idx = defender_indices(config.seed, test.labels, test.num_classes,
                                   config.num_defense_per_class)
    images = test.images[defense_idx]
    source = {'dataset': dataset, 'split': 'test',
              'selection': f'the defender images of eval.detect --seed {config.seed}: '
                           f'{config.num_defense_per_class} test images per class '
                           '(evaluate.build_eval_arrays\' split)'}
  lm = np.concatenate([engine.label_matrix(images[i : i + engine.max_batch])
                       for i in range(0, len(images), engine.max_batch)])
  meta = {'ckpt': str(model.path or model.name), 'calibration_images': int(len(images)),
          **source, 'seed': config.seed, 'made_by': 'eval.serve --calibrate'}
  det = calibration.calibrate_detector('spc', lm, engine.scales, config.alpha,
                                       model.variables, config.rule, meta=meta)
  if not det.threshold.feasible:
    raise InputError(f'{len(images)} calibration images cannot certify alpha = {config.alpha:g} '
                     f'under the conformal rule (it needs at least '
                     f'{calibration.min_calibration_size(config.alpha)}); give more images or '
                     'raise alpha')
  return det


def build_firewall(config: ServeConfig, model: engine_lib.Model | None = None,
                   dataset: str = 'cifar10', say: Callable[[str], None] = print) -> Firewall:
  """Loads the model and calibration, compiles the buckets, opens the store.

  Args:
    config: the configuration.
    model: serve this model instead of loading ``config.ckpt`` (tests, demos).
    dataset: of ``model``'s calibration images when ``config.calibrate``.
    say: progress lines.

  Returns:
    A ready :class:`Firewall`.

  Raises:
    InputError, calibration.CalibrationMismatchError, integrity.IntegrityError,
    checkpoint.CheckpointError: with a one-line reason.
  """
  from scaleup_jax import paths
  if config.policy not in POLICIES:
    raise InputError(f'unknown policy {config.policy!r}; expected one of {POLICIES}')
  if config.max_images < 1 or config.max_body_bytes < 1 or config.max_wait_ms < 0:
    raise InputError('max_images and max_body_bytes must be >= 1 and max_wait_ms >= 0; got '
                     f'{config.max_images}, {config.max_body_bytes}, {config.max_wait_ms}')
  if (config.detection and not config.calibrate and config.calibration
      and not Path(config.calibration).is_file()):
    raise InputError(f'no calibration file {config.calibration!r}: pass --calibrate to compute it '
                     'from the defender\'s benign images, or --calibration FILE (from '
                     'eval.detect --save_detectors); the threshold never defaults to a constant')
  if model is None:
    ckpt = config.ckpt or paths.zoo_model(paths.DEFAULT_MODEL)
    t0 = time.perf_counter()
    model = engine_lib.load_model(ckpt, config.data_dir)
    dataset = model.dataset
    say(f'loaded {model.path} ({time.perf_counter() - t0:.1f} s)')
  detector = None
  cal_path = Path(config.calibration) if config.calibration else default_calibration_path(
      model.name, config.alpha, config.rule)
  if config.detection and not config.calibrate:
    if not cal_path.is_file():
      raise InputError(f'no calibration file {str(cal_path)!r}: pass --calibrate to compute it '
                       'from the defender\'s benign images, or --calibration FILE (from '
                       'eval.detect --save_detectors); the threshold never defaults to a constant')
    detector = calibration.load_detector(cal_path, variables=model.variables)
  scales = (detector.scales if detector is not None else
            scaleup.check_factors(config.scales) if config.detection else ())
  t0 = time.perf_counter()
  engine = engine_lib.Engine(model, scales, config.buckets, config.method, config.seed)
  say(f'compiled buckets {list(engine.buckets)} for {1 + len(scales)} forwards per image '
      f'({engine.compile_seconds:.1f} s)')
  if config.detection and config.calibrate:
    t0 = time.perf_counter()
    detector = calibrate_on_defender_images(engine, config, dataset)
    detector.save(cal_path)
    say(f'calibrated on {detector.threshold.num_calibration} benign images: alpha = '
        f'{detector.alpha:g}, flag when {calibration.describe(detector.threshold)}; wrote '
        f'{cal_path} ({time.perf_counter() - t0:.1f} s)')
  store = None
  if config.detection:
    store_path = Path(config.store) if config.store else default_store_path(model.name)
    store = store_lib.FlagStore(store_path, config.store_images, config.retention_records,
                                config.retention_days * 86400.0 or None, config.synchronous)
  return Firewall(engine, detector, config.policy, store, config.max_wait_ms / 1000.0,
                  config.max_queue)


# ---------------------------------------------------------------- operator auth


class OperatorAuth:
  """The operator token: bearer header or signed session cookie, compared in constant time."""

  def __init__(self, token: str | None, cookie_secure: bool = False, session_s: float = SESSION_S):
    self.token = token
    self.cookie_secure = bool(cookie_secure)
    self.session_s = float(session_s)
    self._key = (hmac.new(token.encode(), b'scaleup-review-session-v1', hashlib.sha256).digest()
                 if token else b'')

  @property
  def enabled(self) -> bool:
    return self.token is not None

  def check_token(self, given: str | None) -> bool:
    if not self.enabled or given is None:
      return False
    return hmac.compare_digest(given.encode('utf-8', 'replace'), self.token.encode())

  def _sign(self, expiry: int) -> str:
    return hmac.new(self._key, str(expiry).encode(), hashlib.sha256).hexdigest()

  def new_session(self) -> str:
    expiry = int(time.time() + self.session_s)
    return f'{expiry}.{self._sign(expiry)}'

  def check_session(self, value: str | None) -> bool:
    if not self.enabled or not value or '.' not in value:
      return False
    expiry, _, sig = value.partition('.')
    if not expiry.isdigit() or int(expiry) < time.time():
      return False
    return hmac.compare_digest(sig.encode('utf-8', 'replace'), self._sign(int(expiry)).encode())

  def authorized(self, request) -> bool:
    header = request.headers.get('authorization', '')
    scheme, _, value = header.partition(' ')
    if scheme.lower() == 'bearer' and self.check_token(value.strip()):
      return True
    return self.check_session(request.cookies.get(SESSION_COOKIE))


# ---------------------------------------------------------------- the app


async def read_body(request, limit: int) -> bytes:
  """The request body, refusing (413) more than ``limit`` bytes before reading them all."""
  declared = request.headers.get('content-length')
  if declared is not None:
    if not declared.strip().isdigit():
      raise decode.RequestError(400, f'bad Content-Length {declared!r}')
    if int(declared) > limit:
      raise decode.RequestError(413, f'the request body has {int(declared)} bytes; at most '
                                     f'{limit} are accepted')
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise decode.RequestError(413, f'the request body exceeds {limit} bytes')
    chunks.append(chunk)
  return b''.join(chunks)


async def parse_items(request, body: bytes, image_shape: tuple, limits: decode.Limits) -> list:
  """The request's images as :class:`decode.Item` (see :mod:`decode` for the forms)."""
  from starlette.concurrency import run_in_threadpool
  ctype = decode.media_type(request.headers.get('content-type'))
  if ctype == 'multipart/form-data':
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
      yield body
      yield b''

    parser = MultiPartParser(request.headers, stream(), max_files=limits.max_images + 1,
                             max_fields=1000)
    try:
      form = await parser.parse()
    except MultiPartException as e:
      if 'files' in str(e).lower():
        raise decode.RequestError(413, f'the request holds more than {limits.max_images} files; '
                                       f'at most {limits.max_images} images per request') from None
      raise decode.RequestError(400, f'malformed multipart body: {e}') from None
    files = []
    try:
      for key, value in form.multi_items():
        if key not in decode.IMAGE_FIELDS:
          continue
        if isinstance(value, str):
          raise decode.RequestError(422, f'form field {key!r} must be a file upload (PNG or JPEG), '
                                         'not text')
        files.append((value.filename, await value.read()))
    finally:
      await form.close()
    if not files:
      raise decode.RequestError(400, 'no image in the request: send PNG or JPEG files in the '
                                     f'form field {decode.IMAGE_FIELDS[0]!r}')
    if len(files) > limits.max_images:
      raise decode.RequestError(413, f'the request holds {len(files)} images; at most '
                                     f'{limits.max_images} per request')
    return await run_in_threadpool(
        lambda: [decode.decode_file(i, data, image_shape, limits, name)
                 for i, (name, data) in enumerate(files)])
  if ctype in ('image/png', 'image/jpeg'):
    return await run_in_threadpool(lambda: [decode.decode_file(0, body, image_shape, limits)])
  if ctype in decode.NPY_TYPES:
    return await run_in_threadpool(decode.parse_npy, body, image_shape, limits)
  if ctype == 'application/json':
    return await run_in_threadpool(decode.parse_json, body, image_shape, limits)
  shown = ctype or 'none'
  raise decode.RequestError(415, f'unsupported Content-Type {shown!r}; send multipart/form-data '
                                 '(PNG/JPEG files in field "image"), image/png, image/jpeg, '
                                 'application/x-npy or application/json')


def create_app(firewall: Firewall, config: ServeConfig | None = None,
               token: str | None = None, close_on_shutdown: bool = True,
               replica: str | None = None):
  """The FastAPI app serving ``firewall``.

  Args:
    firewall: from :func:`build_firewall`.
    config: limits, timeout, cookie flag (defaults of :class:`ServeConfig`).
    token: the operator token (:func:`read_token`); None turns the review and
      store endpoints off (404).
    close_on_shutdown: close the firewall (batcher, store) when the app stops.
    replica: if given, sent as the ``X-Scaleup-Replica`` header of every
      response (Ray Serve replicas; off for the embedded server).

  Returns:
    A ``fastapi.FastAPI`` app.

  Example:
    >>> app = create_app(build_firewall(cfg), cfg, read_token(cfg))
    >>> uvicorn.run(app, host='127.0.0.1', port=8000)
  """
  config = config or ServeConfig()
  auth = OperatorAuth(token, config.cookie_secure)
  limits = decode.Limits(config.max_body_bytes, config.max_images, config.max_pixels)
  fw = firewall
  model = fw.engine.model

  @contextlib.asynccontextmanager
  async def lifespan(app):
    yield
    if close_on_shutdown:
      fw.close()

  app = FastAPI(title='SCALE-UP firewall', lifespan=lifespan, docs_url=None, redoc_url=None,
                openapi_url=None)
  app.state.firewall = fw
  if replica is not None:
    @app.middleware('http')
    async def tag_replica(request, call_next):
      response = await call_next(request)
      response.headers['X-Scaleup-Replica'] = replica
      return response

  def error(status: int, message: str, headers: dict | None = None):
    return JSONResponse({'error': message}, status_code=status,
                        headers={'Cache-Control': 'no-store', **(headers or {})})

  @app.post('/v1/classify')
  async def classify(request: Request):
    t0 = time.perf_counter()
    n = 0
    try:
      body = await read_body(request, limits.max_body_bytes)
      items = await parse_items(request, body, model.image_shape, limits)
      n = len(items)
      out = await fw.classify(items, config.request_timeout_s)
      response = JSONResponse(out, headers={'Cache-Control': 'no-store'})
    except decode.RequestError as e:
      response = error(e.status, str(e))
    except (Busy, Closed) as e:
      response = error(503, str(e), {'Retry-After': '1'})
    except StoreUnavailable as e:
      response = error(503, str(e), {'Retry-After': '5'})
    except asyncio.TimeoutError:
      response = error(503, f'no answer from the detector within {config.request_timeout_s:g} s',
                       {'Retry-After': '5'})
    except Exception:  # a bug: keep the traceback in the log, not in the response
      log.exception('classify failed')
      response = error(500, 'internal error; the server log has the traceback')
    fw.metrics.observe_request(str(response.status_code), time.perf_counter() - t0,
                               n if response.status_code == 200 else 0)
    return response

  @app.get('/healthz')
  async def healthz():
    return {'status': 'ok', **fw.engine.describe(),
            'model_fingerprint': fw.fingerprint[:16],
            'policy': fw.policy if fw.detector else 'none',
            'detector': fw.detector_summary(short=True),
            'max_wait_ms': config.max_wait_ms, 'max_images': limits.max_images,
            'max_body_bytes': limits.max_body_bytes,
            'compiles_since_ready': fw.compiles_since_ready, 'review': auth.enabled}

  @app.get('/metrics')
  async def metrics():
    gauges = {'scaleup_queue_images': fw.batcher.queued(),
              'scaleup_xla_compiles_since_ready': fw.compiles_since_ready}
    if fw.store is not None:
      gauges['scaleup_store_records'] = fw.store.count()
    return PlainTextResponse(fw.metrics.render(gauges),
                             media_type='text/plain; version=0.0.4; charset=utf-8')

  @app.get('/')
  async def root():
    return {'service': 'SCALE-UP firewall', 'classify': 'POST /v1/classify',
            'health': '/healthz', 'metrics': '/metrics',
            'review': '/review' if auth.enabled else None}

  # ------------------------------------------------------------ review (operator only)

  page_headers = {'Content-Security-Policy': review.CSP, 'Cache-Control': 'no-store',
                  'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer'}

  def review_off():
    return error(404, 'the review endpoints are off: no operator token is configured (set '
                      f'${TOKEN_ENV} or --token_file)')

  def denied(html: bool = False):
    if html:
      return HTMLResponse(review.login_page(), status_code=401, headers=page_headers)
    return error(401, 'operator token required (Authorization: Bearer <token>)',
                 {'WWW-Authenticate': 'Bearer'})

  def guard(request, html: bool = False):
    if not auth.enabled or fw.store is None:
      return review_off()
    if not auth.authorized(request):
      return denied(html)
    return None

  @app.get('/review/review.css')
  async def review_css():
    return Response(review.CSS, media_type='text/css', headers={'Cache-Control': 'max-age=3600'})

  @app.get('/review')
  async def review_html(request: Request, before: int | None = None, limit: int = 50):
    if (refused := guard(request, html=True)) is not None:
      return refused
    limit = max(1, min(limit, 500))
    records = fw.store.list(limit, before)
    return HTMLResponse(review.review_page(records, fw.store.count(), fw.detector_summary(),
                                           model.name, limit, model.class_names,
                                           fw.store.store_images), headers=page_headers)

  @app.post('/review/login')
  async def review_login(request: Request):
    if not auth.enabled or fw.store is None:
      return review_off()
    try:
      body = await read_body(request, 4096)
    except decode.RequestError as e:
      return error(e.status, str(e))
    from urllib.parse import parse_qs
    given = parse_qs(body.decode('utf-8', 'replace')).get('token', [''])[0].strip()
    if not auth.check_token(given):
      return HTMLResponse(review.login_page('That is not the operator token.'), status_code=401,
                          headers=page_headers)
    resp = RedirectResponse('/review', status_code=303)
    resp.set_cookie(SESSION_COOKIE, auth.new_session(), max_age=int(auth.session_s),
                    path='/review', httponly=True, samesite='strict', secure=auth.cookie_secure)
    return resp

  @app.post('/review/logout')
  async def review_logout():
    resp = RedirectResponse('/review', status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path='/review')
    return resp

  @app.get('/review/api/flags')
  async def api_flags(request: Request, before: int | None = None, limit: int = 50):
    if (refused := guard(request)) is not None:
      return refused
    return JSONResponse({'flags': fw.store.list(limit, before), 'total': fw.store.count(),
                         'detector': fw.detector_summary()}, headers={'Cache-Control': 'no-store'})

  def flag_record(request: Request, record_id: int, blobs: bool = False):
    """``(record, None)`` for a reviewer, or ``(None, the refusal or 404 response)``."""
    if (refused := guard(request)) is not None:
      return None, refused
    rec = fw.store.get(record_id, blobs=blobs)
    if rec is None:
      return None, error(404, f'no flagged record {record_id}')
    return rec, None

  @app.get('/review/api/flags/{record_id}')
  async def api_flag(request: Request, record_id: int):
    rec, refused = flag_record(request, record_id)
    if refused is not None:
      return refused
    return JSONResponse(rec, headers={'Cache-Control': 'no-store'})

  @app.get('/review/flags/{record_id}/thumbnail.png')
  async def thumbnail(request: Request, record_id: int):
    rec, refused = flag_record(request, record_id, blobs=True)
    if refused is not None:
      return refused
    return Response(rec['thumbnail'], media_type='image/png',
                    headers={'Cache-Control': 'private, max-age=3600'})

  @app.get('/review/flags/{record_id}/image')
  async def image(request: Request, record_id: int):
    rec, refused = flag_record(request, record_id, blobs=True)
    if refused is not None:
      return refused
    if rec['image'] is None:
      return error(404, f'record {record_id} has no image: the operator does not keep images '
                        '(--nostore_images); its SHA-256 and thumbnail are kept')
    ext = {'image/png': 'png', 'image/jpeg': 'jpg'}.get(rec['image_type'], 'npy')
    name = f'flag-{record_id}-{rec["image_sha256"][:12]}.{ext}'
    return Response(rec['image'], media_type=rec['image_type'],
                    headers={'Content-Disposition': f'attachment; filename="{name}"',
                             'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff'})

  return app


# ---------------------------------------------------------------- the embedded server


def bind(host: str, port: int) -> socket.socket:
  """A listening TCP socket on ``(host, port)`` (port 0: a free one)."""
  infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
  family, _, _, _, addr = infos[0]
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind(addr)
  except OSError as e:
    sock.close()
    raise InputError(f'cannot listen on {host}:{port}: {e.strerror}') from None
  sock.listen(2048)
  return sock


def serve(config: ServeConfig, firewall: Firewall | None = None,
          say: Callable[[str], None] = print) -> None:
  """Builds the firewall (unless given) and serves it with uvicorn until interrupted.

  Prints ``serving on http://HOST:PORT`` (the real port when ``port`` is 0)
  once the buckets are compiled and the socket listens.
  """
  import uvicorn
  token = read_token(config)
  fw = firewall or build_firewall(config, say=say)
  app = create_app(fw, config, token)
  sock = bind(config.host, config.port)
  host, port = sock.getsockname()[:2]
  shown = f'[{host}]' if ':' in host else host
  review_line = (f'review: http://{shown}:{port}/review (operator token)' if token else
                 f'review endpoints off (no operator token: set ${TOKEN_ENV} or --token_file)')
  say(f'serving on http://{shown}:{port}  (POST /v1/classify; /healthz, /metrics; {review_line})')
  server = uvicorn.Server(uvicorn.Config(app, log_level='warning', access_log=config.access_log,
                                         timeout_graceful_shutdown=10, lifespan='on'))
  server.run(sockets=[sock])

