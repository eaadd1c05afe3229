"""Throughput of SCALE-UP detection: JAX (compiled) against PyTorch references.

For every model and batch size, one process measures, interleaved:

============  =========  ==================================================
method        framework  what one call does
============  =========  ==================================================
jax_infer     jax        plain inference: ``argmax(apply(v, x))`` (the floor)
jax_vmap      jax        ``make_detector(..., method='vmap')``: 1 + S copies in one batch
jax_map       jax        ``make_detector(..., method='map')``: 1 + S batches via ``lax.map``
torch_infer   torch      plain inference with the converted model (the floor)
torch_loop    torch      official-style SCALE-UP: one forward per scale in Python
torch_batched torch      all 1 + S copies concatenated into one forward
============  =========  ==================================================

Each measurement runs a fixed number of calls (calibrated after warm-up so
that it lasts at least ``min_seconds``) and blocks only at its end; repeats
alternate the order of the methods so that drifting machine load hits all of
them alike. Throughput is reported as the median and spread (min, max,
quartiles) over repeats. JAX compile time (lowering + XLA compilation) is
reported separately and excluded from the throughput.

SCALE-UP makes ``1 + S`` forward passes per input, so for each framework the
*floor* is ``plain-inference images/s / (1 + S)``; ``detect / floor`` close to
1 means detection costs no more than its forward passes (it can exceed 1 when
the larger effective batch of ``vmap`` uses the hardware better).

Weights are random (``model.init``); the compute, hence the timing, does not
depend on their values. Results go to ``bench.json``, ``bench.md`` and
``bench.png`` in the output directory.

References:
  Guo et al. "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency". ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from scaleup_jax import models as models_lib
from scaleup_jax.scaleup import DEFAULT_SCALES, make_detector
from scaleup_jax.validation import InputError, check_scales
from scaleup_jax.xla_flags import CPU_FLAGS

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ('float32', 'bfloat16')
FRAMEWORKS = ('jax', 'torch')
METHODS = ('jax_infer', 'jax_vmap', 'jax_map', 'torch_infer', 'torch_loop', 'torch_batched')
QUICK = dict(models=('tiny',), batch_sizes=(1, 8), repeats=2, min_seconds=0.05)


@dataclasses.dataclass
class BenchOptions:
  """Settings of :func:`run_bench` (the flags of ``python -m eval.bench``).

  Attributes:
    models: preset names from :data:`scaleup_jax.models.MODELS`.
    batch_sizes: images per call.
    repeats: measurements per (model, batch size, method).
    min_seconds: minimum duration of one measurement.
    out: output directory for ``bench.json``, ``bench.md``, ``bench.png``.
    quick: tiny model, batches 1 and 8, 2 short repeats (overrides the above).
    dtype: ``'float32'`` or ``'bfloat16'`` (computation dtype of both models).
    xla_compare: also time JAX without the project's XLA flags (subprocess).
    frameworks: subset of ``('jax', 'torch')``.
    scales: SCALE-UP amplification factors.
    image_size, num_classes: input side (square, 3 channels) and logits.
    torch_device: ``'auto'`` (CUDA if available, else CPU), ``'cpu'`` or ``'cuda'``.
    seed: seed of the weights and images.
    progress: show a progress bar.
  """

  models: Sequence[str] = ('resnet20', 'resnet18')
  batch_sizes: Sequence[int] = (1, 32, 256)
  repeats: int = 5
  min_seconds: float = 1.0
  out: str = 'docs/results/bench'
  quick: bool = False
  dtype: str = 'float32'
  xla_compare: bool = False
  frameworks: Sequence[str] = FRAMEWORKS
  scales: Sequence[float] = DEFAULT_SCALES
  image_size: int = 32
  num_classes: int = 10
  torch_device: str = 'auto'
  seed: int = 0
  progress: bool = True

  def resolved(self) -> 'BenchOptions':
    """Validated copy with ``quick`` applied; raises InputError naming bad values."""
    opts = dataclasses.replace(self, **QUICK) if self.quick else dataclasses.replace(self)
    opts.models = tuple(opts.models)
    opts.batch_sizes = tuple(int(b) for b in opts.batch_sizes)
    opts.frameworks = tuple(opts.frameworks)
    opts.scales = tuple(float(s) for s in check_scales(opts.scales))
    bad = [m for m in opts.models if m not in models_lib.MODELS]
    if bad or not opts.models:
      raise InputError(f'unknown models {bad or list(opts.models)}; expected some of {sorted(models_lib.MODELS)}')
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
      raise InputError(f'batch sizes must be >= 1; got {list(opts.batch_sizes)}')
    if opts.repeats < 1:
      raise InputError(f'repeats must be >= 1; got {opts.repeats}')
    if not opts.min_seconds > 0:
      raise InputError(f'min_seconds must be > 0; got {opts.min_seconds}')
    if opts.dtype not in DTYPES:
      raise InputError(f'dtype must be one of {DTYPES}; got {opts.dtype!r}')
    bad = [f for f in opts.frameworks if f not in FRAMEWORKS]
    if bad or not opts.frameworks:
      raise InputError(f'unknown frameworks {bad or list(opts.frameworks)}; expected some of {FRAMEWORKS}')
    if opts.torch_device not in ('auto', 'cpu', 'cuda'):
      raise InputError(f"torch_device must be 'auto', 'cpu' or 'cuda'; got {opts.torch_device!r}")
    return opts


@dataclasses.dataclass
class Case:
  """One timed method: ``call()`` runs it once, ``sync(out)`` waits for it."""

  method: str
  framework: str
  kind: str  # 'infer' or 'detect'
  forwards: int  # forward passes per input image
  call: Callable[[], Any]
  sync: Callable[[Any], Any]
  compile_s: float | None = None
  calls: int = 1  # calls per measurement, set by calibrate()
  values: list = dataclasses.field(default_factory=list)  # images/s per repeat
  seconds: list = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------- environment


def num_threads() -> int:
  """CPU cores this process may use: what XLA's CPU thread pool sizes itself to."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_model() -> str:
  """CPU model name from /proc/cpuinfo (or platform.processor())."""
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.lower().startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _git_commit() -> str | None:
  try:
    r = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                       text=True, timeout=10)
    return r.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def environment(torch_mod=None, torch_device: str | None = None) -> dict:
  """Versions, hardware and flags that the numbers depend on."""
  import flax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  env = {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'git_commit': _git_commit(),
      'python': platform.python_version(),
      'platform': platform.platform(),
      'cpu_model': cpu_model(),
      'cpu_count': os.cpu_count(),
      'threads': num_threads(),
      'load_average_1_5_15': [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None,
      'jax_version': jax.__version__,
      'jaxlib_version': jaxlib.__version__,
      'flax_version': flax.__version__,
      'numpy_version': np.__version__,
      'jax_backend': jax.default_backend(),
      'jax_devices': [str(d) for d in jax.devices()],
      'jax_device_kind': jax.devices()[0].device_kind,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'project_xla_flags': list(CPU_FLAGS),
      'project_xla_flags_disabled': bool(os.environ.get('SCALEUP_JAX_NO_XLA_FLAGS')),
      'torch_version': None,
      'torch_threads': None,
      'torch_device': None,
  }
  if torch_mod is not None:
    env.update(torch_version=torch_mod.__version__, torch_threads=torch_mod.get_num_threads(),
               torch_device=torch_device)
  return env


# ---------------------------------------------------------------- timing


def _time_calls(case: Case, n: int) -> float:
  """Seconds for ``n`` back-to-back calls, blocking only after the last."""
  t0 = time.perf_counter()
  out = None
  for _ in range(n):
    out = case.call()
  case.sync(out)
  return time.perf_counter() - t0


def calibrate(case: Case, min_seconds: float, warmup: int = 2) -> None:
  """Warms ``case`` up and sets how many calls one measurement makes."""
  for _ in range(warmup):
    case.sync(case.call())
  one = _time_calls(case, 1)
  if one < min_seconds:  # cheap enough to time twice and keep the faster
    one = min(one, _time_calls(case, 1))
  case.calls = max(1, math.ceil(min_seconds / max(one, 1e-7)))


def measure(case: Case, batch: int) -> float:
  """One measurement: images/s over ``case.calls`` calls (appended to ``case.values``)."""
  dt = _time_calls(case, case.calls)
  case.seconds.append(dt)
  case.values.append(case.calls * batch / dt)
  return case.values[-1]


def spread(values: Sequence[float]) -> dict:
  """Median, min, max and quartiles of a list of throughputs."""
  v = np.asarray(values, np.float64)
  q25, med, q75 = np.percentile(v, [25, 50, 75])
  return {'median': float(med), 'min': float(v.min()), 'max': float(v.max()),
          'q25': float(q25), 'q75': float(q75), 'values': [float(x) for x in v]}


# ---------------------------------------------------------------- cases


def _jax_cases(model, variables, x, scales) -> list[Case]:
  """Compiled JAX plain inference and both detector methods on device batch ``x``."""
  apply_fn = functools.partial(model.apply, train=False)
  fns = {
      'jax_infer': (jax.jit(lambda v, im: jnp.argmax(apply_fn(v, im), axis=-1)), 'infer', 1),
      'jax_vmap': (make_detector(apply_fn, scales, 'vmap'), 'detect', 1 + len(scales)),
      'jax_map': (make_detector(apply_fn, scales, 'map'), 'detect', 1 + len(scales)),
  }
  cases = []
  for method, (fn, kind, forwards) in fns.items():
    t0 = time.perf_counter()
    compiled = fn.lower(variables, x).compile()
    compile_s = time.perf_counter() - t0
    cases.append(Case(method, 'jax', kind, forwards,
                      call=functools.partial(compiled, variables, x),
                      sync=jax.block_until_ready, compile_s=compile_s))
  return cases


def _torch_cases(torch, tp, net, x, scales, device) -> list[Case]:
  """PyTorch plain inference, official-style loop and batched SCALE-UP on tensor ``x``."""
  if device == 'cuda':
    sync = lambda out: torch.cuda.synchronize()  # noqa: E731
  else:
    sync = lambda out: out  # noqa: E731  CPU calls are synchronous
  return [
      Case('torch_infer', 'torch', 'infer', 1, functools.partial(tp.torch_predict, net, x), sync),
      Case('torch_loop', 'torch', 'detect', 1 + len(scales),
           functools.partial(tp.torch_scaleup_loop, net, x, scales), sync),
      Case('torch_batched', 'torch', 'detect', 1 + len(scales),
           functools.partial(tp.torch_scaleup_batched, net, x, scales), sync),
  ]


def _load_torch(opts: BenchOptions):
  """``(torch, torch_port, device, None)``, or ``(None, None, None, message)`` without torch.

  Also sets PyTorch's thread count to the cores JAX's CPU backend uses.
  """
  if 'torch' not in opts.frameworks:
    return None, None, None, None
  from scaleup_jax import torch_port  # pylint: disable=import-outside-toplevel
  try:
    torch = torch_port.require_torch()
  except ImportError as e:
    return None, None, None, str(e)
  device = opts.torch_device
  if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if device == 'cuda' and not torch.cuda.is_available():
    raise InputError('torch_device=cuda but torch.cuda.is_available() is False')
  torch.set_num_threads(num_threads())
  return torch, torch_port, device, None


def _agreement(cases: dict) -> dict:
  """Fraction of images on which each detector's (preds, spc) equal jax_vmap's."""
  ref = cases.get('jax_vmap')
  if ref is None:
    return {}
  want = [np.asarray(a) for a in ref.call()]
  out = {}
  for name, case in cases.items():
    if case.kind != 'detect' or name == 'jax_vmap':
      continue
    got = case.call()
    got = [np.asarray(a.float().cpu() if hasattr(a, 'cpu') else a) for a in got]
    out[name] = {'preds_equal': float(np.mean(got[0] == want[0])),
                 'spc_equal': float(np.mean(np.isclose(got[1], want[1], atol=1e-6)))}
  return out


# ---------------------------------------------------------------- driver


def run_bench(opts: BenchOptions) -> dict:
  """Runs the benchmark and writes ``bench.json``, ``bench.md``, ``bench.png`` to ``opts.out``.

  Args:
    opts: a :class:`BenchOptions`.

  Returns:
    The JSON-able result: ``config``, ``environment``, ``results`` (one
    record per model, batch size and method), ``checks`` (agreement of every
    detector with ``jax_vmap``), ``notes`` and, with ``xla_compare``,
    ``xla_compare``.

  Example:
    >>> res = run_bench(BenchOptions(quick=True, out='/tmp/bench'))
    >>> res['results'][0]['images_per_s']['median']
  """
  opts = opts.resolved()
  torch, tp, device, torch_missing = _load_torch(opts)
  notes = ['Weights are random (model.init); timing does not depend on their values.']
  if torch_missing:
    notes.append(f'PyTorch side skipped: {torch_missing}')
    print(f'note: {torch_missing}; benchmarking the JAX side only.', file=sys.stderr)
  frameworks = [f for f in opts.frameworks if f != 'torch' or torch is not None]
  methods = [m for m in METHODS if m.split('_')[0] in frameworks]
  jdtype = jnp.bfloat16 if opts.dtype == 'bfloat16' else jnp.float32
  env = environment(torch, device)
  shape = (opts.image_size, opts.image_size, 3)
  total = len(opts.models) * len(opts.batch_sizes) * opts.repeats * len(methods)
  results, checks = [], []
  bar = tqdm(total=total, desc='bench', unit='meas', disable=not opts.progress)
  for model_name in opts.models:
    model = models_lib.get_model(model_name, opts.num_classes, dtype=jdtype)
    variables = model.init(jax.random.key(opts.seed), jnp.zeros((1, *shape)))
    net = None
    if torch is not None:
      net = tp.flax_to_torch(model, variables, dtype=torch.bfloat16 if opts.dtype == 'bfloat16' else None)
      net = net.to(device)
    for batch in opts.batch_sizes:
      bar.set_postfix_str(f'{model_name} b={batch} compiling')
      rng = np.random.default_rng(opts.seed + batch)
      x = rng.uniform(0.0, 1.0, (batch, *shape)).astype(np.float32)
      cases = []
      if 'jax' in frameworks:
        cases += _jax_cases(model, variables, jax.device_put(x), opts.scales)
      if torch is not None:
        cases += _torch_cases(torch, tp, net, torch.from_numpy(x).to(device), opts.scales, device)
      for case in cases:
        calibrate(case, opts.min_seconds)
      by_name = {c.method: c for c in cases}
      checks.append({'model': model_name, 'batch_size': batch, 'agreement_with_jax_vmap': _agreement(by_name)})
      for r in range(opts.repeats):
        for case in (cases if r % 2 == 0 else cases[::-1]):
          bar.set_postfix_str(f'{model_name} b={batch} {case.method}')
          measure(case, batch)
          bar.update(1)
      results += _records(model_name, batch, by_name)
  bar.close()
  env['load_average_at_end'] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None
  config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()}
  config['forwards_per_input'] = 1 + len(opts.scales)
  config['weights'] = 'random init (model.init with seed)'
  result = {'config': config, 'environment': env, 'results': results, 'checks': checks,
            'notes': notes, 'torch_missing': torch_missing}
  if opts.xla_compare and 'jax' in frameworks:
    result['xla_compare'] = xla_compare(opts, results)
  write_outputs(result, opts.out)
  return result


