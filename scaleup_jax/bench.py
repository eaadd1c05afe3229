"""Throughput of SCALE-UP detection: JAX (compiled) against PyTorch references.

Four sections, each measured in one process with interleaved repeats (every
repeat runs all methods of a section, in alternating order, so that drifting
machine load hits all of them alike):

``throughput``: for every model and batch size,

=============  =========  ==================================================
method         framework  what one call does
=============  =========  ==================================================
jax_infer      jax        plain inference: ``argmax(apply(v, x))`` (the floor)
jax_vmap       jax        ``make_detector(..., method='vmap')``: 1 + S copies in one batch
jax_map        jax        ``make_detector(..., method='map')``: 1 + S batches via ``lax.map``
jax_chunked    jax        :func:`make_chunked_detector`: ``lax.map`` over scales and
                          sub-batches of ``chunk`` images
torch_infer    torch      plain inference with the converted model (the floor)
torch_loop     torch      official-style SCALE-UP: one forward per scale in Python
torch_batched  torch      all 1 + S copies concatenated into one forward
torch_compile  torch      the official-style loop over ``torch.compile(net)``
torch_bf16     torch      the official-style loop under bfloat16 autocast
=============  =========  ==================================================

(``torch_compile`` and ``torch_bf16`` run where ``extra_at`` says, default
ResNet-20 at batch 256, and are skipped with a note where unavailable.)

``fig6``: time per image of every detector of :mod:`scaleup_jax.detectors`,
the sequential screen and plain inference on one model (the zoo BadNets
ResNet-20 by default) at batch 1 and 256: the analog of the paper's Fig. 6.

``screen``: :class:`scaleup_jax.screen.SequentialScreen` against full SPC on
real zoo test images (benign, poisoned, and a 90/10 mix), at a threshold
calibrated on other benign test images: forwards per image, images/s and
whether the decisions are identical.

``train``: training images/s of one SGD step (forward, backward, update) in
JAX (:func:`scaleup_jax.train.train_step`) and PyTorch (the converted model,
``torch.optim.SGD`` with the same momentum, Nesterov and weight decay).

Each measurement runs a fixed number of calls (calibrated after warm-up so
that it lasts at least ``min_seconds``) and blocks only at its end. JAX
compile time (lowering + XLA compilation) and ``torch.compile`` time are
reported separately and excluded from the throughput.

SCALE-UP makes ``1 + S`` forward passes per input, so for each framework the
*floor* is ``plain-inference images/s / (1 + S)``; ``detect / floor`` close to
1 means detection costs no more than its forward passes.

Weights are random (``model.init``) in ``throughput`` and ``train``; the
compute, hence the timing, does not depend on their values. Results go to
``bench.json``, ``bench.md``, ``bench.png`` and ``fig6.png`` in the output
directory.

References:
  Guo et al. "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
  via Analyzing Scaled Prediction Consistency". ICLR 2023, Fig. 6.
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

from scaleup_jax import integrity
from scaleup_jax import models as models_lib
from scaleup_jax import scaleup
from scaleup_jax.scaleup import DEFAULT_SCALES, make_detector
from scaleup_jax.validation import InputError, check_scales
from scaleup_jax.xla_flags import CPU_FLAGS

DTYPES = ('float32', 'bfloat16')
FRAMEWORKS = ('jax', 'torch')
METHODS = ('jax_infer', 'jax_vmap', 'jax_map', 'jax_chunked', 'torch_infer', 'torch_loop',
           'torch_batched', 'torch_compile', 'torch_bf16')
TORCH_EXTRAS = ('compile', 'bf16')
SECTIONS = ('throughput', 'fig6', 'screen', 'train')
DEFAULT_CHUNK = 32
# Frequency's detector trains for this many steps in the fig6 section: its
# inference cost does not depend on how well it was trained.
FIG6_OPTIONS = {'frequency': {'steps': 20}}
# Quick: every section on the tiny model (train: see below), bounded for the test suite
# (torch.compile's first call alone takes tens of seconds; its path runs in the full benchmark).
QUICK = dict(models=('tiny',), batch_sizes=(1, 8), repeats=2, min_seconds=0.05,
             torch_extras=('bf16',), extra_at=('tiny:8',), fig6_batches=(8,),
             fig6_detectors=('shrinkpad',),
             screen_images=48, screen_calibration=64, screen_batch=16, train_models=('resnet20',),
             train_batch=8, zoo_model='')
# The train section of --quick uses ResNet-20, not the tiny model: PyTorch 2.13's CPU build hangs
# in oneDNN's 1x1 convolution weight gradient of the tiny model (4 channels, stride 2), measured
# on the AVX2 development CPU; ResNet-20's step and the tiny model without oneDNN are fine.


@dataclasses.dataclass
class BenchOptions:
  """Settings of :func:`run_bench` (the flags of ``python -m eval.bench``).

  Attributes:
    models: preset names from :data:`scaleup_jax.models.MODELS` (throughput).
    batch_sizes: images per call (throughput).
    repeats: measurements per method (every section).
    min_seconds: minimum duration of one measurement.
    out: output directory for ``bench.json``, ``bench.md``, ``bench.png``, ``fig6.png``.
    quick: tiny model (ResNet-20 in train), small batches, short repeats,
      synthetic screen (overrides the above).
    dtype: ``'float32'`` or ``'bfloat16'`` (computation dtype of both models).
    xla_compare: also time JAX without the project's XLA flags (subprocess).
    frameworks: subset of ``('jax', 'torch')``.
    scales: SCALE-UP amplification factors.
    image_size, num_classes: input side (square, 3 channels) and logits.
    torch_device: ``'auto'`` (CUDA if available, else CPU), ``'cpu'`` or ``'cuda'``.
    seed: seed of the weights, images and detector keys.
    progress: show a progress bar.
    chunk: sub-batch size of ``jax_chunked``.
    torch_extras: optional PyTorch configurations, subset of ``('compile', 'bf16')``.
    extra_at: ``'model:batch'`` entries where ``torch_extras`` run (``'all'``: everywhere).
    sections: subset of :data:`SECTIONS`.
    fig6_batches: batch sizes of the fig6 section.
    fig6_detectors: registry names (None: all of :data:`scaleup_jax.detectors.NAMES`).
    zoo_model: zoo model of the fig6 and screen sections: a name in the zoo
      (:func:`scaleup_jax.paths.zoo_model`) or a run directory; ``''`` uses a
      random-weight model and random images (screen and fig6 then only
      exercise the code).
    zoo: zoo directory (None: :mod:`scaleup_jax.paths`' search).
    data_dir: TFDS data directory of CIFAR-10 (None: tfds' default / ``$TFDS_DATA_DIR``).
    screen_images: benign and poisoned evaluation images of the screen section (each).
    screen_calibration: benign calibration images of its threshold.
    screen_alpha: false-positive budget of that threshold (conformal rule).
    screen_batch: batch size of the screen section.
    train_models: presets of the train section.
    train_batch: training batch size.
    repo: directory whose git commit is recorded (None: the working directory);
      no git is fine.
    skip: ``'model:batch:method'`` entries of the throughput section not to
      run (e.g. ``'resnet18:256:torch_batched'``, to bound the run time).
    fig6_repeats: measurements per detector in fig6 (None: ``repeats``).
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
  chunk: int = DEFAULT_CHUNK
  torch_extras: Sequence[str] = TORCH_EXTRAS
  extra_at: Sequence[str] = ('resnet20:256',)
  sections: Sequence[str] = SECTIONS
  fig6_batches: Sequence[int] = (1, 256)
  fig6_detectors: Sequence[str] | None = None
  zoo_model: str = 'cifar10_badnets_resnet20'
  zoo: str | None = None
  data_dir: str | None = None
  screen_images: int = 1024
  screen_calibration: int = 1000
  screen_alpha: float = 0.05
  screen_batch: int = 256
  train_models: Sequence[str] = ('resnet20',)
  train_batch: int = 128
  repo: str | None = None
  skip: Sequence[str] = ()
  fig6_repeats: int | None = None

  def resolved(self) -> 'BenchOptions':
    """Validated copy with ``quick`` applied; raises InputError naming bad values."""
    opts = dataclasses.replace(self, **QUICK) if self.quick else dataclasses.replace(self)
    opts.models = tuple(opts.models)
    opts.batch_sizes = tuple(int(b) for b in opts.batch_sizes)
    opts.fig6_batches = tuple(int(b) for b in opts.fig6_batches)
    opts.frameworks = tuple(opts.frameworks)
    opts.sections = tuple(opts.sections)
    opts.torch_extras = tuple(opts.torch_extras)
    opts.extra_at = tuple(opts.extra_at)
    opts.train_models = tuple(opts.train_models)
    opts.skip = tuple(opts.skip)
    for e in opts.skip:
      if e.count(':') != 2 or not e.split(':')[1].isdigit() or e.split(':')[2] not in METHODS:
        raise InputError(f"skip entries are 'model:batch:method' with a method of {METHODS}; got {e!r}")
    if opts.fig6_repeats is not None and opts.fig6_repeats < 1:
      raise InputError(f'fig6_repeats must be >= 1; got {opts.fig6_repeats}')
    if opts.fig6_detectors is not None:
      opts.fig6_detectors = tuple(opts.fig6_detectors)
    opts.scales = tuple(float(s) for s in check_scales(opts.scales))
    bad = [m for m in opts.models + opts.train_models if m not in models_lib.MODELS]
    if bad or not opts.models:
      raise InputError(f'unknown models {bad or list(opts.models)}; expected some of {sorted(models_lib.MODELS)}')
    for name, sizes in (('batch sizes', opts.batch_sizes), ('fig6 batch sizes', opts.fig6_batches)):
      if not sizes or min(sizes) < 1:
        raise InputError(f'{name} must be >= 1; got {list(sizes)}')
    if opts.repeats < 1:
      raise InputError(f'repeats must be >= 1; got {opts.repeats}')
    if not opts.min_seconds > 0:
      raise InputError(f'min_seconds must be > 0; got {opts.min_seconds}')
    if opts.dtype not in DTYPES:
      raise InputError(f'dtype must be one of {DTYPES}; got {opts.dtype!r}')
    bad = [f for f in opts.frameworks if f not in FRAMEWORKS]
    if bad or not opts.frameworks:
      raise InputError(f'unknown frameworks {bad or list(opts.frameworks)}; expected some of {FRAMEWORKS}')
    bad = [s for s in opts.sections if s not in SECTIONS]
    if bad or not opts.sections:
      raise InputError(f'unknown sections {bad or list(opts.sections)}; expected some of {SECTIONS}')
    bad = [e for e in opts.torch_extras if e not in TORCH_EXTRAS]
    if bad:
      raise InputError(f'unknown torch extras {bad}; expected some of {TORCH_EXTRAS}')
    for e in opts.extra_at:
      if e != 'all' and (e.count(':') != 1 or not e.split(':')[1].isdigit()):
        raise InputError(f"extra_at entries are 'model:batch' or 'all'; got {e!r}")
    if opts.torch_device not in ('auto', 'cpu', 'cuda'):
      raise InputError(f"torch_device must be 'auto', 'cpu' or 'cuda'; got {opts.torch_device!r}")
    for name in ('chunk', 'screen_images', 'screen_calibration', 'screen_batch', 'train_batch'):
      if int(getattr(opts, name)) < 1:
        raise InputError(f'{name} must be >= 1; got {getattr(opts, name)}')
    if not 0.0 < opts.screen_alpha < 1.0:
      raise InputError(f'screen_alpha must lie in (0, 1); got {opts.screen_alpha}')
    return opts

  def to_json(self) -> dict:
    """The options as JSON-able values (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, d: dict) -> 'BenchOptions':
    """Inverse of :meth:`to_json`; unknown keys raise InputError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise InputError(f'unknown bench options {unknown}')
    return cls(**d)


@dataclasses.dataclass
class Case:
  """One timed method: ``call()`` runs it once, ``sync(out)`` waits for it."""

  method: str
  framework: str
  kind: str  # 'infer', 'detect' or 'train'
  forwards: int  # forward passes per input image
  call: Callable[[], Any]
  sync: Callable[[Any], Any]
  compile_s: float | None = None
  calls: int = 1  # calls per measurement, set by calibrate()
  values: list = dataclasses.field(default_factory=list)  # images/s per repeat
  seconds: list = dataclasses.field(default_factory=list)
  first_out: Any = None  # output of the warm-up call (the agreement check reads it)
  first_s: float | None = None  # its duration


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


SIMD_FLAGS = ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_bf16',
              'amx_tile')


def cpu_features() -> dict:
  """SIMD flags that matter for the kernels (from /proc/cpuinfo) and cache sizes (sysfs)."""
  out = {'simd': None, 'caches': None}
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.lower().startswith('flags'):
        have = set(line.split(':', 1)[1].split())
        out['simd'] = [f for f in SIMD_FLAGS if f in have]
        break
  except OSError:
    pass
  caches = {}
  for d in sorted(Path('/sys/devices/system/cpu/cpu0/cache').glob('index*')):
    try:
      level, kind = (d / 'level').read_text().strip(), (d / 'type').read_text().strip()
      caches[f'L{level}{"d" if kind == "Data" else "i" if kind == "Instruction" else ""}'] = \
          (d / 'size').read_text().strip()
    except OSError:
      continue
  out['caches'] = caches or None
  return out


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
  """Short commit hash of ``repo`` (default: the working directory), None without git."""
  try:
    r = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=repo or os.getcwd(),
                       capture_output=True, text=True, timeout=10)
    return (r.stdout.strip() or None) if r.returncode == 0 else None
  except (OSError, subprocess.SubprocessError):
    return None


