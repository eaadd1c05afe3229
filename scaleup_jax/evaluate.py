"""End-to-end evaluation of an input-level detector on a trained (backdoored) model.

``evaluate_detection(opts)`` loads a run directory, splits the test set into a
defender's benign set (``num_defense_per_class`` images per class, used by the
data-limited mode and by the baselines that need benign images) and disjoint
evaluation images, stamps the run's trigger on every evaluation image whose
true label is not the target, scores everything with one compiled detector
(SCALE-UP by default, or any of :data:`scaleup_jax.detectors.NAMES`) and
reports BA, ASR, AUROC and TPR at 1%/5% FPR (for SCALE-UP: data-free SPC and
data-limited scores), plus throughput. For SCALE-UP it also reports operating
points (:func:`operating_points`): for every label-only score and each budget
in ``alphas``, the threshold calibrated on the defender's images
(:mod:`scaleup_jax.calibration`) and the realised FPR on the held-out benign
evaluation images and TPR, with exact binomial intervals. Results go to JSON
(and a PNG of the score distributions and ROC).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from scaleup_jax import attacks
from scaleup_jax import calibration
from scaleup_jax import checkpoint as ckpt_lib
from scaleup_jax import data as data_lib
from scaleup_jax import detectors
from scaleup_jax import jpeg
from scaleup_jax import paths
from scaleup_jax import scaleup
from scaleup_jax.batching import map_batches
from scaleup_jax.metrics import auroc, detection_metrics, roc_points
from scaleup_jax.validation import InputError

# The zoo as found from the working directory or the install (scaleup_jax.paths).
ZOO = paths.zoo_dir(required=False) or Path('zoo')
MODES = ('data-free', 'data-limited', 'both')


@dataclasses.dataclass
class DetectOptions:
  """Options of :func:`evaluate_detection` (the flags of ``eval.detect``)."""

  ckpt: str | None = None  # None: the zoo BadNets ResNet-20.
  data_dir: str | None = None
  download: bool | None = None  # None: download if absent unless $SCALEUP_JAX_NO_DOWNLOAD
  num_images: int = 0  # evaluation images before poisoning; 0 = all remaining.
  num_defense_per_class: int = 100
  batch_size: int = 256
  scales: tuple = scaleup.DEFAULT_SCALES
  mode: str = 'both'
  method: str = 'auto'  # 'vmap', 'map' or 'auto' (scaleup.resolve_method)
  detector: str = 'scaleup'  # or a baseline of scaleup_jax.detectors.NAMES
  detector_options: dict = dataclasses.field(default_factory=dict)
  keep_all_poisoned: bool = False
  noise_copies: int = 0
  noise_kind: str = 'uniform'  # NOISE_KINDS: x + m U[0, 1) or x + m N(0, 1) (add_noise_copies)
  noise_magnitude: float = 0.02  # m: the uniform noise's range or the Gaussian's std
  protocol: str | None = None  # 'paper': the evaluation sets of the paper (PROTOCOLS)
  jpeg_match: bool = False  # re-encode poisoned test images like the dataset's (scaleup_jax.jpeg)
  backdoor: int = 0  # 0: the main backdoor; i >= 1: extra backdoor i (checkpoint.select_backdoor)
  data_limited_form: str = 'standardised'  # scaleup.DATA_LIMITED_FORMS
  group_by: str = 'predicted'  # defender statistics by 'predicted' or 'true' class
  # Operating points (scaleup_jax.calibration): thresholds calibrated on the defender's
  # images for each false-positive budget, measured on the held-out evaluation images.
  alphas: tuple = (0.01, 0.05, 0.1)
  calibration_rule: str = 'conformal'  # calibration.RULES
  dense_scales: tuple = ()  # a denser grid for the finer label-only scores; () = none
  curve_alphas: tuple = ()  # extra budgets for a TPR-against-budget curve (expected rates)
  save_detectors: str | None = None  # directory: one calibrated detector JSON per score and alpha
  seed: int = 0
  out: str | None = None  # JSON path; None: runs/detect/<ckpt name>/detect.json
  plot: bool = True
  progress: bool = True


def parse_options(items) -> dict:
  """``['num_overlays=50', 'xi=0.6']`` -> ``{'num_overlays': 50, 'xi': 0.6}``.

  Values are parsed as Python literals where possible (numbers, tuples,
  booleans) and kept as strings otherwise.
  """
  import ast
  out = {}
  for item in items:
    key, sep, value = str(item).partition('=')
    if not sep or not key.strip():
      raise InputError(f'detector option {item!r} is not key=value')
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out


def split_test_set(key, labels, num_classes, num_defense_per_class, num_images):
  """Disjoint index sets: the defender's benign images and the evaluation images.

  Returns:
    ``(defense_idx, eval_idx)``: ``num_defense_per_class`` indices per class
    (fewer if a class has fewer images) and up to ``num_images`` (0 = all)
    of the remaining ones, both in a key-determined random order.
  """
  perm = np.asarray(jax.random.permutation(key, len(labels)))
  defense = []
  for k in range(num_classes):
    defense.extend(perm[labels[perm] == k][:num_defense_per_class])
  defense = np.asarray(sorted(defense), np.int64)
  rest = perm[~np.isin(perm, defense)]
  if num_images:
    rest = rest[:num_images]
  return defense, rest


NOISE_KINDS = ('uniform', 'gaussian')


def add_noise_copies(key, images, copies: int = 1, kind: str = 'uniform',
                     magnitude: float = 0.02):
  """``copies`` randomly noised versions of ``images``, clipped to [0, 1].

  The paper's evaluation sets (Sec. 5.1) add to each benign and poisoned test
  image one copy with "small random noise": "The noise magnitude is set to
  0.05", noise that "will not significantly affect the attack success rate
  and the benign accuracy". Its official code adds ``0.02 * U[0, 1)``, the
  default here: on the zoo models it changes BA and ASR least of the noises
  measured (docs/reproduction.md, "The paper's evaluation sets").

  * ``'uniform'``: ``x + magnitude * U[0, 1)`` (the official code's noise;
    non-negative, mean ``magnitude / 2``).
  * ``'gaussian'``: ``x + magnitude * N(0, 1)`` (``magnitude`` is the std).

  Copy ``c`` is drawn with ``jax.random.fold_in(key, c)`` for either kind, so
  the same key gives the same copies and copy ``c`` does not depend on how
  many copies are asked for.

  Args:
    key: PRNG key.
    images: ``(N, H, W, C)`` float in [0, 1].
    copies: noisy versions per image, >= 0.
    kind: one of :data:`NOISE_KINDS`.
    magnitude: ``m`` of the uniform noise or the std of the Gaussian, >= 0.

  Returns:
    float32 ``(copies * N, H, W, C)``, copy-major (all images' first copy,
    then their second, ...).

  Example:
    >>> x = np.full((2, 1, 1, 1), 0.5, np.float32)
    >>> y = add_noise_copies(jax.random.key(0), x, 1, 'uniform', 0.02)
    >>> bool(((y >= 0.5) & (y < 0.52)).all())
    True

  References:
    Guo et al. 2023, Sec. 5.1 ("Settings for Evaluation Datasets").
  """
  if kind not in NOISE_KINDS:
    raise InputError(f'unknown noise kind {kind!r}; expected one of {NOISE_KINDS}')
  if copies < 0 or not magnitude >= 0:
    raise InputError(f'noise copies and magnitude must be >= 0; got {copies}, {magnitude}')
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise InputError(f'images must have shape (N, H, W, C); got {images.shape}')
  out = np.empty((copies, *images.shape), np.float32)
  draw = jax.random.uniform if kind == 'uniform' else jax.random.normal
  for c in range(copies):
    noise = np.asarray(draw(jax.random.fold_in(key, c), images.shape, jax.numpy.float32))
    out[c] = np.clip(images + np.float32(magnitude) * noise, 0.0, 1.0)
  return out.reshape(-1, *images.shape[1:])


# Named evaluation-set presets: the DetectOptions values (and the builder's
# settings) each fixes.
PROTOCOLS = {
    # Sec. 5.1: negatives = benign test images + one noisy copy each; positives =
    # the poisoned test images that attack successfully + one noisy copy each;
    # 100 benign images per class held by the defender, disjoint from both.
    # The text says "magnitude 0.05"; the noise is the official code's 0.02 * U[0, 1),
    # the one that least affects BA and ASR on the zoo models (docs/reproduction.md,
    # "The paper's evaluation sets", has the measurement behind the choice).
    'paper': {'num_defense_per_class': 100, 'noise_copies': 1, 'noise_kind': 'uniform',
              'noise_magnitude': 0.02, 'keep_all_poisoned': False},
}
# Tiny ImageNet's labelled test split has 50 images per class, too few to hold 100 per
# class for the defender; the same sets with 20 per class (30 per class left to score).
PROTOCOLS['paper_tiny_imagenet'] = {**PROTOCOLS['paper'], 'num_defense_per_class': 20}
PAPER_PROTOCOLS = ('paper', 'paper_tiny_imagenet')  # successful positives only
_BUILD_DEFAULTS = {'num_defense_per_class': 100, 'num_images': 0, 'noise_copies': 0,
                   'noise_kind': 'uniform', 'noise_magnitude': 0.02, 'successful_only': False,
                   'jpeg_match': False, 'source_classes': None}
_BUILD_PROTOCOLS = {
    name: {**{k: v for k, v in PROTOCOLS[name].items() if k in _BUILD_DEFAULTS},
           'successful_only': True}
    for name in PAPER_PROTOCOLS
}


def resolve_protocol(opts: DetectOptions) -> DetectOptions:
  """``opts`` with the preset of ``opts.protocol`` (:data:`PROTOCOLS`) filled in.

  A field left at its default takes the preset's value; a field set to
  another value than the preset's raises, naming both.

  Example:
    >>> resolve_protocol(DetectOptions(protocol='paper')).noise_copies
    1
  """
  if opts.protocol is None:
    return opts
  if opts.protocol not in PROTOCOLS:
    raise InputError(f'unknown protocol {opts.protocol!r}; expected None or one of {tuple(PROTOCOLS)}')
  defaults = {f.name: f.default for f in dataclasses.fields(DetectOptions)}
  preset = PROTOCOLS[opts.protocol]
  for name, value in preset.items():
    mine = getattr(opts, name)
    if mine != defaults[name] and mine != value:
      raise InputError(f'protocol {opts.protocol!r} sets {name}={value!r}; got {name}={mine!r} '
                       '(drop one of them)')
  return dataclasses.replace(opts, **preset)


@dataclasses.dataclass(frozen=True)
class EvalArrays:
  """The images of one evaluation, from :func:`build_eval_arrays`.

  Attributes:
    defense_idx: ``(D,)`` sorted test indices held by the defender.
    eval_idx: ``(E,)`` test indices of the evaluation images (disjoint from
      ``defense_idx``).
    benign_images: ``(E * (1 + c), H, W, C)`` negatives: the evaluation
      images, then ``c`` noisy copies of them (copy-major).
    benign_source: ``(E * (1 + c),)`` test index of each negative's source.
    poisoned_images: ``(P * (1 + c), H, W, C)`` positives: ``P`` poisoned
      images, then ``c`` noisy copies of them.
    poisoned_source: ``(P * (1 + c),)`` test index of each positive's source.
    num_poisoned: ``P``.
    num_poisoned_all: poisoned images before the success filter (the
      evaluation images whose true class is not the target).
    asr: fraction of those the model sends to the target; None when no
      predictions were made.
  """

  defense_idx: np.ndarray
  eval_idx: np.ndarray
  benign_images: np.ndarray
  benign_source: np.ndarray
  poisoned_images: np.ndarray
  poisoned_source: np.ndarray
  num_poisoned: int
  num_poisoned_all: int
  asr: float | None


def build_eval_arrays(key, images, labels, num_classes: int, target: int, poison_fn, *,
                      predict_fn=None, protocol: str | None = None, **settings) -> EvalArrays:
  """Splits a test set into defender images, negatives and positives.

  1. ``split_test_set``: ``num_defense_per_class`` images per class for the
     defender; up to ``num_images`` (0 = all) of the others are the
     evaluation images.
  2. Positives: ``poison_fn`` applied to the evaluation images whose true
     class is not ``target`` (target-class sources dropped) and, for a partial
     backdoor, is one of ``source_classes``, JPEG
     re-encoded with ``jpeg_match`` (:func:`scaleup_jax.jpeg.jpeg_roundtrip`),
     and with ``successful_only`` only those ``predict_fn`` sends to the target.
  3. ``noise_copies`` noisy copies (``noise_kind``, ``noise_magnitude``;
     :func:`add_noise_copies`) of every negative and every positive.

  Keys: ``k_split, k_noise_benign, k_noise_poisoned = jax.random.split(key, 3)``.

  Args:
    key: PRNG key.
    images: ``(N, H, W, C)`` float test images in [0, 1].
    labels: ``(N,)`` their true labels.
    num_classes: K.
    target: the backdoor's target class.
    poison_fn: ``images -> poisoned images`` (e.g. ``Trigger.apply``).
    predict_fn: ``images -> labels``; needed for ``successful_only``.
    protocol: None, or a name of :data:`PROTOCOLS` (``'paper'``: 100 defender
      images per class, one uniform noisy copy of magnitude 0.02, successful
      positives only). Settings given explicitly must agree with it.
    **settings: ``num_defense_per_class`` (100), ``num_images`` (0),
      ``noise_copies`` (0), ``noise_kind`` ('uniform'), ``noise_magnitude``
      (0.02), ``successful_only`` (False), ``jpeg_match`` (False),
      ``source_classes`` (None: every class but the target).

  Returns:
    An :class:`EvalArrays`.

  Example:
    >>> ev = build_eval_arrays(jax.random.key(0), x_test, y_test, 10, 3, trigger.apply,
    ...                        predict_fn=predict, protocol='paper')
    >>> len(ev.benign_images) == 2 * len(ev.eval_idx)     # one noisy copy each
    True

  References:
    Guo et al. 2023, Sec. 5.1 ("Settings for Evaluation Datasets", "Defense Baselines").
  """
  unknown = set(settings) - set(_BUILD_DEFAULTS)
  if unknown:
    raise InputError(f'unknown evaluation-set settings {sorted(unknown)}; expected some of '
                     f'{sorted(_BUILD_DEFAULTS)}')
  if protocol is not None and protocol not in _BUILD_PROTOCOLS:
    raise InputError(f'unknown protocol {protocol!r}; expected None or one of {tuple(_BUILD_PROTOCOLS)}')
  preset = _BUILD_PROTOCOLS.get(protocol, {})
  for name, value in settings.items():
    if name in preset and value != preset[name]:
      raise InputError(f'protocol {protocol!r} sets {name}={preset[name]!r}; got {name}={value!r}')
  cfg = {**_BUILD_DEFAULTS, **preset, **settings}
  labels = np.asarray(labels)
  if len(labels) != len(images):
    raise InputError(f'{len(images)} images but {len(labels)} labels')
  if not 0 <= int(target) < num_classes:
    raise InputError(f'target {target} is not a class in [0, {num_classes})')
  if cfg['successful_only'] and predict_fn is None:
    raise InputError('successful_only (the paper protocol) needs predict_fn to find the '
                     'successfully attacked images')

  k_split, k_noise_b, k_noise_p = jax.random.split(key, 3)
  defense_idx, eval_idx = split_test_set(k_split, labels, num_classes,
                                         cfg['num_defense_per_class'], cfg['num_images'])
  if len(eval_idx) == 0:
    raise InputError('no evaluation images left after the defender set; lower --num_defense_per_class')
  benign = np.asarray(images[eval_idx], np.float32)
  keep = labels[eval_idx] != target
  if cfg['source_classes'] is not None:
    keep &= np.isin(labels[eval_idx], np.asarray(cfg['source_classes'], np.int64))
  pois_src = eval_idx[keep]
  pois = np.asarray(poison_fn(np.asarray(images[pois_src], np.float32)), np.float32)
  if cfg['jpeg_match'] and len(pois):
    pois = jpeg.jpeg_roundtrip(pois)
  num_all, asr = len(pois), None
  if predict_fn is not None and len(pois):
    hit = np.asarray(predict_fn(pois)) == target
    asr = float(hit.mean())
    if cfg['successful_only']:
      pois, pois_src = pois[hit], pois_src[hit]
  c = cfg['noise_copies']
  benign_src = np.tile(eval_idx, 1 + c)
  poisoned_src = np.tile(pois_src, 1 + c)
  if c:
    benign = np.concatenate([benign, add_noise_copies(k_noise_b, benign, c, cfg['noise_kind'],
                                                      cfg['noise_magnitude'])])
    if len(pois):
      pois = np.concatenate([pois, add_noise_copies(k_noise_p, pois, c, cfg['noise_kind'],
                                                    cfg['noise_magnitude'])])
  return EvalArrays(defense_idx, eval_idx, benign, benign_src, pois, poisoned_src,
                    len(pois_src), num_all, asr)


@dataclasses.dataclass
class EvalSet:
  """The images one evaluation scores (see :func:`prepare_eval_set`)."""

  run: ckpt_lib.LoadedRun
  test: data_lib.ImageDataset
  defense_idx: np.ndarray  # indices into ``test`` held by the defender
  benign: data_lib.ImageDataset  # evaluation images (clean)
  benign_images: np.ndarray  # plus noise copies, if any
  poisoned_images: np.ndarray  # triggered non-target evaluation images, plus noise copies
  num_poisoned: int  # poisoned images before noise copies
  # With protocol='paper' the positives are filtered to the successful ones before
  # their copies are made; ``asr`` is then measured on all poisoned images first.
  asr: float | None = None
  protocol: str | None = None

  @property
  def defense(self) -> data_lib.ImageDataset:
    return self.test.take(self.defense_idx)


def _check_options(opts: DetectOptions) -> None:
  if opts.mode not in MODES:
    raise InputError(f'unknown mode {opts.mode!r}; expected one of {MODES}')
  if opts.batch_size < 1:
    raise InputError(f'batch_size must be >= 1, got {opts.batch_size}')
  if opts.noise_copies < 0 or not opts.noise_magnitude >= 0:
    raise InputError(f'noise_copies and noise_magnitude must be >= 0; got {opts.noise_copies}, '
                     f'{opts.noise_magnitude}')
  if opts.noise_kind not in NOISE_KINDS:
    raise InputError(f'unknown noise_kind {opts.noise_kind!r}; expected one of {NOISE_KINDS}')
  if opts.data_limited_form not in scaleup.DATA_LIMITED_FORMS:
    raise InputError(f'unknown data_limited_form {opts.data_limited_form!r}; expected one of '
                     f'{scaleup.DATA_LIMITED_FORMS}')
  if opts.group_by not in scaleup.GROUP_BY:
    raise InputError(f'unknown group_by {opts.group_by!r}; expected one of {scaleup.GROUP_BY}')
  resolve_protocol(opts)  # an unknown protocol or a conflicting option fails here
  scaleup.resolve_method(opts.method, opts.batch_size)  # an unknown method fails here
  detectors.select_modes(opts.detector, opts.mode)  # an unknown detector or mode fails here
  detector_options(opts)  # an option the detector does not take fails here
  _check_operating_options(opts)


def prepare_eval_set(opts: DetectOptions) -> EvalSet:
  """Loads the run and its test set and splits it into defender and evaluation images.

  The split and the noise depend only on ``opts.seed`` (and the sizes), so
  every detector evaluated with the same options sees the same images. The
  images come from :func:`build_eval_arrays`; ``opts.protocol`` (see
  :data:`PROTOCOLS`) and ``opts.jpeg_match`` are applied there.
  """
  _check_options(opts)
  opts = resolve_protocol(opts)
  ckpt = paths.resolve_ckpt(opts.ckpt) if opts.ckpt else paths.zoo_model(paths.DEFAULT_MODEL)
  run = ckpt_lib.load_run(ckpt)
  if run.trigger is None:
    raise InputError(f'{str(ckpt)!r} is a clean model (no trigger.npz): there is no poisoned test set to detect')
  run = ckpt_lib.select_backdoor(run, opts.backdoor)
  cfg = run.config
  test = data_lib.load_split(cfg.dataset, 'test', opts.data_dir or cfg.get('data_dir'),
                            download=opts.download)
  predict = None
  if opts.protocol in PAPER_PROTOCOLS:
    classify = jax.jit(scaleup.classifier_from_logits(run.apply_fn, run.variables))
    predict = lambda x: map_batches(classify, x, opts.batch_size)
  arrays = build_eval_arrays(
      jax.random.key(opts.seed), test.images, test.labels, test.num_classes, run.target,
      run.trigger.apply, predict_fn=predict, num_defense_per_class=opts.num_defense_per_class,
      num_images=opts.num_images, noise_copies=opts.noise_copies, noise_kind=opts.noise_kind,
      noise_magnitude=opts.noise_magnitude, successful_only=opts.protocol in PAPER_PROTOCOLS,
      jpeg_match=opts.jpeg_match, source_classes=attacks.source_classes(cfg))
  if arrays.num_poisoned == 0:
    raise InputError(f'no poisoned evaluation image is classified as the target {run.target} '
                     '(ASR = 0): the paper protocol has no positives')
  return EvalSet(run, test, arrays.defense_idx, test.take(arrays.eval_idx), arrays.benign_images,
                 arrays.poisoned_images, arrays.num_poisoned, arrays.asr, opts.protocol)


# DetectOptions fields that are detector options (passed to detectors.make when the
# detector takes them; an error when set for one that does not).
_DETECTOR_FIELDS = ('scales', 'dense_scales', 'method', 'data_limited_form', 'group_by')


def detector_options(opts: DetectOptions) -> dict:
  """The keyword options for ``detectors.make(opts.detector, ...)``.

  ``opts.detector_options`` plus the fields of :data:`_DETECTOR_FIELDS` that the
  detector takes (``--scales`` for SCALE-UP). A field set away from its default
  for a detector that does not take it, or given twice with two values, raises.
  """
  name = detectors.canonical_name(opts.detector)
  allowed = detectors.spec(name).option_names()
  defaults = {f.name: f.default for f in dataclasses.fields(DetectOptions)}
  out = dict(opts.detector_options)
  for field in _DETECTOR_FIELDS:
    value = getattr(opts, field)
    if field in allowed:
      if field in out and out[field] != value and value != defaults[field]:
        raise InputError(f'{field} given twice for {name!r}: --{field} {value!r} and '
                         f'--detector_options {field}={out[field]!r}')
      out.setdefault(field, tuple(value) if isinstance(value, list) else value)
    elif value != defaults[field]:
      raise InputError(f'detector {name!r} has no option {field!r} (got --{field} {value!r}); '
                       f'its options: {list(allowed)}')
  return out


def build_detector(opts: DetectOptions, ev: EvalSet) -> detectors.Detector:
  """``detectors.make(opts.detector, ...)`` for the model and defender images of ``ev``.

  The detector's key is ``fold_in(key(opts.seed), 7)``.
  """
  defense = ev.defense
  return detectors.make(opts.detector, ev.run.apply_fn, ev.run.variables,
                        key=jax.random.fold_in(jax.random.key(opts.seed), 7),
                        benign_images=defense.images if len(defense) else None,
                        benign_labels=defense.labels if len(defense) else None,
                        **detector_options(opts))


def evaluate_detection(opts: DetectOptions, eval_set: EvalSet | None = None) -> dict:
  """Runs a detector on a run directory's test set; see the module docstring.

  Every registered detector goes the same way: :func:`build_detector`, its
  ``raw`` outputs batched over the held-out benign, poisoned and (when a mode is
  fitted or operating points are asked for) defender images, ``fit`` on the
  defender's outputs, ``score`` for every mode; operating points for a detector
  whose outputs are label matrices.

  Args:
    opts: the options (``opts.detector`` picks SCALE-UP or a baseline).
    eval_set: images from :func:`prepare_eval_set` with the same options, to
      share loading across detectors; built here if None.

  Returns:
    The result dictionary that is also written to JSON.
  """
  _check_options(opts)
  opts = resolve_protocol(opts)
  name = detectors.canonical_name(opts.detector)
  title = detectors.spec(name).title
  wanted = detectors.select_modes(name, opts.mode)
  ev = eval_set if eval_set is not None else prepare_eval_set(opts)
  run, benign, shape = ev.run, ev.benign, ev.benign.images.shape[1:]
  ckpt, cfg = run.path, run.config
  t0 = time.perf_counter()
  det = build_detector(opts, ev)
  build_s = time.perf_counter() - t0
  raw = lambda x: det.raw(run.variables, x)
  run_batches = lambda images, desc: scaleup.detect_batched(
      raw, images, opts.batch_size, None, shape, opts.progress, desc)

  t0 = time.perf_counter()
  warm = ev.benign_images
  warm = warm[: opts.batch_size] if len(warm) >= opts.batch_size else np.resize(
      warm, (opts.batch_size, *shape))
  jax.block_until_ready(raw(warm))
  compile_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  b_out = run_batches(ev.benign_images, 'benign')
  p_out = run_batches(ev.poisoned_images, 'poisoned')
  seconds = time.perf_counter() - t0
  calibrates = det.outputs == 'label_matrix' and bool(opts.alphas)
  fitted = [m for m in wanted if m in det.fitted_modes]
  if fitted and len(ev.defense_idx) == 0:
    raise InputError(f'mode(s) {fitted} of {title} need defender images; '
                     '--num_defense_per_class is 0')
  d_out = state = None
  if len(ev.defense_idx) and (fitted or calibrates):
    d_out = run_batches(ev.test.images[ev.defense_idx], 'defender')
  if fitted:
    state = det.fit(d_out, ev.test.labels[ev.defense_idx], ev.test.num_classes)
  b_pred, b_scores = det.score(b_out, state)
  p_pred, p_scores = det.score(p_out, state)
  n_scored = len(ev.benign_images) + len(ev.poisoned_images)

  ba = float(np.mean(b_pred[: len(benign)] == benign.labels))
  success = p_pred == run.target
  # The paper protocol keeps only successful positives; its ASR was measured before.
  asr = ev.asr if ev.asr is not None else float(np.mean(success[: ev.num_poisoned]))
  keep = np.ones_like(success) if opts.keep_all_poisoned else success
  if not keep.any():
    raise InputError('no poisoned image is classified as the target (ASR = 0); '
                     'pass --keep_all_poisoned to score them anyway')

  result = {
      'ckpt': str(ckpt), 'attack': cfg.attack, 'model': cfg.model, 'detector': name,
      'detector_config': det.config, 'target_label': run.target, 'backdoor': opts.backdoor,
      'scales': det.config.get('scales'), 'method': det.config.get('method'), 'seed': opts.seed,
      'ba': ba, 'asr': asr, 'num_benign': int(len(ev.benign_images)),
      'num_poisoned_total': int(len(ev.poisoned_images)),
      'positives': 'all poisoned' if opts.keep_all_poisoned else 'successfully attacked poisoned',
      'num_positives': int(keep.sum()), 'noise_copies': opts.noise_copies,
      'noise_kind': opts.noise_kind if opts.noise_copies else None,
      'noise_magnitude': opts.noise_magnitude if opts.noise_copies else None,
      'protocol': opts.protocol, 'jpeg_match': opts.jpeg_match,
      'detection': {},
      'throughput': {'images_per_second': n_scored / seconds, 'seconds': seconds,
                     'images': n_scored, 'batch_size': opts.batch_size,
                     'forwards_per_image': det.forwards_per_image, 'compile_seconds': compile_s,
                     'build_seconds': build_s, 'device': jax.devices()[0].device_kind},
  }
  if state is not None:
    result['num_defense'] = int(len(ev.defense_idx))
    if det.describe_state is not None:
      result.update(det.describe_state(state))
  scores = {m: (b_scores[m], p_scores[m][keep]) for m in wanted}
  for mode_name, (b, p) in scores.items():
    result['detection'][mode_name] = detection_metrics(b, p)
  if calibrates:
    result['operating_points'], result['calibration'] = operating_points(
        opts, ev, tuple(det.config['grid']), d_out, b_out, p_out[keep])

  first = detectors.select_modes(name, 'both')[0]
  b_first, p_first = b_scores[first], p_scores[first]
  default_name = 'detect.json' if name == detectors.DEFAULT else f'detect_{name}.json'
  out = Path(opts.out) if opts.out else Path('runs/detect') / ckpt.name / default_name
  out.parent.mkdir(parents=True, exist_ok=True)
  from scaleup_jax import integrity  # atomic, with a checksum: integrity.load_npz_checked(path, 'scores')
  integrity.atomic_write_text(out, json.dumps(result, indent=2))
  integrity.save_npz_checked(out.with_suffix('.scores.npz'), 'scores', benign_score=b_first,
                             benign_pred=b_pred, poisoned_score=p_first, poisoned_pred=p_pred,
                             successful=success)
  result['json_path'] = str(out)
  if opts.plot:
    label = ckpt.name if name == detectors.DEFAULT else f'{ckpt.name} ({name})'
    result['plot_path'] = str(plot_scores(scores, out.with_suffix('.png'), label, title))
  return result


def plot_scores(scores: dict, path: Path, title: str, detector: str = 'SCALE-UP') -> Path:
  """Histogram of benign vs poisoned scores per mode and their ROC curves."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(scores)
  fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.4))
  for ax, name in zip(axes, names):
    b, p = scores[name]
    bins = np.linspace(min(b.min(), p.min()), max(b.max(), p.max()) + 1e-6, 25)
    ax.hist(b, bins, alpha=0.6, density=True, label='benign')
    ax.hist(p, bins, alpha=0.6, density=True, label='poisoned')
    ax.set_title(name)
    ax.set_xlabel('score')
    ax.legend()
  roc = axes[-1]
  for name in names:
    fpr, tpr = roc_points(*scores[name])
    roc.plot(fpr, tpr, label=name)
  roc.plot([0, 1], [0, 1], 'k:', lw=0.8)
  roc.set_xlabel('false-positive rate')
  roc.set_ylabel('true-positive rate')
  roc.set_title('ROC')
  roc.legend(fontsize=8)
  fig.suptitle(f'{detector} on {title}')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def format_summary(result: dict) -> str:
  """The human-readable report of a result dictionary, with a legend.

  Names every column in words, marks the paper's modes, and explains any
  rate that is zero or undefined in one line. The JSON (``result``) carries
  the same numbers.
  """
  det = result.get('detector', detectors.DEFAULT)
  title = detectors.spec(det).title
  target = result.get('target_label')
  lines = [f"model {result['ckpt']}  (attack {result.get('attack')}, backdoor target class {target})  "
           f"detector {title}",
           f"BA {result['ba']:.4f} (benign accuracy on the evaluation images)   "
           f"ASR {result['asr']:.4f} (fraction of triggered images sent to the target)",
           f"negatives: {result['num_benign']} benign evaluation images   positives: "
           f"{result['num_positives']} {result['positives']} images"]
  lines += ['', 'Ranking (threshold-free): AUROC = probability that a positive scores above a '
            'negative (0.5 = chance).']
  lines.append(f"  {'score':<48}{'AUROC':>7}")
  for name, m in result['detection'].items():
    lines.append(f"  {_mode_words(name):<48}{m['auroc']:>7.4f}")
  if any(m in _MODE_NOTES for m in result['detection']):
    lines.append(_MODE_NOTES[next(m for m in result['detection'] if m in _MODE_NOTES)])
  ops = result.get('operating_points')
  cal = result.get('calibration') or {}
  if ops:
    lines += ['', f"Operating points: threshold calibrated on {cal.get('num_calibration')} defender "
              f"benign images ({cal.get('rule')} rule: {cal.get('guarantee_short')}), measured on "
              'the held-out evaluation images.',
              '  legend: alpha = false-positive budget; rule = flag a score s > t, and s = t '
              'with probability p (seeded coin); FPR = held-out benign images flagged; TPR = '
              'positives flagged; [..] = exact 95% Clopper-Pearson interval; cost = forward '
              'passes per image; * = the paper\'s mode.']
    if cal.get('heldout_note'):
      lines.append(f"  note: {cal['heldout_note']}")
    lines.append(f"  {'score':<42}{'cost':>5}{'AUROC':>7}  {'alpha':>5}  {'rule':<29}"
                 f"{'FPR [95% CI]':<26}{'TPR [95% CI]'}")
    for name, entry in ops.items():
      first = True
      for a_key, op in entry['alphas'].items():
        label = (('* ' if entry['paper'] else '  ') + entry['label']) if first else ''
        cost = f"{entry['forwards_per_image']:>5}" if first else ' ' * 5
        auc = f"{entry['auroc']:>7.4f}" if first else ' ' * 7
        t = f"{float(op['threshold']):.4g}"
        rule = f"s>{t}, s={t}: p={op['tie_prob']:.3f}" if op['feasible'] else 'flags nothing (n small)'
        lines.append(f"  {label:<42}{cost}{auc}  {float(a_key):>5.0%}  {rule:<29}"
                     f"{_rate(op['fpr']):<26}{_rate(op['tpr'])}")
        if op.get('reading'):
          lines.append(f"  {'':<42}{'':>12}  -> {op['reading']}")
        first = False
    lines.append('  FPR within sampling error of alpha at every budget: '
                 + ('yes' if all(op['within_sampling_error'] for e in ops.values()
                                 for op in e['alphas'].values()) else
                    'NO (see the readings above)'))
  elif cal.get('note'):
    lines += ['', f"Operating points: {cal['note']}"]
  elif not result.get('detector_config', {}).get('grid'):
    lines += ['', f'Operating points are calibrated for label-matrix scores (SCALE-UP\'s) only; '
              f'the JSON holds {title}\'s AUROC and its deterministic TPR at 1% / 5% FPR.']
  t = result['throughput']
  lines += ['', f"throughput {t['images_per_second']:.1f} images/s "
            f"(batch {t['batch_size']}, {t['forwards_per_image']} forward passes each, "
            f"compile {t['compile_seconds']:.1f}s, {t['device']})",
            f"wrote {result['json_path']}"]
  return '\n'.join(lines)