def _records(model_name: str, batch: int, cases: dict) -> list[dict]:
  """Summary rows for one (model, batch size), with detect/floor ratios."""
  rows = []
  for name, c in cases.items():
    s = spread(c.values)
    row = {'model': model_name, 'batch_size': batch, 'method': name, 'framework': c.framework,
           'kind': c.kind, 'forwards_per_input': c.forwards, 'images_per_s': s,
           'calls_per_measurement': c.calls,
           'seconds_per_measurement_median': float(np.median(c.seconds)),
           'compile_s': c.compile_s, 'floor_images_per_s': None, 'detect_over_floor': None}
    infer = cases.get(f'{c.framework}_infer')
    if c.kind == 'detect' and infer is not None:
      floor = float(np.median(infer.values)) / c.forwards
      row['floor_images_per_s'] = floor
      row['detect_over_floor'] = s['median'] / floor
    rows.append(row)
  return rows


# ---------------------------------------------------------------- XLA flags


def _strip_project_flags(flags: str) -> str:
  names = {f.split('=')[0] for f in CPU_FLAGS}
  return ' '.join(f for f in flags.split() if f.split('=')[0] not in names)


def xla_compare(opts: BenchOptions, results: list[dict]) -> dict:
  """Re-times the JAX methods in a subprocess without the project's XLA flags.

  Returns:
    ``{'xla_flags_with', 'xla_flags_without', 'rows'}``; each row gives the
    median images/s with and without the flags and ``speedup`` (with/without).
  """
  flags_with = os.environ.get('XLA_FLAGS', '')
  env = dict(os.environ, SCALEUP_JAX_NO_XLA_FLAGS='1', XLA_FLAGS=_strip_project_flags(flags_with))
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, '-m', 'eval.bench', '--frameworks=jax', '--noxla_compare',
           '--noprogress', f'--out={tmp}', f'--models={",".join(opts.models)}',
           f'--batch_sizes={",".join(map(str, opts.batch_sizes))}', f'--repeats={opts.repeats}',
           f'--min_seconds={opts.min_seconds}', f'--dtype={opts.dtype}',
           f'--scales={",".join(map(str, opts.scales))}', f'--image_size={opts.image_size}',
           f'--num_classes={opts.num_classes}', f'--seed={opts.seed}']
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
      raise RuntimeError(f'--xla_compare subprocess failed (exit {r.returncode}):\n{r.stderr[-3000:]}')
    child = json.loads((Path(tmp) / 'bench.json').read_text())
  without = {(x['model'], x['batch_size'], x['method']): x for x in child['results']}
  rows = []
  for x in results:
    other = without.get((x['model'], x['batch_size'], x['method']))
    if x['framework'] != 'jax' or other is None:
      continue
    a, b = x['images_per_s']['median'], other['images_per_s']['median']
    rows.append({'model': x['model'], 'batch_size': x['batch_size'], 'method': x['method'],
                 'with_flags': a, 'without_flags': b, 'speedup': a / b,
                 'compile_s_with': x['compile_s'], 'compile_s_without': other['compile_s']})
  return {'xla_flags_with': flags_with, 'xla_flags_without': child['environment']['xla_flags'],
          'note': 'the run without flags is a separate process after this one, not interleaved',
          'rows': rows}


