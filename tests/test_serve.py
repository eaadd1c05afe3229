"""The firewall service (issue #20) over real HTTP on 127.0.0.1, on a tiny random model.

Answers are compared with the same computation done directly (label matrix,
calibrated rule, the documented coin), so a batching or decoding bug shows as
a mismatch, not as a plausible number.
"""

import concurrent.futures
import hashlib
import io
import json
import random
import re
import threading
import time

import httpx
import jax
import numpy as np
import pytest
from PIL import Image

from scaleup_jax import calibration, scaleup
from scaleup_jax.serve import batcher as batcher_lib
from scaleup_jax.serve import engine as engine_lib
from scaleup_jax.serve import testing
from scaleup_jax.serve.app import (OperatorAuth, ServeConfig, SESSION_COOKIE, build_firewall,
                                   create_app)
from scaleup_jax.serve.firewall import Firewall
from scaleup_jax.serve.store import FlagRecord, FlagStore
from scaleup_jax.validation import InputError

SEED = 0
TOKEN = 'operator-token-for-tests-0123456789'
RESULT_KEYS = {'index', 'label', 'class_name', 'spc', 'score', 'flagged', 'decision', 'image_sha256'}


def png_bytes(a, mode=None) -> bytes:
  a = np.asarray(a)
  if a.dtype != np.uint8:
    a = np.rint(a * 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(a, mode).save(buf, format='PNG')
  return buf.getvalue()


def npy_bytes(a) -> bytes:
  buf = io.BytesIO()
  np.save(buf, a)
  return buf.getvalue()


def expected_decisions(model, det, images):
  """(labels, spc, flagged) computed without the service: NumPy model, the documented coin."""
  lm = testing.numpy_label_matrix(model, images, det.scales)
  spc = scaleup.spc_from_labels(lm)
  prob = calibration.flag_probability(det.scores_from_labels(lm), det.threshold)
  coins = []
  for x in images:
    h = hashlib.sha256(repr(x.shape).encode() + np.ascontiguousarray(x, np.float32).tobytes())
    seq = np.random.SeedSequence([SEED, *[int(w) for w in np.frombuffer(h.digest(), np.uint32)]])
    coins.append(np.random.Generator(np.random.Philox(seq)).random())
  return lm[:, 0], spc, np.asarray(coins) < prob


class Env:
  pass


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  d = tmp_path_factory.mktemp('serve')
  e = Env()
  e.dir = d
  e.model = testing.tiny_model()
  e.engine = engine_lib.Engine(e.model, scaleup.DEFAULT_SCALES, (1, 4), seed=SEED)
  testing.tiny_calibration(e.model, d / 'cal.json', engine=e.engine)
  e.det = calibration.load_detector(d / 'cal.json', variables=e.model.variables)
  # 40 images whose pixels are exactly uint8 / 255, so PNG uploads decode to the same arrays.
  u8 = np.rint(testing.random_images(40, seed=7) * 255).astype(np.uint8)
  e.u8 = u8
  e.pool = u8.astype(np.float32) / 255.0
  e.labels, e.spc, e.flagged = expected_decisions(e.model, e.det, e.pool)
  assert 0 < e.flagged.sum() < len(e.pool), 'the test pool needs flagged and unflagged images'
  e.cfg = ServeConfig(max_images=8, max_body_bytes=256 << 10, max_pixels=1 << 20)
  e.flag_store = FlagStore(d / 'flag.sqlite')
  e.block_store = FlagStore(d / 'block.sqlite', store_images=False)
  e.flag_fw = Firewall(e.engine, e.det, 'flag', e.flag_store, max_wait_s=0.005)
  e.block_fw = Firewall(e.engine, e.det, 'block', e.block_store, max_wait_s=0.005)
  e.flag = testing.ThreadedServer(create_app(e.flag_fw, e.cfg, TOKEN))
  e.block = testing.ThreadedServer(create_app(e.block_fw, e.cfg, None))
  e.http = httpx.Client(timeout=60)  # one client: a new one per call costs an SSL context
  yield e
  e.http.close()
  e.flag.stop()
  e.block.stop()


def classify_npy(client, url, images):
  return client.post(url + '/v1/classify', content=npy_bytes(images),
                     headers={'content-type': 'application/x-npy'})


def check_results(env, body, idx, policy='flag'):
  assert len(body['results']) == len(idx)
  for j, (r, i) in enumerate(zip(body['results'], idx)):
    assert set(r) == RESULT_KEYS or (policy == 'block' and set(r) == RESULT_KEYS - {'class_name'})
    assert r['index'] == j
    assert r['spc'] == pytest.approx(float(env.spc[i]))
    assert r['flagged'] == bool(env.flagged[i]), (j, i)
    if r['flagged'] and policy == 'block':
      assert r['label'] is None and r['decision'] == 'block'
    else:
      assert r['label'] == int(env.labels[i])
      assert r['decision'] == ('flag' if r['flagged'] else 'pass')


def test_classify_forms_agree_with_direct_computation(env):
  idx = [0, 1, 2, 3, 4, 5]
  r = classify_npy(env.http, env.flag.url, env.pool[idx])
  assert r.status_code == 200, r.text
  body = r.json()
  assert re.fullmatch(r'[0-9a-f]{32}', body['request_id'])
  assert body['policy'] == 'flag' and body['detector']['alpha'] == pytest.approx(0.3)
  check_results(env, body, idx)

  files = [('image', (f'{i}.png', png_bytes(env.u8[i]), 'image/png')) for i in idx]
  r2 = env.http.post(env.flag.url + '/v1/classify', files=files)
  assert r2.status_code == 200, r2.text
  check_results(env, r2.json(), idx)
  for (_, (_, data, _)), res in zip(files, r2.json()['results']):
    assert res['image_sha256'] == hashlib.sha256(data).hexdigest()

  r3 = env.http.post(env.flag.url + '/v1/classify', content=json.dumps({'images': env.pool[:2].tolist()}),
                  headers={'content-type': 'application/json'})
  assert r3.status_code == 200, r3.text
  check_results(env, r3.json(), [0, 1])

  r4 = env.http.post(env.flag.url + '/v1/classify', content=png_bytes(env.u8[3]),
                  headers={'content-type': 'image/png'})
  assert r4.status_code == 200 and r4.json()['results'][0]['spc'] == pytest.approx(float(env.spc[3]))
  assert len({body['request_id'], r2.json()['request_id'], r3.json()['request_id']}) == 3

  # JPEG is lossy: the service must score the decoded pixels, as PIL decodes them.
  jpgs = []
  for i in idx[:3]:
    buf = io.BytesIO()
    Image.fromarray(env.u8[i]).save(buf, format='JPEG', quality=90)
    jpgs.append(buf.getvalue())
  r5 = env.http.post(env.flag.url + '/v1/classify',
                     files=[('image', (f'{k}.jpg', b, 'image/jpeg')) for k, b in enumerate(jpgs)])
  assert r5.status_code == 200, r5.text
  decoded = np.stack([np.asarray(Image.open(io.BytesIO(b)), np.uint8) for b in jpgs])
  labels, spc, flagged = expected_decisions(env.model, env.det, decoded.astype(np.float32) / 255.0)
  for k, res in enumerate(r5.json()['results']):
    assert (res['label'], res['flagged']) == (int(labels[k]), bool(flagged[k]))
    assert res['spc'] == pytest.approx(float(spc[k]))


def test_flagged_inputs_are_stored_and_reviewable(env):
  idx = list(range(8, 16))
  files = [('image', (f'{i}.png', png_bytes(env.u8[i]), 'image/png')) for i in idx]
  body = env.http.post(env.flag.url + '/v1/classify', files=files).json()
  recs = env.flag_store.by_request(body['request_id'])
  want = [j for j, i in enumerate(idx) if env.flagged[i]]
  assert [r['image_index'] for r in recs] == want and want
  for r in recs:
    i = idx[r['image_index']]
    assert r['label'] == int(env.labels[i]) and r['spc'] == pytest.approx(float(env.spc[i]))
    assert r['image_sha256'] == hashlib.sha256(files[r['image_index']][1][1]).hexdigest()
    assert r['decision'] == 'flag' and r['alpha'] == pytest.approx(0.3)

  auth = {'Authorization': f'Bearer {TOKEN}'}
  listing = env.http.get(env.flag.url + '/review/api/flags', headers=auth, params={'limit': 1000}).json()
  ids = [f['id'] for f in listing['flags']]
  assert ids == sorted(ids, reverse=True) and listing['total'] == env.flag_store.count()
  newest = listing['flags'][0]
  assert newest['request_id'] == body['request_id'] and newest['image_index'] == want[-1]
  img = env.http.get(env.flag.url + f'/review/flags/{newest["id"]}/image', headers=auth)
  assert img.status_code == 200 and img.headers['content-type'] == 'image/png'
  assert 'attachment' in img.headers['content-disposition']
  assert img.content == files[want[-1]][1][1]
  thumb = env.http.get(env.flag.url + f'/review/flags/{newest["id"]}/thumbnail.png', headers=auth)
  assert np.array_equal(np.asarray(Image.open(io.BytesIO(thumb.content))), env.u8[idx[want[-1]]])
  page = env.http.get(env.flag.url + '/review', headers=auth)
  assert page.status_code == 200 and body['request_id'] in page.text
  assert "script-src" not in page.headers['content-security-policy']  # default-src 'none': no JS
  assert page.text.index(f'data-id="{ids[0]}"') < page.text.index(f'data-id="{ids[1]}"')


def test_block_policy_withholds_the_label_and_can_skip_images(env):
  idx = list(range(16, 24))
  r = classify_npy(env.http, env.block.url, env.pool[idx])
  assert r.status_code == 200, r.text
  body = r.json()
  assert body['policy'] == 'block'
  check_results(env, body, idx, policy='block')
  recs = env.block_store.by_request(body['request_id'])
  assert len(recs) == sum(env.flagged[i] for i in idx) > 0
  assert all(r['decision'] == 'block' for r in recs)
  full = env.block_store.get(env.block_store.list(1)[0]['id'], blobs=True)
  assert full['image'] is None and full['thumbnail'][:8] == b'\x89PNG\r\n\x1a\n'


def _multipart(*parts):
  return {'files': [('image', p) for p in parts]}


def _bad_cases(env):
  good = png_bytes(env.u8[0])
  big = png_bytes(np.zeros((64, 64, 3), np.uint8))
  gray = png_bytes(np.zeros((32, 32), np.uint8), 'L')
  rgba = png_bytes(np.zeros((32, 32, 4), np.uint8), 'RGBA')
  gif = io.BytesIO()
  Image.fromarray(env.u8[0]).save(gif, format='GIF')
  bomb = png_bytes(np.zeros((1100, 1100), np.uint8), 'L')
  nan = env.pool[:2].copy()
  nan[1, 3, 4, 0] = np.nan
  npz = io.BytesIO()
  np.savez(npz, a=env.pool[:1])
  pickled = io.BytesIO()
  np.save(pickled, np.array([{'x': 1}], dtype=object), allow_pickle=True)
  npy = {'application/x-npy'}
  return {
      'non-image bytes': (_multipart(('a.png', b'hello, not an image', 'image/png')), 422,
                          r"image 0 \('a.png'\) is not a PNG or JPEG"),
      'truncated png': (_multipart(('t.png', good[: len(good) // 2], 'image/png')), 422,
                        'image 0.*truncated or corrupt PNG'),
      'wrong size': (_multipart(('b.png', big, 'image/png')), 422, '64x64 pixels; the model takes 32x32'),
      'grayscale': (_multipart(('g.png', gray, 'image/png')), 422, 'mode L .*takes 3 channels'),
      'alpha channel': (_multipart(('r.png', rgba, 'image/png')), 422, 'mode RGBA'),
      'gif': (_multipart(('x.gif', gif.getvalue(), 'image/gif')), 422, 'not a PNG or JPEG'),
      'decompression bomb': (_multipart(('z.png', bomb, 'image/png')), 413, '1100x1100 pixels, over'),
      'empty file': (_multipart(('e.png', b'', 'image/png')), 422, 'image 0.*empty'),
      'mixed, bad third': (_multipart(*[('ok.png', good, 'image/png')] * 2,
                                      ('bad.png', good[:40], 'image/png'), ('ok.png', good, 'image/png')),
                           422, r"^image 2 \('bad.png'\)"),
      'too many files': (_multipart(*[('ok.png', good, 'image/png')] * 9), 413, 'at most 8'),
      'no image field': ({'files': [('other', ('a.png', good, 'image/png'))]}, 400, 'no image'),
      'nan array': ({'content': npy_bytes(nan), 'headers': {'content-type': 'application/x-npy'}},
                    422, r'^image 1: .*NaN'),
      'out of range': ({'content': npy_bytes(env.pool[:1] * 3), 'headers': {'content-type': 'application/x-npy'}},
                       422, r'image 0: .*\[0, 1\]'),
      'uint8 array': ({'content': npy_bytes(env.u8[:1]), 'headers': {'content-type': 'application/x-npy'}},
                      422, 'divide by 255'),
      'wrong channels': ({'content': npy_bytes(env.pool[:1, :, :, :1]),
                          'headers': {'content-type': 'application/x-npy'}}, 422, r'\(32, 32, 1\)'),
      'too many arrays': ({'content': npy_bytes(np.zeros((9, 32, 32, 3), np.float32)),
                           'headers': {'content-type': 'application/x-npy'}}, 413, 'holds 9 images; at most 8'),
      'npz': ({'content': npz.getvalue(), 'headers': {'content-type': 'application/x-npy'}}, 422, 'npz'),
      'pickle': ({'content': pickled.getvalue(), 'headers': {'content-type': 'application/x-npy'}},
                 422, 'pickle'),
      'empty npy body': ({'content': b'', 'headers': {'content-type': 'application/x-npy'}}, 400, 'empty'),
      'empty json list': ({'content': b'{"images": []}', 'headers': {'content-type': 'application/json'}},
                          400, 'no image'),
      'ragged json': ({'content': b'{"images": [[1, 2], [3]]}', 'headers': {'content-type': 'application/json'}},
                      422, 'rectangular'),
      'bad json': ({'content': b'{"images": [', 'headers': {'content-type': 'application/json'}}, 400,
                   'not valid JSON'),
      'unsupported type': ({'content': b'abc', 'headers': {'content-type': 'text/plain'}}, 415, "'text/plain'"),
      'oversized body': ({'content': b'\0' * (300 << 10), 'headers': {'content-type': 'application/x-npy'}},
                         413, 'at most 262144'),
      'oversized chunked': ({'content': iter([b'\x93NUMPY' + b'\0' * (100 << 10)] * 3),
                             'headers': {'content-type': 'application/x-npy'}}, 413, 'exceeds 262144'),
  }, npy


def test_bad_inputs_get_one_4xx_naming_the_problem_and_serving_goes_on(env):
  cases, _ = _bad_cases(env)
  before = env.flag_store.count()
  with httpx.Client(timeout=60) as client:
    for name, (kw, status, pattern) in cases.items():
      try:
        r = client.post(env.flag.url + '/v1/classify', **kw)
      except httpx.TransportError as e:  # the server may close after an early 413
        pytest.fail(f'{name}: no response ({e!r})')
      assert r.status_code == status, (name, r.status_code, r.text)
      assert re.search(pattern, r.json()['error']), (name, r.json()['error'])
  assert env.flag_store.count() == before
  ok = classify_npy(env.http, env.flag.url, env.pool[:3])
  assert ok.status_code == 200
  check_results(env, ok.json(), [0, 1, 2])


def test_operator_token_guards_review_and_store(env):
  url = env.flag.url
  guarded = ['/review/api/flags', '/review/api/flags/1', '/review/flags/1/image',
             '/review/flags/1/thumbnail.png']
  for path in guarded:
    assert env.http.get(url + path).status_code == 401, path
    assert env.http.get(url + path, headers={'Authorization': 'Bearer ' + TOKEN[:-1] + 'x'}).status_code == 401
    assert env.http.get(url + path, headers={'Authorization': TOKEN}).status_code == 401
  page = env.http.get(url + '/review')
  assert page.status_code == 401 and 'name="token"' in page.text and 'request_id' not in page.text
  # The sign-in form: a wrong token is refused, the right one sets a HttpOnly, SameSite cookie.
  with httpx.Client(base_url=url) as c:
    bad = c.post('/review/login', data={'token': 'wrong-token-wrong-token'})
    assert bad.status_code == 401 and SESSION_COOKIE not in c.cookies
    good = c.post('/review/login', data={'token': TOKEN})
    assert good.status_code == 303
    cookie = good.headers['set-cookie']
    assert 'HttpOnly' in cookie and 'SameSite=strict' in cookie.replace('Strict', 'strict')
    assert c.get('/review').status_code == 200
    assert c.get('/review/api/flags').status_code == 200
    value = c.cookies[SESSION_COOKIE]
  expiry, sig = value.split('.')
  forged = f'{int(expiry) + 1000}.{sig}'
  assert env.http.get(url + '/review', headers={'Cookie': f'{SESSION_COOKIE}={forged}'}).status_code == 401
  old = OperatorAuth(TOKEN, session_s=-10).new_session()
  assert env.http.get(url + '/review', headers={'Cookie': f'{SESSION_COOKIE}={old}'}).status_code == 401
  other = OperatorAuth('another-operator-token-123456').new_session()
  assert env.http.get(url + '/review', headers={'Cookie': f'{SESSION_COOKIE}={other}'}).status_code == 401
  # No token configured: the review and store endpoints are off.
  for path in ['/review'] + guarded:
    r = env.http.get(env.block.url + path, headers={'Authorization': f'Bearer {TOKEN}'})
    assert r.status_code == 404 and 'no operator token' in r.json()['error'], path
  # The public endpoints carry no stored data.
  shas = {r['image_sha256'] for r in env.flag_store.list(1000)}
  assert shas
  for path in ['/', '/healthz', '/metrics']:
    text = env.http.get(url + path).text
    assert not any(s in text for s in shas), path


def test_concurrent_clients_each_get_their_own_answers_without_recompiling(env):
  n_clients, per_client = 12, 5
  rng = random.Random(3)
  plans = [[rng.sample(range(len(env.pool)), rng.randint(1, 6)) for _ in range(per_client)]
           for _ in range(n_clients)]
  compiles0 = engine_lib.compile_count()
  batches0 = env.flag_fw.batcher.batches
  start = threading.Barrier(n_clients)

  def client(plan):
    out = []
    with httpx.Client(timeout=120) as c:
      start.wait()
      for idx in plan:
        r = c.post(env.flag.url + '/v1/classify', content=npy_bytes(env.pool[idx]),
                   headers={'content-type': 'application/x-npy'})
        out.append((idx, r.status_code, r.json()))
    return out

  with concurrent.futures.ThreadPoolExecutor(n_clients) as ex:
    answers = [a for f in [ex.submit(client, p) for p in plans] for a in f.result()]
  assert engine_lib.compile_count() == compiles0, 'a request triggered an XLA compile'
  ids = set()
  for idx, status, body in answers:
    assert status == 200, body
    check_results(env, body, idx)
    ids.add(body['request_id'])
    recs = env.flag_store.by_request(body['request_id'])
    assert [r['image_index'] for r in recs] == [j for j, i in enumerate(idx) if env.flagged[i]]
  assert len(ids) == len(answers)
  images = sum(len(i) for i, _, _ in answers)
  batches = env.flag_fw.batcher.batches - batches0
  assert batches < images, f'{batches} batches for {images} images: no request was batched'
  metrics = env.http.get(env.flag.url + '/metrics').text
  assert re.search(r'^scaleup_xla_compiles_since_ready 0$', metrics, re.M)
  assert env.http.get(env.flag.url + '/healthz').json()['compiles_since_ready'] == 0


def test_metrics_and_health(env):
  def counter(text, name):
    m = re.search(rf'^{re.escape(name)} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0

  m0 = env.http.get(env.flag.url + '/metrics').text
  r = classify_npy(env.http, env.flag.url, env.pool[:4])
  flagged = sum(x['flagged'] for x in r.json()['results'])
  classify_npy(env.http, env.flag.url, env.pool[:1] * 5)  # a 422
  m1 = env.http.get(env.flag.url + '/metrics')
  assert m1.headers['content-type'].startswith('text/plain; version=0.0.4')
  t0, t1 = m0, m1.text
  assert counter(t1, 'scaleup_requests_total{status="200"}') == counter(t0, 'scaleup_requests_total{status="200"}') + 1
  assert counter(t1, 'scaleup_requests_total{status="422"}') == counter(t0, 'scaleup_requests_total{status="422"}') + 1
  assert counter(t1, 'scaleup_images_total') == counter(t0, 'scaleup_images_total') + 4
  assert counter(t1, 'scaleup_flagged_total') == counter(t0, 'scaleup_flagged_total') + flagged
  assert counter(t1, 'scaleup_store_records') == env.flag_store.count()
  assert counter(t1, 'scaleup_request_latency_seconds_count') == counter(t0, 'scaleup_request_latency_seconds_count') + 2
  for b in (1, 4):
    assert f'scaleup_batches_total{{bucket="{b}"}}' in t1
  h = env.http.get(env.flag.url + '/healthz').json()
  assert h['status'] == 'ok' and h['buckets'] == [1, 4] and h['detection'] is True
  assert h['detector']['alpha'] == pytest.approx(0.3) and h['review'] is True


def test_store_retention_and_reopen(tmp_path):
  def rec(i, t=None):
    return FlagRecord(time.time() if t is None else t, f'r{i}', 0, f'{i:064x}', 1, 1.0, 1.0, 'spc',
                      0.8, 0.05, 'flag', 'm', b'png', b'img', 'image/png')

  s = FlagStore(tmp_path / 'f.sqlite', max_records=3)
  s.add_many([rec(i) for i in range(5)])
  s.add_many([rec(5)])
  assert [r['request_id'] for r in s.list()] == ['r5', 'r4', 'r3']
  s.close()
  s2 = FlagStore(tmp_path / 'f.sqlite', max_records=10, max_age_s=60)
  assert s2.count() == 3
  s2.add_many([rec(6, t=time.time() - 3600), rec(7)])
  assert [r['request_id'] for r in s2.list()] == ['r7', 'r5', 'r4', 'r3']
  mode = s2._read('PRAGMA journal_mode')[0][0]
  assert mode == 'wal'
  with pytest.raises(InputError, match='max_records'):
    FlagStore(tmp_path / 'g.sqlite', max_records=0)


def test_batcher_waits_at_most_max_wait_and_fills_batches():
  sizes = []

  def process(xs):
    sizes.append(len(xs))
    return [x * 2 if x != 13 else ValueError('thirteen') for x in xs]

  b = batcher_lib.DynamicBatcher(process, max_batch=4, max_wait_s=0.05, max_queue=10)
  try:
    t0 = time.monotonic()
    assert b.submit([1]).result(5) == [2]
    waited = time.monotonic() - t0
    assert 0.04 <= waited < 1.0, waited  # waited for company, not much longer
    sizes.clear()
    futs = [b.submit([i, i + 100]) for i in range(4)]  # 8 payloads, batches of 4
    assert [f.result(5) for f in futs] == [[2 * i, 2 * i + 200] for i in range(4)]
    assert sizes == [4, 4]
    bad = b.submit([1, 13])
    with pytest.raises(ValueError, match='thirteen'):
      bad.result(5)
    assert b.submit([3]).result(5) == [6]  # one failed request does not stop the worker
    with pytest.raises(batcher_lib.Busy):
      b.submit(list(range(11)))
  finally:
    b.close()


def test_calibration_is_required_and_must_match_the_model(env, tmp_path):
  cfg = ServeConfig(calibration=str(tmp_path / 'missing.json'), store=str(tmp_path / 's.sqlite'))
  with pytest.raises(InputError, match='--calibrate'):
    build_firewall(cfg, model=env.model, say=lambda s: None)
  other = testing.tiny_model(seed=1)
  cfg = ServeConfig(calibration=str(env.dir / 'cal.json'), store=str(tmp_path / 's.sqlite'))
  with pytest.raises(calibration.CalibrationMismatchError, match='calibrated on model'):
    build_firewall(cfg, model=other, say=lambda s: None)
  with pytest.raises(InputError, match='policy'):
    Firewall(env.engine, env.det, 'drop', env.flag_store)


def test_defender_images_are_those_eval_detect_calibrates_on():
  from scaleup_jax import evaluate
  from scaleup_jax.serve.app import defender_indices
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 300).astype(np.int32)
  images = np.zeros((300, 2, 2, 3), np.float32)
  for seed in (0, 3):
    ev = evaluate.build_eval_arrays(jax.random.key(seed), images, labels, 10, 0, lambda x: x,
                                    num_defense_per_class=7)
    assert np.array_equal(defender_indices(seed, labels, 10, 7), ev.defense_idx)