_MODE_WORDS = {
    'data-free': '* data-free SPC (Eq. 1-2)',
    'data-limited': '* data-limited, per-class standardised (Eq. 3-4)',
    'data-limited-global': '  data-limited, one global mean/std (BackdoorBox)',
}


_MODE_NOTES = {m: ('  * the paper\'s SCALE-UP: data-free = Eq. 1-2, data-limited = Eq. 3-4; '
                   'the global variant is a monotone map of SPC (same AUROC).')
               for m in ('data-free', 'data-limited')}


def _mode_words(name: str) -> str:
  return _MODE_WORDS.get(name, f'  {name}')


def _rate(r: dict) -> str:
  lo, hi = r['interval']
  return f"{r['rate']:.4f} [{lo:.4f}, {hi:.4f}]"


# ---------------------------------------------------------------- operating points

GUARANTEES = {
    'conformal': ('E[FPR] <= alpha for exchangeable benign images',
                  'conformal order statistic with a randomised tie: alpha - 1/(n+1) < '
                  'P(flag a fresh benign image) <= alpha, over the calibration draw, the image '
                  'and the coin, if calibration and test benign images are exchangeable '
                  '(marginal, not per calibration set)'),
    'plugin': ('exact alpha on the calibration images, no finite-sample bound',
               'Neyman-Pearson randomised test on the empirical calibration distribution: it '
               'flags exactly alpha of the calibration images in expectation; no finite-sample '
               'bound on fresh images'),
}