# ---------------------------------------------------------------- outputs


def _fmt(x: float | None, digits: int = 3) -> str:
  if x is None:
    return '-'
  return f'{x:.{digits}g}' if abs(x) < 10**digits else f'{x:.0f}'


def to_markdown(result: dict) -> str:
  """A markdown report: environment, one table per model, XLA-flag comparison."""
  env, cfg = result['environment'], result['config']
  if env['torch_version']:
    torch_desc = (f"PyTorch {env['torch_version']} on {env['torch_device']} with "
                  f"{env['torch_threads']} threads")
  else:
    torch_desc = 'PyTorch not installed' if result.get('torch_missing') else 'PyTorch not timed'
  lines = ['# SCALE-UP detection throughput', '',
           f"{env['date_utc']}, commit {env['git_commit']}. CPU: {env['cpu_model']} "
           f"({env['threads']} usable of {env['cpu_count']} cores); JAX {env['jax_version']} "
           f"on {env['jax_backend']} ({env['jax_device_kind']}); {torch_desc}. "
           f"XLA_FLAGS=`{env['xla_flags'] or '(none)'}`. Load average at start/end: "
           f"{env['load_average_1_5_15']} / {env.get('load_average_at_end')}.", '',
           f"dtype {cfg['dtype']}, scales {cfg['scales']} ({cfg['forwards_per_input']} forwards per "
           f"input), {cfg['repeats']} repeats of >= {cfg['min_seconds']} s each after warm-up, "
           'methods interleaved in alternating order. images/s: median [min, max]. '
           'floor = plain-inference images/s / forwards per input; x floor = detect / floor. '
           'compile = JAX lowering + compilation (s), excluded from throughput.', '']
  lines += [f'*{n}*' for n in result['notes']] + ['']
  for model in cfg['models']:
    lines += [f'## {model}', '', '| batch | method | images/s | [min, max] | x floor | compile s |',
              '|---:|---|---:|---:|---:|---:|']
    for r in result['results']:
      if r['model'] != model:
        continue
      s = r['images_per_s']
      lines.append(f"| {r['batch_size']} | {r['method']} | {_fmt(s['median'])} | "
                   f"[{_fmt(s['min'])}, {_fmt(s['max'])}] | {_fmt(r['detect_over_floor'], 2)} | "
                   f"{_fmt(r['compile_s'], 2)} |")
    lines.append('')
  xc = result.get('xla_compare')
  if xc:
    lines += ['## Project XLA flags', '',
              f"With `{xc['xla_flags_with'] or '(none)'}` (this process) against "
              f"`{xc['xla_flags_without'] or '(none)'}` (a subprocess run afterwards).", '',
              '| model | batch | method | with flags | without | speedup | compile s with / without |',
              '|---|---:|---|---:|---:|---:|---:|']
    for r in xc['rows']:
      lines.append(f"| {r['model']} | {r['batch_size']} | {r['method']} | {_fmt(r['with_flags'])} | "
                   f"{_fmt(r['without_flags'])} | {_fmt(r['speedup'], 2)} | "
                   f"{_fmt(r['compile_s_with'], 2)} / {_fmt(r['compile_s_without'], 2)} |")
    lines.append('')
  checks = [f"{c['model']} b={c['batch_size']} {m}: preds {a['preds_equal']:.3f}, spc {a['spc_equal']:.3f}"
            for c in result['checks'] for m, a in c['agreement_with_jax_vmap'].items()]
  if checks:
    lines += ['## Agreement with jax_vmap (fraction of images)', ''] + [f'- {c}' for c in checks] + ['']
  return '\n'.join(lines)