def _load_average():
  return [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None


def environment(torch_mod=None, torch_device: str | None = None, repo=None) -> dict:
  """Versions, hardware and flags that the numbers depend on."""
  import flax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  env = {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'git_commit': git_commit(repo),
      'python': platform.python_version(),
      'platform': platform.platform(),
      'cpu_model': cpu_model(),
      **{f'cpu_{k}': v for k, v in cpu_features().items()},
      'cpu_count': os.cpu_count(),
      'threads': num_threads(),
      'load_average_1_5_15': _load_average(),
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
  dt = time.perf_counter() - t0
  if case.first_out is None:
    case.first_out, case.first_s = out, dt
  return dt


def calibrate(case: Case, min_seconds: float, batch: int | None = None,
              reuse_warmup: bool = False) -> None:
  """Warms ``case`` up and sets how many calls one measurement makes.

  The warm-up call is timed (JAX methods are compiled ahead of time,
  ``torch.compile`` has compiled on its first call); when it alone lasts
  ``min_seconds`` a measurement is one call and nothing more is run here.
  Otherwise one more call is timed (twice if shorter than half of
  ``min_seconds``, keeping the faster) to set the number of calls.

  Args:
    case: the method.
    min_seconds: minimum duration of one measurement.
    batch: images per call; with ``reuse_warmup``, needed to record it.
    reuse_warmup: record a warm-up of at least ``min_seconds`` as the first
      measurement (only for ahead-of-time compiled calls, whose first call
      does no compilation; the fig6 section uses it for its slowest
      detectors).
  """
  first = _time_calls(case, 1)
  if first >= min_seconds:
    case.calls = 1
    if reuse_warmup and batch is not None:
      case.seconds.append(first)
      case.values.append(batch / first)
    return
  one = _time_calls(case, 1)
  if one < min_seconds / 2:
    one = min(one, _time_calls(case, 1))
  case.calls = max(1, math.ceil(min_seconds / max(one, 1e-7)))


def measure(case: Case, batch: int) -> float:
  """One measurement: images/s over ``case.calls`` calls (appended to ``case.values``)."""
  dt = _time_calls(case, case.calls)
  case.seconds.append(dt)
  case.values.append(case.calls * batch / dt)
  return case.values[-1]


def run_interleaved(cases: Sequence[Case], batch: int, repeats: int, min_seconds: float,
                    bar=None, label: str = '', reuse_warmup: bool = False,
                    after_warmup: Callable | None = None) -> None:
  """Calibrates every case, then ``repeats`` rounds over all of them in alternating order.

  ``after_warmup()`` runs between the two (the agreement check reads the
  warm-up outputs). With ``reuse_warmup`` a case whose warm-up already gave
  a measurement gets ``repeats - 1`` more (see :func:`calibrate`).
  """
  for case in cases:
    if bar is not None:
      bar.set_postfix_str(f'{label} {case.method} warm-up')
    calibrate(case, min_seconds, batch, reuse_warmup and case.compile_s is not None)
  if after_warmup is not None:
    after_warmup()
  for r in range(repeats):
    for case in (cases if r % 2 == 0 else cases[::-1]):
      if bar is not None:
        bar.set_postfix_str(f'{label} {case.method}')
      if len(case.values) < repeats:
        measure(case, batch)
      if bar is not None:
        bar.update(1)


def spread(values: Sequence[float]) -> dict:
  """Median, min, max and quartiles of a list of throughputs."""
  v = np.asarray(values, np.float64)
  q25, med, q75 = np.percentile(v, [25, 50, 75])
  return {'median': float(med), 'min': float(v.min()), 'max': float(v.max()),
          'q25': float(q25), 'q75': float(q75), 'values': [float(x) for x in v]}


# ---------------------------------------------------------------- detectors


def make_chunked_detector(apply_fn: Callable, scales: Sequence[float] = DEFAULT_SCALES,
                          chunk: int = DEFAULT_CHUNK) -> Callable:
  """``make_detector(apply_fn, scales, 'map', chunk=chunk)``: the ``jax_chunked`` method.

  ``lax.map`` over the scales and over sub-batches of ``chunk`` images (a
  batch that ``chunk`` does not divide is zero-padded, the padding dropped);
  the same ``(preds, spc)`` as ``method='map'``. Keeping each forward's
  activations small enough for the caches is what makes it faster than
  ``'map'`` on CPUs for small networks at large batches (docs/performance.md).

  Args:
    apply_fn: ``(variables, images (B, H, W, C)) -> logits (B, K)``.
    scales: amplification factors, each >= 1.
    chunk: images per forward pass.

  Returns:
    Jitted ``detect(variables, images) -> (preds int32 (B,), spc float32 (B,))``.

  Example:
    >>> detect = make_chunked_detector(partial(model.apply, train=False), chunk=32)
    >>> preds, spc = detect(variables, images)       # images: (256, 32, 32, 3)
  """
  return make_detector(apply_fn, scales, 'map', chunk=chunk)


def _aot(fn, *args):
  """``(compiled, seconds)``: lowering + XLA compilation of ``fn`` at ``args``."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _jax_cases(model, variables, x, scales, chunk) -> list[Case]:
  """Compiled JAX plain inference and the detector methods on device batch ``x``."""
  apply_fn = functools.partial(model.apply, train=False)
  fns = {
      'jax_infer': (jax.jit(functools.partial(scaleup.predict_labels, apply_fn)), 'infer', 1),
      'jax_vmap': (make_detector(apply_fn, scales, 'vmap'), 'detect', 1 + len(scales)),
      'jax_map': (make_detector(apply_fn, scales, 'map'), 'detect', 1 + len(scales)),
      'jax_chunked': (make_chunked_detector(apply_fn, scales, chunk), 'detect', 1 + len(scales)),
  }
  cases = []
  for method, (fn, kind, forwards) in fns.items():
    compiled, compile_s = _aot(fn, variables, x)
    cases.append(Case(method, 'jax', kind, forwards,
                      call=functools.partial(compiled, variables, x),
                      sync=jax.block_until_ready, compile_s=compile_s))
  return cases


def _torch_sync(torch, device):
  if device == 'cuda':
    return lambda out: torch.cuda.synchronize()
  return lambda out: out  # CPU calls are synchronous


def _torch_cases(torch, tp, net, x, scales, device) -> list[Case]:
  """PyTorch plain inference, official-style loop and batched SCALE-UP on tensor ``x``."""
  sync = _torch_sync(torch, device)
  return [
      Case('torch_infer', 'torch', 'infer', 1, functools.partial(tp.torch_predict, net, x), sync),
      Case('torch_loop', 'torch', 'detect', 1 + len(scales),
           functools.partial(tp.torch_scaleup_loop, net, x, scales), sync),
      Case('torch_batched', 'torch', 'detect', 1 + len(scales),
           functools.partial(tp.torch_scaleup_batched, net, x, scales), sync),
  ]


def _torch_extra_cases(torch, tp, net, x, scales, device, extras, compiled_nets: dict
                       ) -> tuple[list[Case], list[str]]:
  """``torch.compile`` and bfloat16-autocast loops; unavailable ones become notes."""
  sync = _torch_sync(torch, device)
  cases, notes = [], []
  if 'compile' in extras:
    try:
      if 'net' not in compiled_nets:
        compiled_nets['net'] = torch.compile(net, dynamic=False)
      cnet = compiled_nets['net']
      t0 = time.perf_counter()
      sync(tp.torch_scaleup_loop(cnet, x, scales))  # compiles for this shape
      compile_s = time.perf_counter() - t0
      cases.append(Case('torch_compile', 'torch', 'detect', 1 + len(scales),
                        functools.partial(tp.torch_scaleup_loop, cnet, x, scales), sync,
                        compile_s=compile_s))
    except Exception as e:  # pylint: disable=broad-except  (no compiler, unsupported platform)
      notes.append(f'torch_compile unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}')
  if 'bf16' in extras:
    try:
      def bf16_loop():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
          return tp.torch_scaleup_loop(net, x, scales)
      bf16_loop()
      cases.append(Case('torch_bf16', 'torch', 'detect', 1 + len(scales), bf16_loop, sync))
    except Exception as e:  # pylint: disable=broad-except
      notes.append(f'torch_bf16 unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}')
  return cases, notes


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
  """Fraction of images on which each detector's (preds, spc) equal the JAX reference's.

  The reference is ``jax_vmap``, or ``jax_map`` where ``jax_vmap`` was skipped
  (the agreement keys keep the name ``agreement_with_jax_vmap``; the record's
  ``reference`` says which). Reads each case's warm-up output (``first_out``),
  or calls it once.
  """
  ref_name = next((n for n in ('jax_vmap', 'jax_map') if n in cases), None)
  if ref_name is None:
    return {}
  ref = cases[ref_name]
  want = [np.asarray(a) for a in (ref.first_out if ref.first_out is not None else ref.call())]
  out = {}
  for name, case in cases.items():
    if case.kind != 'detect' or name == ref_name:
      continue
    got = case.first_out if case.first_out is not None else case.call()
    got = [np.asarray(a.float().cpu() if hasattr(a, 'cpu') else a) for a in got]
    out[name] = {'preds_equal': float(np.mean(got[0] == want[0])),
                 'spc_equal': float(np.mean(np.isclose(got[1], want[1], atol=1e-6)))}
  return out


def _skipped(opts: BenchOptions, model: str, batch: int, method: str) -> bool:
  return f'{model}:{batch}:{method}' in opts.skip


def _extras_here(opts: BenchOptions, model: str, batch: int) -> tuple:
  if 'all' in opts.extra_at or f'{model}:{batch}' in opts.extra_at:
    return opts.torch_extras
  return ()


# ---------------------------------------------------------------- sections


def throughput_section(opts: BenchOptions, frameworks, torch, tp, device, bar) -> tuple:
  """``(results, checks, notes)`` of the throughput section."""
  jdtype = jnp.bfloat16 if opts.dtype == 'bfloat16' else jnp.float32
  shape = (opts.image_size, opts.image_size, 3)
  results, checks, notes = [], [], []
  for model_name in opts.models:
    model = models_lib.get_model(model_name, opts.num_classes, dtype=jdtype)
    variables = model.init(jax.random.key(opts.seed), jnp.zeros((1, *shape)))
    net, compiled_nets = None, {}
    if torch is not None:
      net = tp.flax_to_torch(model, variables, dtype=torch.bfloat16 if opts.dtype == 'bfloat16' else None)
      net = net.to(device)
    for batch in opts.batch_sizes:
      bar.set_postfix_str(f'{model_name} b={batch} compiling')
      rng = np.random.default_rng(opts.seed + batch)
      x = rng.uniform(0.0, 1.0, (batch, *shape)).astype(np.float32)
      cases = []
      if 'jax' in frameworks:
        cases += _jax_cases(model, variables, jax.device_put(x), opts.scales, opts.chunk)
      if torch is not None:
        xt = torch.from_numpy(x).to(device)
        cases += _torch_cases(torch, tp, net, xt, opts.scales, device)
        extra, extra_notes = _torch_extra_cases(torch, tp, net, xt, opts.scales, device,
                                                _extras_here(opts, model_name, batch), compiled_nets)
        cases += extra
        notes += [f'{model_name} b={batch}: {n}' for n in extra_notes]
      skipped = [c.method for c in cases if _skipped(opts, model_name, batch, c.method)]
      cases = [c for c in cases if c.method not in skipped]
      if skipped:
        notes.append(f'{model_name} b={batch}: skipped {", ".join(skipped)} (--skip)')
      by_name = {c.method: c for c in cases}
      check = {'model': model_name, 'batch_size': batch}
      checks.append(check)
      run_interleaved(cases, batch, opts.repeats, opts.min_seconds, bar, f'{model_name} b={batch}',
                      after_warmup=lambda: check.update(agreement_with_jax_vmap=_agreement(by_name)))
      results += _records(model_name, batch, by_name)
  return results, checks, notes


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


def best_of(results: list[dict], checks: list[dict]) -> list[dict]:
  """Per model and batch: the best JAX detector against the PyTorch loop and the best PyTorch.

  ``torch_best_exact`` only counts PyTorch detectors whose (preds, spc) agree
  with ``jax_vmap`` on every benchmark image; ``torch_best`` counts all
  (bfloat16 autocast may disagree).
  """
  agree = {(c['model'], c['batch_size']): c['agreement_with_jax_vmap'] for c in checks}
  out = []
  keys = sorted({(r['model'], r['batch_size']) for r in results}, key=lambda k: (k[0], k[1]))
  for model, batch in keys:
    rows = {r['method']: r for r in results if (r['model'], r['batch_size']) == (model, batch)
            and r['kind'] == 'detect'}
    med = {m: r['images_per_s']['median'] for m, r in rows.items()}
    jax_m = [m for m in med if m.startswith('jax_')]
    torch_m = [m for m in med if m.startswith('torch_')]
    if not jax_m or not torch_m:
      continue
    a = agree.get((model, batch), {})
    exact = [m for m in torch_m if a.get(m, {}).get('preds_equal') == 1.0
             and a.get(m, {}).get('spc_equal') == 1.0]
    jb = max(jax_m, key=med.get)
    tb = max(torch_m, key=med.get)
    rec = {'model': model, 'batch_size': batch, 'jax_best': jb, 'jax_best_images_per_s': med[jb],
           'torch_loop_images_per_s': med.get('torch_loop'), 'torch_best': tb,
           'torch_best_images_per_s': med[tb],
           'torch_best_exact': max(exact, key=med.get) if exact else None}
    rec['torch_best_exact_images_per_s'] = med[rec['torch_best_exact']] if exact else None
    rec['jax_over_torch_loop'] = med[jb] / med['torch_loop'] if 'torch_loop' in med else None
    rec['jax_over_torch_best'] = med[jb] / med[tb]
    rec['jax_over_torch_best_exact'] = (med[jb] / rec['torch_best_exact_images_per_s']
                                        if exact else None)
    out.append(rec)
  return out


# ------------------------------------------------------------ zoo model and images


def _zoo_setup(opts: BenchOptions, num_images: int) -> dict:
  """The fig6/screen model and images: the zoo model on CIFAR-10 test images, or random.

  Returns:
    ``{'source', 'apply_fn', 'variables', 'benign' (test images), 'poison_fn'
    ((start, stop) -> triggered test images, or None), 'note', 'real'}``; with ``zoo_model=''`` or when the model or data is missing, a
    random-weight ResNet-20 (tiny in quick mode) on uniform random images.
  """
  note = None
  if opts.zoo_model:
    try:
      from scaleup_jax import checkpoint, data, paths, poison  # pylint: disable=import-outside-toplevel
      p = Path(opts.zoo_model)
      run_dir = p if (p / 'config.json').is_file() else paths.zoo_model(opts.zoo_model, opts.zoo)
      run = checkpoint.load_run(run_dir)
      test = data.load_split('cifar10', 'test', data_dir=opts.data_dir, download=False,
                             max_examples=num_images)
      poison_fn = None
      if run.trigger is not None:
        def poison_fn(start, stop, run=run, test=test):
          """Triggered test images ``start:stop`` whose true label is not the target."""
          bad, _, _ = poison.poisoned_test_set(test.images[start:stop], test.labels[start:stop],
                                               run.trigger, run.target)
          return np.asarray(bad, np.float32)
      return {'source': str(run_dir), 'apply_fn': functools.partial(run.model.apply, train=False),
              'variables': run.variables, 'benign': np.asarray(test.images, np.float32),
              'poison_fn': poison_fn, 'note': None, 'real': True}
    except Exception as e:  # pylint: disable=broad-except  (no zoo, no data: time on random inputs)
      note = f'zoo model {opts.zoo_model!r} or CIFAR-10 unavailable ({type(e).__name__}: {e}); random weights and images'
  name = 'tiny' if opts.quick else 'resnet20'
  model = models_lib.get_model(name, opts.num_classes)
  shape = (opts.image_size, opts.image_size, 3)
  variables = model.init(jax.random.key(opts.seed), jnp.zeros((1, *shape)))
  rng = np.random.default_rng(opts.seed)
  benign = (rng.uniform(0, 1, (num_images, *shape)) * rng.uniform(0.05, 1, (num_images, 1, 1, 1))
            ).astype(np.float32)
  return {'source': f'random {name}', 'apply_fn': functools.partial(model.apply, train=False),
          'variables': variables, 'benign': benign, 'poison_fn': None, 'note': note, 'real': False}


# ---------------------------------------------------------------- screen section


def screen_section(opts: BenchOptions, setup: dict, bar) -> dict:
  """Sequential screen against full SPC at a calibrated threshold (see the module docstring)."""
  from scaleup_jax import calibration, screen  # pylint: disable=import-outside-toplevel
  apply_fn, variables = setup['apply_fn'], setup['variables']
  n_cal, n = opts.screen_calibration, opts.screen_images
  benign_all = setup['benign']
  cal, benign = benign_all[:n_cal], benign_all[n_cal:n_cal + n]
  sets = {'benign': benign}
  if setup['poison_fn'] is not None:
    # triggered copies of the evaluation images (not of the calibration ones)
    sets['poisoned'] = setup['poison_fn'](n_cal, n_cal + n)
    k = max(1, len(benign) // 10)
    mixed = np.concatenate([benign[:len(benign) - k], sets['poisoned'][:k]])
    sets['mixed_90_10'] = mixed[np.random.default_rng(opts.seed).permutation(len(mixed))]
  bs = opts.screen_batch
  label_fn = scaleup.make_label_matrix_fn(apply_fn, opts.scales, 'map')
  lm_cal = scaleup.detect_batched(label_fn, cal, bs, variables)
  thr = calibration.calibrate_threshold(scaleup.spc_from_labels(lm_cal), opts.screen_alpha)
  order = screen.disagreement_order(lm_cal, opts.scales)
  scr = screen.SequentialScreen(apply_fn, thr, opts.scales, order=order, batch_size=bs)
  screen_compile_s = scr.compile(variables, benign.shape[1:])
  full = {'map': make_detector(apply_fn, opts.scales, 'map'),
          'chunked': make_chunked_detector(apply_fn, opts.scales, opts.chunk)}
  out = {'source': setup['source'], 'threshold': thr.to_dict(),
         'threshold_rule': calibration.describe(thr), 'order': [opts.scales[j] for j in order],
         'buckets': list(scr.buckets), 'batch_size': bs, 'calibration_images': int(len(cal)),
         'screen_compile_s': screen_compile_s, 'sets': []}
  for name, images in sets.items():
    cases, results = [], {}
    for fname, det in full.items():
      det(variables, jnp.asarray(images[:bs] if len(images) >= bs else
                                 np.resize(images, (bs, *images.shape[1:]))))  # compile
      cases.append(Case(f'full_spc_{fname}', 'jax', 'detect', 1 + len(opts.scales),
                        functools.partial(scaleup.detect_batched, det, images, bs, variables),
                        lambda out: out))

    def run_screen(images=images):
      results['screen'] = scr.screen(variables, images)
      return results['screen']

    cases.append(Case('screen', 'jax', 'detect', 0, run_screen, lambda out: out))
    run_interleaved(cases, len(images), opts.repeats, opts.min_seconds, bar, f'screen {name}')
    preds, spc = cases[0].first_out  # full SPC (map) of these images
    res = results['screen']
    want = calibration.flag_probability(spc, thr)
    key = jax.random.key(opts.seed)
    t_screen = float(np.median(cases[-1].seconds)) / cases[-1].calls
    row = {'set': name, 'images': int(len(images)),
           'images_per_s': {c.method: spread(c.values) for c in cases},
           **res.summary(),
           'decisions_equal': float(np.mean(res.flag_prob == want)),
           'preds_equal': float(np.mean(res.preds == preds)),
           'flags_equal_same_key': float(np.mean(res.flags(key) == calibration.flag(key, spc, thr))),
           'full_forwards_per_image': 1 + len(opts.scales),
           'device_seconds_share': float(sum(r['seconds'] for r in res.rounds)) / max(t_screen, 1e-9),
           'rounds_per_batch': len(res.rounds) / math.ceil(len(images) / bs)}
    med = {m: s['median'] for m, s in row['images_per_s'].items()}
    row['speedup_over_full_map'] = med['screen'] / med['full_spc_map']
    row['speedup_over_full_chunked'] = med['screen'] / med['full_spc_chunked']
    out['sets'].append(row)
  out['threshold_object'] = thr
  out['order_indices'] = list(order)
  return out


# ---------------------------------------------------------------- fig6 section


def fig6_section(opts: BenchOptions, setup: dict, screen_info: dict | None, bar) -> dict:
  """Time per image of plain inference, SCALE-UP, the screen and every registry detector."""
  from scaleup_jax import detectors, screen  # pylint: disable=import-outside-toplevel
  apply_fn, variables = setup['apply_fn'], setup['variables']
  benign = setup['benign']
  names = opts.fig6_detectors if opts.fig6_detectors is not None else detectors.NAMES
  defender = benign[-min(len(benign) // 2, 500):]  # the detectors' benign images ...
  pool = benign[:max(opts.fig6_batches)]           # ... disjoint from the timed ones
  if len(pool) < max(opts.fig6_batches):
    pool = np.resize(pool, (max(opts.fig6_batches), *pool.shape[1:]))
  rows, notes = [], []
  built = {}
  for name in names:
    try:
      t0 = time.perf_counter()
      built[name] = detectors.make(name, apply_fn, variables, key=jax.random.key(opts.seed),
                                   benign_images=defender, **FIG6_OPTIONS.get(name, {}))
      built[name + ':build_s'] = time.perf_counter() - t0
    except Exception as e:  # pylint: disable=broad-except
      notes.append(f'{name}: not built ({type(e).__name__}: {str(e).splitlines()[0][:200]})')
  for batch in opts.fig6_batches:
    x = jax.device_put(pool[:batch])
    cases = []
    infer, c_s = _aot(jax.jit(functools.partial(scaleup.predict_labels, apply_fn)), variables, x)
    cases.append(Case('inference', 'jax', 'infer', 1, functools.partial(infer, variables, x),
                      jax.block_until_ready, compile_s=c_s))
    chunked, c_s = _aot(make_chunked_detector(apply_fn, opts.scales, opts.chunk), variables, x)
    cases.append(Case('scaleup_chunked', 'jax', 'detect', 1 + len(opts.scales),
                      functools.partial(chunked, variables, x), jax.block_until_ready,
                      compile_s=c_s))
    if screen_info is not None:
      scr = screen.SequentialScreen(apply_fn, screen_info['threshold_object'], opts.scales,
                                    order=screen_info['order_indices'], batch_size=batch)
      c_s = scr.compile(variables, pool.shape[1:])
      xs = np.asarray(pool[:batch])
      cases.append(Case('scaleup_screen', 'jax', 'detect', 0,
                        functools.partial(scr.screen_batch, variables, xs), lambda out: out,
                        compile_s=c_s))
    for name in names:
      det = built.get(name)
      if det is None:
        continue
      try:
        compiled, c_s = _aot(det.core, variables, x, det.key, det.aux)
        head = det.head or (lambda out: out)
        # Everything the call needs is bound now: a closure over the loop variable ``det``
        # would call this executable with the last detector's key and aux.
        call = functools.partial(lambda c, h, k, a: h(c(variables, x, k, a)), compiled, head,
                                 det.key, det.aux)
        # The head (e.g. SCALE-UP's SPC from the label matrix) runs eagerly and compiles its
        # ops on the first call: warm it here, so that the first timed call does not pay it.
        jax.block_until_ready(call())
      except Exception:  # pylint: disable=broad-except  (not AOT-lowerable: time the jitted call)
        c_s = None
        call = functools.partial(det, variables, x)
        call()
      cases.append(Case(name, 'jax', 'detect',
                        int(det.model_forwards) + int(getattr(det, 'detector_forwards', 0)),
                        call, jax.block_until_ready, compile_s=c_s))
    run_interleaved(cases, batch, opts.fig6_repeats or opts.repeats, opts.min_seconds, bar,
                    f'fig6 b={batch}', reuse_warmup=True)
    for c in cases:
      s = spread(c.values)
      rows.append({'detector': c.method, 'batch_size': batch, 'images_per_s': s,
                   'ms_per_image': 1e3 / s['median'], 'forwards_per_image': c.forwards or None,
                   'compile_s': c.compile_s, 'build_s': built.get(c.method + ':build_s')})
  return {'source': setup['source'], 'rows': rows, 'notes': notes,
          'options': {k: v for k, v in FIG6_OPTIONS.items() if k in names}}


# ---------------------------------------------------------------- train section


def train_section(opts: BenchOptions, torch, tp, device, bar) -> list[dict]:
  """JAX and PyTorch training images/s (one SGD step on a fixed batch) per model."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from scaleup_jax import train  # pylint: disable=import-outside-toplevel
  shape = (opts.image_size, opts.image_size, 3)
  b = opts.train_batch
  rng = np.random.default_rng(opts.seed)
  x = rng.uniform(0, 1, (b, *shape)).astype(np.float32)
  y = rng.integers(0, opts.num_classes, (b,)).astype(np.int32)
  cfg = ml_collections.ConfigDict(dict(num_epochs=1, warmup_epochs=0.0, learning_rate=0.1,
                                       weight_decay=5e-4, momentum=0.9, nesterov=True))
  rows = []
  for model_name in opts.train_models:
    model = models_lib.get_model(model_name, opts.num_classes)
    state = train.create_train_state(jax.random.key(opts.seed), model, shape,
                                     train.make_optimizer(cfg, steps_per_epoch=1000))
    batch = {'image': jax.device_put(x), 'label': jax.device_put(y)}
    cases = []
    if 'jax' in opts.frameworks:
      step, c_s = _aot(jax.jit(train.train_step, donate_argnums=0), state, batch)
      holder = [state]

      def jax_step(step=step, holder=holder, batch=batch):
        holder[0], metrics = step(holder[0], batch)
        return metrics

      cases.append(Case('jax_train', 'jax', 'train', 1, jax_step, jax.block_until_ready,
                        compile_s=c_s))
    if torch is not None:
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      net = tp.flax_to_torch(model, variables).to(device).train()
      opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                            weight_decay=5e-4)
      xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)

      def torch_step(net=net, opt=opt, xt=xt, yt=yt):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
        return loss

      cases.append(Case('torch_train', 'torch', 'train', 1, torch_step, _torch_sync(torch, device)))
    run_interleaved(cases, b, opts.repeats, opts.min_seconds, bar, f'train {model_name}')
    for c in cases:
      rows.append({'model': model_name, 'batch_size': b, 'method': c.method,
                   'framework': c.framework, 'images_per_s': spread(c.values),
                   'compile_s': c.compile_s})
  return rows