@dataclasses.dataclass(frozen=True)
class ScoreVariant:
  """One label-only score of the operating-point table.

  Attributes:
    name: its key in the JSON.
    score: one of :data:`scaleup.LABEL_SCORES`.
    factors: the grid of the label-matrix columns it reads.
    label: a few words for the printed table.
    paper: ``'Eq. 1-2'`` / ``'Eq. 3-4'`` for the paper's modes, else None.
    base: the base score of ``class_rank``.
  """

  name: str
  score: str
  factors: tuple
  label: str
  paper: str | None = None
  base: str = 'spc'


def _check_operating_options(opts: DetectOptions) -> None:
  for a in (*opts.alphas, *opts.curve_alphas):
    if not 0.0 < float(a) < 1.0:
      raise InputError(f'false-positive budgets must lie in (0, 1); got {a!r}')
  if opts.calibration_rule not in calibration.RULES:
    raise InputError(f'unknown calibration rule {opts.calibration_rule!r}; expected one of '
                     f'{calibration.RULES}')
  if opts.dense_scales:
    scaleup.check_scales(opts.dense_scales)


def score_variants(mode: str, scales, dense_scales=()) -> list[ScoreVariant]:
  """The label-only scores reported for ``mode`` (``'data-free'``, ``'data-limited'``, ``'both'``).

  Data-free: SPC (the paper's Eq. 1-2), the survival scale and ``spc_sat``; data-limited:
  the paper's Eq. 3-4 and ``class_rank``. With ``dense_scales`` the finer scores are also
  read on that grid (suffix ``@dense``).
  """
  paper = tuple(sorted({float(s) for s in np.asarray(scales).tolist()}))
  free = [ScoreVariant('data-free', 'spc', paper, 'data-free SPC (Eq. 1-2)', 'Eq. 1-2'),
          ScoreVariant('survival', 'survival', paper, 'survival scale'),
          ScoreVariant('spc_sat', 'spc_sat', paper, 'SPC, saturation tie-break (ours)')]
  limited = [ScoreVariant('data-limited', 'data_limited', paper,
                          'data-limited standardised SPC (Eq. 3-4)', 'Eq. 3-4'),
             ScoreVariant('class_rank', 'class_rank', paper, 'class-conditional rank of SPC (ours)')]
  if dense_scales:
    dense = scaleup.check_factors(sorted({float(s) for s in np.asarray(dense_scales).tolist()}))
    tag = f'{len(dense)} scales'
    free += [ScoreVariant('spc@dense', 'spc', dense, f'SPC on {tag}'),
             ScoreVariant('survival@dense', 'survival', dense, f'survival scale on {tag}'),
             ScoreVariant('spc_sat@dense', 'spc_sat', dense, f'SPC sat. tie-break, {tag} (ours)')]
    limited += [ScoreVariant('class_rank@dense', 'class_rank', dense,
                             f'class rank of SPC on {tag} (ours)')]
  return {'data-free': free, 'data-limited': limited, 'both': free + limited}[mode]