def plot(result: dict, path: Path) -> None:
  """images/s against batch size, one panel per model, one line per method (log axes)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  model_names = result['config']['models']
  fig, axes = plt.subplots(1, len(model_names), figsize=(5.5 * len(model_names), 4.2), squeeze=False)
  colors = {'jax_infer': 'tab:blue', 'jax_vmap': 'tab:cyan', 'jax_map': 'tab:green',
            'torch_infer': 'tab:red', 'torch_loop': 'tab:orange', 'torch_batched': 'tab:purple'}
  for ax, model in zip(axes[0], model_names):
    rows = [r for r in result['results'] if r['model'] == model]
    batches = sorted({r['batch_size'] for r in rows})
    for method in METHODS:
      mr = sorted((r for r in rows if r['method'] == method), key=lambda r: r['batch_size'])
      if not mr:
        continue
      b = [r['batch_size'] for r in mr]
      med = np.array([r['images_per_s']['median'] for r in mr])
      lo = med - np.array([r['images_per_s']['min'] for r in mr])
      hi = np.array([r['images_per_s']['max'] for r in mr]) - med
      infer = method.endswith('infer')
      ax.errorbar(b, med, yerr=[lo, hi], fmt=('--' if infer else '-') + 'o', capsize=3, ms=4,
                  color=colors[method], label=method)
      if infer:  # the detection floor: plain inference / forwards per input
        ax.plot(b, med / result['config']['forwards_per_input'], ':', color=colors[method],
                label=f"{method.split('_')[0]} floor")
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel('batch size')
    ax.set_ylabel('images/s (median, min-max)')
    ax.set_title(f"{model} ({result['config']['dtype']})")
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"SCALE-UP throughput, {result['environment']['cpu_model']}, "
               f"{result['environment']['jax_backend']}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(result: dict, out: str | os.PathLike) -> Path:
  """Writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'bench.json').write_text(json.dumps(result, indent=2) + '\n')
  (out / 'bench.md').write_text(to_markdown(result))
  plot(result, out / 'bench.png')
  return out