# ---------------------------------------------------------------- driver


def _bar_total(opts: BenchOptions, n_methods: int, n_fig6: int, n_screen_sets: int) -> int:
  total = 0
  if 'throughput' in opts.sections:
    total += len(opts.models) * len(opts.batch_sizes) * opts.repeats * n_methods
  if 'fig6' in opts.sections:
    total += len(opts.fig6_batches) * opts.repeats * n_fig6
  if 'screen' in opts.sections:
    total += n_screen_sets * opts.repeats * 3
  if 'train' in opts.sections:
    total += len(opts.train_models) * opts.repeats * 2
  return total


def run_bench(opts: BenchOptions) -> dict:
  """Runs the benchmark and writes its outputs to ``opts.out``.

  Args:
    opts: a :class:`BenchOptions`.

  Returns:
    The JSON-able result: ``config``, ``environment``, ``results`` (one
    record per model, batch size and method), ``checks`` (agreement of every
    detector with ``jax_vmap``), ``summary`` (best JAX against PyTorch),
    ``fig6``, ``screen``, ``train``, ``section_seconds``, ``notes`` and, with
    ``xla_compare``, ``xla_compare``.

  Example:
    >>> res = run_bench(BenchOptions(quick=True, out='/tmp/bench'))
    >>> res['results'][0]['images_per_s']['median']
  """
  opts = opts.resolved()
  torch, tp, device, torch_missing = _load_torch(opts)
  notes = ['Weights are random (model.init) in the throughput and train sections; timing does '
           'not depend on their values.']
  if torch_missing:
    notes.append(f'PyTorch side skipped: {torch_missing}')
    print(f'note: {torch_missing}; benchmarking the JAX side only.', file=sys.stderr)
  frameworks = [f for f in opts.frameworks if f != 'torch' or torch is not None]
  env = environment(torch, device, opts.repo)
  n_methods = 4 * ('jax' in frameworks) + 3 * (torch is not None)
  if opts.fig6_detectors is None:
    from scaleup_jax import detectors  # pylint: disable=import-outside-toplevel
    n_fig6 = 3 + len(detectors.NAMES)
  else:
    n_fig6 = 3 + len(opts.fig6_detectors)
  bar = tqdm(total=_bar_total(opts, n_methods, n_fig6, 3), desc='bench', unit='meas',
             disable=not opts.progress)
  config = opts.to_json()
  config['forwards_per_input'] = 1 + len(opts.scales)
  config['weights'] = 'random init (model.init with seed) in throughput and train'
  result = {'config': config, 'environment': env, 'results': [], 'checks': [], 'summary': [],
            'fig6': None, 'screen': None, 'train': None, 'notes': notes,
            'torch_missing': torch_missing, 'section_seconds': {}, 'section_cpu_seconds': {}}
  clock = _SectionClock(result)
  try:
    _run_sections(opts, result, clock, frameworks, torch, tp, device, bar, notes)
  except BaseException:
    # Keep what the finished sections measured (minutes of an idle machine) beside the
    # previous outputs, which stay untouched.
    result['failed'] = True
    write_outputs(result, opts.out, prefix='bench.partial')
    print(f'note: the benchmark failed; the sections that finished are in '
          f'{Path(opts.out) / "bench.partial.json"}', file=sys.stderr)
    raise
  finally:
    bar.close()
  env['load_average_at_end'] = _load_average()
  if opts.xla_compare and 'jax' in frameworks and 'throughput' in opts.sections:
    with clock('xla_compare'):
      result['xla_compare'] = xla_compare(opts, result['results'])
  clock.total()
  write_outputs(result, opts.out)
  return result