def fit_calibration_split(defense_labels) -> np.ndarray:
  """bool mask over the defender images: True for the half that *fits* a score.

  Per class, the first ``ceil(n_k / 2)`` of its defender images (in their
  order) fit what a score learns from benign images (data-limited class
  statistics, ``class_rank`` tables); the rest calibrate it. Scores that fit
  nothing calibrate on every defender image.
  """
  labels = np.asarray(defense_labels)
  fit = np.zeros(labels.shape, bool)
  for k in np.unique(labels):
    idx = np.flatnonzero(labels == k)
    fit[idx[: (len(idx) + 1) // 2]] = True
  return fit


def operating_points(opts: DetectOptions, ev: EvalSet, grid, d_lm, b_lm, p_lm):
  """Calibrated operating points of every label-only score (see :func:`score_variants`).

  Calibration images are the defender's (disjoint from the evaluation images);
  the realised rates are measured on the held-out benign evaluation images and
  the positives. Tie coins come from ``fold_in(key(seed), 23)``.

  Args:
    opts: the options (``alphas``, ``calibration_rule``, ``dense_scales``,
      ``curve_alphas``, ``save_detectors``, ``mode``, ``seed``).
    ev: the evaluation set (for the defender labels and the model).
    grid: the factors of the label matrices' columns.
    d_lm, b_lm, p_lm: label matrices of the defender, held-out benign and
      positive images (``d_lm`` None when there are no defender images).

  Returns:
    ``(points, calibration_record)``: ``points[name]`` holds the score's words,
    cost, AUROC and ``alphas[f'{alpha:g}']`` =
    :func:`calibration.operating_point`; the record says how it was calibrated.
  """
  rule = opts.calibration_rule
  record = {'rule': rule, 'guarantee_short': GUARANTEES[rule][0], 'guarantee': GUARANTEES[rule][1],
            'confidence': 0.95, 'heldout_benign': int(len(b_lm)), 'positives': int(len(p_lm)),
            'calibration_images': 'defender images (num_defense_per_class per class), disjoint '
                                  'from the evaluation images',
            'fitted_scores': 'fit on the first half of each class\'s defender images, '
                             'calibrated on the second half'}
  if opts.noise_copies:
    record['heldout_note'] = (f'the held-out images include {opts.noise_copies} noisy copies of '
                              'each evaluation image: not independent, so the binomial intervals '
                              'are too narrow')
  if d_lm is None:
    record['note'] = ('none: --num_defense_per_class 0 leaves no benign images to calibrate a '
                      'threshold on')
    return {}, record
  run, shape = ev.run, ev.benign.images.shape[1:]
  d_labels = ev.test.labels[ev.defense_idx]
  fit = fit_calibration_split(d_labels)
  sat = scaleup.saturation_label(run.apply_fn, run.variables, shape)
  record.update(num_calibration=int(len(d_lm)), num_fit=int(fit.sum()), saturation_label=sat)
  key = jax.random.fold_in(jax.random.key(opts.seed), 23)
  fingerprint = calibration.model_fingerprint(run.variables) if opts.save_detectors else None
  points = {}
  for i, v in enumerate(score_variants(opts.mode, opts.scales, opts.dense_scales)):
    sub = lambda lm: scaleup.select_factors(lm, grid, v.factors)[0]
    fitted = v.score in scaleup.FITTED_SCORES
    cal_mask = ~fit if fitted else np.ones(len(d_lm), bool)
    params = scaleup.fit_label_score(
        v.score, sub(d_lm[fit]), v.factors, ev.test.num_classes, saturation=sat, base=v.base,
        form=opts.data_limited_form, group_by=opts.group_by, labels=d_labels[fit])
    score = lambda lm: scaleup.label_score(v.score, sub(lm), v.factors, params)
    cal, b, p = score(d_lm[cal_mask]), score(b_lm), score(p_lm)
    entry = {'label': v.label, 'paper': v.paper, 'score': v.score, 'factors': list(v.factors),
             'forwards_per_image': scaleup.score_forwards(v.factors),
             'per_model_forwards': 1 if v.score == 'spc_sat' else 0,
             'num_calibration': int(cal_mask.sum()), 'num_fit': int(fit.sum()) if fitted else 0,
             'auroc': auroc(b, p), 'alphas': {}}
    for j, a in enumerate(opts.alphas):
      thr = calibration.calibrate_threshold(cal, a, rule)
      entry['alphas'][f'{a:g}'] = calibration.operating_point(
          jax.random.fold_in(jax.random.fold_in(key, i), j), thr, b, p)
      if opts.save_detectors:
        det = calibration.CalibratedDetector(
            v.score, v.factors, thr, fingerprint, params,
            {'ckpt': str(run.path), 'variant': v.name, 'seed': opts.seed,
             'calibration_images': int(cal_mask.sum())})
        entry['alphas'][f'{a:g}']['detector_path'] = str(det.save(
            Path(opts.save_detectors) / f"{v.name.replace('@', '_')}_alpha{a:g}.json"))
    if opts.curve_alphas:
      curve = {'alpha': [], 'fpr': [], 'tpr': []}
      for a in opts.curve_alphas:
        thr = calibration.calibrate_threshold(cal, a, rule)
        curve['alpha'].append(float(a))
        curve['fpr'].append(float(calibration.flag_probability(b, thr).mean()))
        curve['tpr'].append(float(calibration.flag_probability(p, thr).mean()))
      entry['curve'] = curve
    points[v.name] = entry
  return points, record