def _run_sections(opts: BenchOptions, result: dict, clock, frameworks, torch, tp, device, bar,
                  notes: list) -> None:
  """The sections of :func:`run_bench`, filling ``result`` as each one finishes."""
  if 'throughput' in opts.sections:
    with clock('throughput'):
      result['results'], result['checks'], extra_notes = throughput_section(
          opts, frameworks, torch, tp, device, bar)
      notes += extra_notes
      result['summary'] = best_of(result['results'], result['checks'])
  screen_info = None
  if ('screen' in opts.sections or 'fig6' in opts.sections) and 'jax' in frameworks:
    with clock('zoo_setup'):
      setup = _zoo_setup(opts, opts.screen_calibration + opts.screen_images)
    if setup['note']:
      notes.append(setup['note'])
    if 'screen' in opts.sections:
      with clock('screen'):
        screen_info = screen_section(opts, setup, bar)
        result['screen'] = {k: v for k, v in screen_info.items()
                            if k not in ('threshold_object', 'order_indices')}
    if 'fig6' in opts.sections:
      with clock('fig6'):
        result['fig6'] = fig6_section(opts, setup, screen_info, bar)
  if 'train' in opts.sections:
    with clock('train'):
      result['train'] = train_section(opts, torch, tp, device, bar)


class _SectionClock:
  """Wall and process CPU seconds per section, into ``result['section_seconds']`` and
  ``result['section_cpu_seconds']`` (CPU well above wall x threads, or wall well above
  CPU / threads, says the machine was busy)."""

  def __init__(self, result: dict):
    self.result = result
    self.t0, self.c0 = time.perf_counter(), time.process_time()

  def __call__(self, name: str):
    import contextlib  # pylint: disable=import-outside-toplevel

    @contextlib.contextmanager
    def section():
      t, c = time.perf_counter(), time.process_time()
      try:
        yield
      finally:
        self.result['section_seconds'][name] = time.perf_counter() - t
        self.result['section_cpu_seconds'][name] = time.process_time() - c

    return section()

  def total(self) -> None:
    self.result['section_seconds']['total'] = time.perf_counter() - self.t0
    self.result['section_cpu_seconds']['total'] = time.process_time() - self.c0


# ---------------------------------------------------------------- XLA flags


def _strip_project_flags(flags: str) -> str:
  names = {f.split('=')[0] for f in CPU_FLAGS}
  return ' '.join(f for f in flags.split() if f.split('=')[0] not in names)


def xla_compare(opts: BenchOptions, results: list[dict]) -> dict:
  """Re-times the JAX methods in a subprocess without the project's XLA flags.

  The child gets its options as a JSON file (``python -m scaleup_jax.bench
  OPTIONS.json``), not as re-serialised flags; XLA flags must be set before
  JAX starts, hence the separate process.

  Returns:
    ``{'xla_flags_with', 'xla_flags_without', 'rows'}``; each row gives the
    median images/s with and without the flags and ``speedup`` (with/without).
  """
  flags_with = os.environ.get('XLA_FLAGS', '')
  env = dict(os.environ, SCALEUP_JAX_NO_XLA_FLAGS='1', XLA_FLAGS=_strip_project_flags(flags_with))
  with tempfile.TemporaryDirectory() as tmp:
    child = dataclasses.replace(opts, frameworks=('jax',), xla_compare=False, progress=False,
                                out=tmp, quick=False, sections=('throughput',))
    cfg = Path(tmp) / 'options.json'
    cfg.write_text(json.dumps(child.to_json()))
    r = subprocess.run([sys.executable, '-m', 'scaleup_jax.bench', str(cfg)], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
      raise RuntimeError(f'--xla_compare subprocess failed (exit {r.returncode}):\n{r.stderr[-3000:]}')
    child_res = json.loads((Path(tmp) / 'bench.json').read_text())
  without = {(x['model'], x['batch_size'], x['method']): x for x in child_res['results']}
  rows = []
  for x in results:
    other = without.get((x['model'], x['batch_size'], x['method']))
    if x['framework'] != 'jax' or other is None:
      continue
    a, b = x['images_per_s']['median'], other['images_per_s']['median']
    rows.append({'model': x['model'], 'batch_size': x['batch_size'], 'method': x['method'],
                 'with_flags': a, 'without_flags': b, 'speedup': a / b,
                 'compile_s_with': x['compile_s'], 'compile_s_without': other['compile_s']})
  return {'xla_flags_with': flags_with, 'xla_flags_without': child_res['environment']['xla_flags'],
          'note': 'the run without flags is a separate process after this one, not interleaved',
          'rows': rows}


# ---------------------------------------------------------------- outputs


def _fmt(x: float | None, digits: int = 3) -> str:
  if x is None:
    return '-'
  return f'{x:.{digits}g}' if abs(x) < 10**digits else f'{x:.0f}'


def _ratio(x: float | None) -> str:
  return '-' if x is None else f'{x:.2f}x'


def _md_environment(result: dict) -> list[str]:
  env, cfg = result['environment'], result['config']
  if env['torch_version']:
    torch_desc = (f"PyTorch {env['torch_version']} on {env['torch_device']} with "
                  f"{env['torch_threads']} threads")
  else:
    torch_desc = 'PyTorch not installed' if result.get('torch_missing') else 'PyTorch not timed'
  simd = ', '.join(env.get('cpu_simd') or []) or 'unknown'
  caches = ', '.join(f'{k} {v}' for k, v in (env.get('cpu_caches') or {}).items()) or 'unknown'
  cpu = result.get('section_cpu_seconds', {})
  secs = ', '.join(f'{k} {v:.0f} s' + (f' ({cpu[k]:.0f} CPU-s)' if k in cpu else '')
                   for k, v in result.get('section_seconds', {}).items())
  return [f"{env['date_utc']}, commit {env['git_commit']}. CPU: {env['cpu_model']} "
          f"({env['threads']} usable of {env['cpu_count']} cores; SIMD {simd}; caches {caches}); "
          f"JAX {env['jax_version']} on {env['jax_backend']} ({env['jax_device_kind']}); {torch_desc}. "
          f"XLA_FLAGS=`{env['xla_flags'] or '(none)'}`. Load average at start/end: "
          f"{env['load_average_1_5_15']} / {env.get('load_average_at_end')}. Wall time: {secs}.", '',
          f"dtype {cfg['dtype']}, scales {cfg['scales']} ({cfg['forwards_per_input']} forwards per "
          f"input), {cfg['repeats']} repeats of >= {cfg['min_seconds']} s each after warm-up, "
          'methods interleaved in alternating order. images/s: median [min, max]. '
          'floor = plain-inference images/s / forwards per input; x floor = detect / floor. '
          'compile = JAX lowering + compilation, or torch.compile on the first call (s), '
          'excluded from throughput.', '']


def to_markdown(result: dict) -> str:
  """A markdown report: environment, summary, one table per model, the other sections."""
  cfg = result['config']
  lines = ['# SCALE-UP detection throughput', ''] + _md_environment(result)
  lines += [f'*{n}*' for n in result['notes']] + ['']
  if result.get('summary'):
    lines += ['## Best JAX detector against PyTorch', '',
              '`torch_best` is the fastest PyTorch detector; `exact` counts only those whose '
              '(preds, SPC) equal jax_vmap on every benchmark image.', '',
              '| model | batch | JAX best | images/s | PyTorch loop | JAX / loop | torch best '
              '| images/s | JAX / best | torch best exact | JAX / best exact |',
              '|---|---:|---|---:|---:|---:|---|---:|---:|---|---:|']
    for r in result['summary']:
      lines.append(
          f"| {r['model']} | {r['batch_size']} | {r['jax_best']} | {_fmt(r['jax_best_images_per_s'])} | "
          f"{_fmt(r['torch_loop_images_per_s'])} | {_ratio(r['jax_over_torch_loop'])} | "
          f"{r['torch_best']} | {_fmt(r['torch_best_images_per_s'])} | "
          f"{_ratio(r['jax_over_torch_best'])} | {r['torch_best_exact'] or '-'} | "
          f"{_ratio(r['jax_over_torch_best_exact'])} |")
    lines.append('')
  for model in cfg['models'] if result['results'] else []:
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
  lines += _md_screen(result.get('screen'))
  lines += _md_fig6(result.get('fig6'))
  lines += _md_train(result.get('train'))
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


def _md_screen(sc: dict | None) -> list[str]:
  if not sc:
    return []
  lines = ['## Sequential screen against full SPC', '',
           f"Model {sc['source']}; threshold {sc['threshold_rule']} (conformal, alpha "
           f"{sc['threshold']['alpha']}, {sc['calibration_images']} benign calibration images); "
           f"scale order {sc['order']}; batch {sc['batch_size']}, buckets {sc['buckets']} "
           f"(compiled once, {sc['screen_compile_s']:.1f} s). Full SPC = "
           '`detect_batched` with `make_detector(method="map")` or `make_chunked_detector`, '
           'both on the same host images. rows/img counts the bucket padding; device share = '
           'time inside device calls (incl. the transfer back) / screen time.', '',
           '| set | images | full map img/s | full chunked img/s | screen img/s | x map | x chunked '
           '| forwards/img | rows/img | calls/batch | device share | decisions equal | flags equal '
           '| clear / tie / flag |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  for r in sc['sets']:
    med = {m: s['median'] for m, s in r['images_per_s'].items()}
    lines.append(
        f"| {r['set']} | {r['images']} | {_fmt(med['full_spc_map'])} | {_fmt(med['full_spc_chunked'])} "
        f"| {_fmt(med['screen'])} | {_ratio(r['speedup_over_full_map'])} | "
        f"{_ratio(r['speedup_over_full_chunked'])} | {r['forwards_per_image']:.2f} of "
        f"{r['full_forwards_per_image']} | {r['rows_per_image']:.2f} | {r['rounds_per_batch']:.1f} | "
        f"{r['device_seconds_share']:.2f} | {r['decisions_equal']:.3f} | "
        f"{r['flags_equal_same_key']:.3f} | {r['clear']} / {r['tie']} / {r['flag']} |")
  return lines + ['']


def _md_fig6(f6: dict | None) -> list[str]:
  if not f6:
    return []
  batches = sorted({r['batch_size'] for r in f6['rows']})
  dets = list(dict.fromkeys(r['detector'] for r in f6['rows']))
  by = {(r['detector'], r['batch_size']): r for r in f6['rows']}
  lines = ['## Time per image of every detector (the paper\'s Fig. 6 analog)', '',
           f"Model {f6['source']}, one process, interleaved. ms/image (median); forwards = model "
           'forward passes per image (the screen: varies, see above). Options changed from the '
           f"defaults: {f6['options'] or 'none'} (inference cost does not depend on them).", '',
           '| detector | forwards | ' + ' | '.join(f'ms/img b={b}' for b in batches) + ' |',
           '|---|---:|' + '---:|' * len(batches)]
  for d in dets:
    fw = next((by[(d, b)]['forwards_per_image'] for b in batches if (d, b) in by), None)
    cells = [_fmt(by[(d, b)]['ms_per_image']) if (d, b) in by else '-' for b in batches]
    lines.append(f"| {d} | {fw or '-'} | " + ' | '.join(cells) + ' |')
  lines += [''] + [f'- {n}' for n in f6['notes']] + ([''] if f6['notes'] else [])
  return lines


def _md_train(rows: list | None) -> list[str]:
  if not rows:
    return []
  lines = ['## Training throughput (one SGD step: forward, backward, update)', '',
           'Same model and initial weights, fixed random batch, no data augmentation on either side; '
           'JAX `train.train_step` (jitted once, state donated) against PyTorch eager '
           '(`torch.optim.SGD`, momentum 0.9, Nesterov, weight decay 5e-4).', '',
           '| model | batch | method | images/s | [min, max] | compile s |', '|---|---:|---|---:|---:|---:|']
  for r in rows:
    s = r['images_per_s']
    lines.append(f"| {r['model']} | {r['batch_size']} | {r['method']} | {_fmt(s['median'])} | "
                 f"[{_fmt(s['min'])}, {_fmt(s['max'])}] | {_fmt(r['compile_s'], 2)} |")
  return lines + ['']


COLORS = {'jax_infer': 'tab:blue', 'jax_vmap': 'tab:cyan', 'jax_map': 'tab:green',
          'jax_chunked': 'darkgreen', 'torch_infer': 'tab:red', 'torch_loop': 'tab:orange',
          'torch_batched': 'tab:purple', 'torch_compile': 'tab:brown', 'torch_bf16': 'tab:pink'}


def plot(result: dict, path: Path) -> None:
  """images/s against batch size, one panel per model, one line per method (log axes)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  model_names = result['config']['models']
  fig, axes = plt.subplots(1, len(model_names), figsize=(5.5 * len(model_names), 4.2), squeeze=False)
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
      ax.errorbar(b, med, yerr=[lo, hi], fmt=('--' if infer else '-') + ('o' if len(b) > 1 else 's'),
                  capsize=3, ms=5, color=COLORS[method], label=method)
      if infer:  # the detection floor: plain inference / forwards per input
        ax.plot(b, med / result['config']['forwards_per_input'], ':', color=COLORS[method],
                label=f"{method.split('_')[0]} floor")
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    if batches:
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


def plot_fig6(f6: dict, path: Path, cpu: str = '') -> None:
  """Bars of ms per image per detector, one group per batch size (log axis): Fig. 6's analog."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  batches = sorted({r['batch_size'] for r in f6['rows']})
  dets = list(dict.fromkeys(r['detector'] for r in f6['rows']))
  by = {(r['detector'], r['batch_size']): r['ms_per_image'] for r in f6['rows']}
  fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(dets) + 2), 4.2))
  width = 0.8 / max(1, len(batches))
  for i, b in enumerate(batches):
    vals = [by.get((d, b), np.nan) for d in dets]
    xs = np.arange(len(dets)) + (i - (len(batches) - 1) / 2) * width
    bars = ax.bar(xs, vals, width, label=f'batch {b}')
    for x, v in zip(xs, vals):
      if np.isfinite(v):
        ax.text(x, v, f'{v:.3g}', ha='center', va='bottom', fontsize=6)
    del bars
  ax.set_xticks(np.arange(len(dets)), dets, rotation=30, ha='right', fontsize=8)
  ax.set_yscale('log')
  ax.set_ylabel('ms per image (median)')
  ax.set_title(f"Time per image, {Path(f6['source']).name}, {cpu}", fontsize=9)
  ax.grid(True, axis='y', which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _jsonable(obj):
  if isinstance(obj, dict):
    return {k: _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return str(obj)
  return obj


def write_outputs(result: dict, out: str | os.PathLike, prefix: str = 'bench') -> Path:
  """Writes ``bench.json``, ``bench.md``, ``bench.png`` (and ``fig6.png``) into ``out``.

  Each file is written atomically. ``prefix='bench.partial'`` (a failed run)
  writes ``bench.partial.json`` and ``bench.partial.md`` only, leaving the
  previous outputs as they were.
  """
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  integrity.atomic_write_text(out / f'{prefix}.json', json.dumps(_jsonable(result), indent=2) + '\n')
  integrity.atomic_write_text(out / f'{prefix}.md', to_markdown(result))
  if prefix != 'bench':
    return out
  if result['results']:
    plot(result, out / 'bench.png')
  if result.get('fig6') and result['fig6']['rows']:
    plot_fig6(result['fig6'], out / 'fig6.png', result['environment']['cpu_model'])
  return out


def main(argv: Sequence[str]) -> int:
  """``python -m scaleup_jax.bench OPTIONS.json``: runs :func:`run_bench` on options from JSON.

  The entry point for people is ``python -m eval.bench`` (flags); this one
  serves :func:`xla_compare`'s subprocess.
  """
  if len(argv) != 2:
    print('usage: python -m scaleup_jax.bench OPTIONS.json', file=sys.stderr)
    return 2
  from scaleup_jax.xla_flags import set_default_xla_flags  # pylint: disable=import-outside-toplevel
  set_default_xla_flags()  # honours SCALEUP_JAX_NO_XLA_FLAGS
  run_bench(BenchOptions.from_json(json.loads(Path(argv[1]).read_text())))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
