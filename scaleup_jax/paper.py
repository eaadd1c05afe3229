"""The SCALE-UP paper's own numbers, transcribed with their table or section.

Every number here was copied from the paper's text (a PDF-to-text conversion
whose table headers are partly garbled) and checked against it a second time;
each table also stores its printed ``Average`` column, and
``tests/test_protocol.py`` checks that the printed averages agree with the
rows to rounding. They do for every row of Tables 1 and 6 and Table 7's
CIFAR-10 rows; three printed averages do not match their own rows in the
paper (Table 2 ShrinkPad, Table 7's two Tiny ImageNet rows), see the
comments at :data:`TABLE2` and :data:`TABLE7`. Where the conversion garbled a
header, the comment says how the column was identified; no number was
guessed.

    >>> from scaleup_jax import paper
    >>> paper.TABLE1.cell('Ours (data-free)', 'WaNet')
    0.918
    >>> paper.TABLE1.source
    'Guo et al. 2023, Table 1 (CIFAR-10, ResNet)'
    >>> paper.table1_by_detector()[('wanet', 'scaleup', 'data-free')]
    0.918

Row and column names are the paper's; :data:`ATTACK_NAMES` and
:data:`DEFENSE_NAMES` map them to this project's attack names
(``config.attack``) and ``(detector, mode)`` pairs
(:func:`scaleup_jax.compare.columns`).

References:
  Guo, Li, Chen, Guo, Sun, Liu. "SCALE-UP: An Efficient Black-box Input-level
  Backdoor Detection via Analyzing Scaled Prediction Consistency". ICLR 2023.
  https://arxiv.org/abs/2302.03251
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

PAPER = 'Guo et al. 2023'

ATTACKS = ('BadNets', 'Label-Consistent', 'PhysicalBA', 'TUAP', 'WaNet', 'ISSBA')
DEFENSES = ('STRIP', 'ShrinkPad', 'DeepSweep', 'Frequency', 'Ours (data-free)',
            'Ours (data-limited)')
# The paper's column names -> this project's ``config.attack``.
ATTACK_NAMES = {'BadNets': 'badnets', 'Label-Consistent': 'label_consistent',
                'PhysicalBA': 'physical', 'TUAP': 'tuap', 'WaNet': 'wanet', 'ISSBA': 'issba'}
# The paper's row names -> (detector of scaleup_jax.detectors, detection mode of evaluate).
DEFENSE_NAMES = {'STRIP': ('strip', 'strip'), 'ShrinkPad': ('shrinkpad', 'shrinkpad'),
                 'DeepSweep': ('deepsweep', 'deepsweep'), 'Frequency': ('frequency', 'frequency'),
                 'Ours (data-free)': ('scaleup', 'data-free'),
                 'Ours (data-limited)': ('scaleup', 'data-limited')}


@dataclasses.dataclass(frozen=True)
class PaperTable:
  """One table of the paper: ``values[i][j]`` is row ``rows[i]``, column ``columns[j]``.

  Attributes:
    name: e.g. ``'Table 1'``.
    source: where it was read, for printing beside our numbers.
    rows, columns: the paper's row and column names.
    values: ``(len(rows), len(columns))`` nested tuples of floats.
    average: the printed ``Average`` column, ``(len(rows),)``, or None if the
      table has none.
    notes: what the conversion garbled and how it was read.
  """

  name: str
  source: str
  rows: tuple
  columns: tuple
  values: tuple
  average: tuple | None = None
  notes: str = ''

  def __post_init__(self):
    if len(self.values) != len(self.rows) or any(len(r) != len(self.columns) for r in self.values):
      raise ValueError(f'{self.name}: values must be {len(self.rows)} x {len(self.columns)}; got '
                       f'{[len(r) for r in self.values]}')
    if self.average is not None and len(self.average) != len(self.rows):
      raise ValueError(f'{self.name}: average needs {len(self.rows)} entries; got {len(self.average)}')

  @property
  def shape(self) -> tuple[int, int]:
    return len(self.rows), len(self.columns)

  def cell(self, row: str, column: str) -> float:
    """The number at ``row`` x ``column``; unknown names raise ``KeyError`` naming them."""
    if row not in self.rows:
      raise KeyError(f'{self.name} has no row {row!r}; rows: {self.rows}')
    if column not in self.columns:
      raise KeyError(f'{self.name} has no column {column!r}; columns: {self.columns}')
    return self.values[self.rows.index(row)][self.columns.index(column)]

  def as_dict(self) -> dict:
    """``{(row, column): value}``."""
    return {(r, c): v for r, vals in zip(self.rows, self.values) for c, v in zip(self.columns, vals)}


# ------------------------------------------------------------------ Table 1
# CIFAR-10, ResNet. The clean header row stands above the caption; the header
# under it is garbled ("Dauriets Laber-Consistent 1 hysicaid/1 10/11 Warter
# 1000/1 Average") but has the same seven columns in the same order.
TABLE1 = PaperTable(
    name='Table 1', source=f'{PAPER}, Table 1 (CIFAR-10, ResNet)',
    rows=DEFENSES, columns=ATTACKS,
    values=(
        (0.989, 0.941, 0.971, 0.671, 0.475, 0.498),  # STRIP
        (0.951, 0.957, 0.631, 0.869, 0.531, 0.513),  # ShrinkPad
        (0.967, 0.921, 0.946, 0.743, 0.506, 0.729),  # DeepSweep
        (0.891, 0.889, 0.881, 0.851, 0.461, 0.497),  # Frequency
        (0.971, 0.947, 0.969, 0.816, 0.918, 0.945),  # Ours (data-free)
        (0.971, 0.954, 0.970, 0.830, 0.925, 0.945),  # Ours (data-limited)
    ),
    average=(0.758, 0.742, 0.802, 0.745, 0.928, 0.933),
    notes='AUROC. Header row garbled in the conversion; the clean header above the caption '
          'gives the column order. STRIP uses probabilities, the others labels only.')

# ------------------------------------------------------------------ Table 2
# The printed ShrinkPad average 0.737 does not match its row (mean 0.723);
# stored as printed.
TABLE2 = PaperTable(
    name='Table 2', source=f'{PAPER}, Table 2 (Tiny ImageNet, ResNet)',
    rows=DEFENSES, columns=ATTACKS,
    values=(
        (0.959, 0.939, 0.959, 0.638, 0.501, 0.471),  # STRIP
        (0.871, 0.938, 0.672, 0.866, 0.498, 0.492),  # ShrinkPad
        (0.951, 0.930, 0.939, 0.759, 0.503, 0.714),  # DeepSweep
        (0.864, 0.859, 0.864, 0.837, 0.428, 0.540),  # Frequency
        (0.936, 0.904, 0.939, 0.763, 0.943, 0.948),  # Ours (data-free)
        (0.947, 0.911, 0.939, 0.763, 0.946, 0.949),  # Ours (data-limited)
    ),
    average=(0.745, 0.737, 0.799, 0.732, 0.905, 0.909),
    notes='AUROC. Header readable. The printed ShrinkPad average (0.737) is not the mean of its '
          'row (0.723) in the paper itself; the row was checked twice against the text.')

# ------------------------------------------------------------------ Table 4
# Header garbled ("Task Model  Infected l Model  Normal Model Acquracy",
# "138k↓ WIOdel →  BA  ASR  Normal Woder Accuracy"); read as infected-model BA,
# infected-model ASR, normal (clean) model accuracy. Values are lower bounds
# ("≥") over the evaluated models.
TABLE4 = PaperTable(
    name='Table 4', source=f'{PAPER}, Table 4 (BA and ASR of the evaluated models, lower bounds)',
    rows=('CIFAR-10', 'Tiny ImageNet'), columns=('infected BA', 'infected ASR', 'clean accuracy'),
    values=((0.9004, 0.977, 0.9231), (0.3698, 0.9722, 0.4011)),
    notes='Printed as percentages with ">=" (e.g. ">= 90.04%"); stored as fractions.')

# ------------------------------------------------------------------ Table 5
# Partial (source-label-specific) backdoors, App. K, ResNet-34. The printed
# header reads "Task ↓ Attack →" but its columns are the defenses, in this
# order (Frequency before DeepSweep, unlike Table 1). A stray line of
# conversion debris ("1 υ 1") stands above the header; no number is affected.
# (The conversion also prints a caption "Table 5. Detailed information about
# the adopted datasets" above Table 3; that is Table 3's, not this table.)
TABLE5 = PaperTable(
    name='Table 5', source=f'{PAPER}, Table 5 (partial backdoor attacks, App. K, ResNet-34)',
    rows=('CIFAR-10', 'Tiny ImageNet'),
    columns=('STRIP', 'ShrinkPad', 'Frequency', 'DeepSweep', 'Ours (data-free)',
             'Ours (data-limited)'),
    values=(
        (0.617, 0.949, 0.891, 0.967, 0.971, 0.971),  # CIFAR-10
        (0.601, 0.868, 0.861, 0.951, 0.936, 0.971),  # Tiny ImageNet
    ),
    notes='AUROC. The attack of the partial backdoor is not named in the table.')

# ------------------------------------------------------------------ Table 6
TABLE6 = PaperTable(
    name='Table 6', source=f'{PAPER}, Table 6 (Tiny ImageNet, VGG-19)',
    rows=DEFENSES, columns=ATTACKS,
    values=(
        (0.941, 0.908, 0.941, 0.576, 0.521, 0.489),  # STRIP
        (0.857, 0.919, 0.631, 0.831, 0.499, 0.490),  # ShrinkPad
        (0.939, 0.907, 0.921, 0.744, 0.511, 0.711),  # DeepSweep
        (0.864, 0.859, 0.864, 0.827, 0.428, 0.540),  # Frequency
        (0.936, 0.846, 0.907, 0.858, 0.893, 0.767),  # Ours (data-free)
        (0.936, 0.851, 0.907, 0.888, 0.904, 0.836),  # Ours (data-limited)
    ),
    average=(0.729, 0.705, 0.788, 0.730, 0.868, 0.887),
    notes='AUROC. Header readable.')

# ------------------------------------------------------------------ Table 7
# SCALE-UP with random noise instead of amplification (App. O). The dataset
# label of the CIFAR-10 rows is garbled ("CIEAP 10"). The printed Tiny
# ImageNet averages (0.706, 0.706) do not match their rows (means 0.699 and
# 0.715); both are stored as printed.
TABLE7 = PaperTable(
    name='Table 7', source=f'{PAPER}, Table 7 (SCALE-UP variant with random noise, App. O)',
    rows=('CIFAR-10 data-free', 'CIFAR-10 data-limited', 'Tiny ImageNet data-free',
          'Tiny ImageNet data-limited'),
    columns=ATTACKS,
    values=(
        (0.939, 0.816, 0.976, 0.698, 0.497, 0.421),
        (0.939, 0.873, 0.981, 0.706, 0.432, 0.444),
        (0.951, 0.711, 0.899, 0.632, 0.531, 0.467),
        (0.951, 0.761, 0.899, 0.644, 0.534, 0.501),
    ),
    average=(0.724, 0.729, 0.706, 0.706),
    notes='AUROC. "Label Consistent" printed without the hyphen. Tiny ImageNet averages '
          'inconsistent with their rows in the paper itself.')

TABLES: Mapping[str, PaperTable] = {t.name: t for t in (TABLE1, TABLE2, TABLE4, TABLE5, TABLE6,
                                                          TABLE7)}


# ------------------------------------------------------------------ numbers in the text


@dataclasses.dataclass(frozen=True)
class PaperNumber:
  """A number stated in the paper's text.

  Attributes:
    value: the number (fractions for percentages).
    relation: ``'='``, ``'>='``, ``'>'``, ``'<'`` or ``'~'`` as the text states it.
    source: section (and figure) it comes from.
    quote: the sentence, abridged.
  """

  value: float
  relation: str
  source: str
  quote: str


TEXT: Mapping[str, PaperNumber] = {
    # Sec. 5.3.2: the adaptive attack of Eq. 5 (BadNets, CIFAR-10). The text
    # does not say whether this is the data-free or data-limited AUROC.
    'adaptive_auroc': PaperNumber(
        0.467, '=', f'{PAPER}, Sec. 5.3.2',
        'this method can bypass our detection resulting in a low AUROC (i.e., 0.467)'),
    'adaptive_noise_magnitude': PaperNumber(
        0.3, '<', f'{PAPER}, Sec. 5.3.2, Fig. 7(c)',
        'random noises with a small magnitude (< 0.3) will significantly reduce the attack '
        'success rate of the adaptive attack, while having minor adverse effects on the vanilla '
        'attack'),
    # Sec. 5.3.2, Fig. 7(b): BadNets on CIFAR-10 at low poisoning rates.
    'low_rate_poison_rate': PaperNumber(
        0.004, '=', f'{PAPER}, Sec. 5.3.2, Fig. 7(b)',
        'even when the poisoning rate is set to 0.4% where the ASR is lower than 70%'),
    'low_rate_asr': PaperNumber(0.70, '<', f'{PAPER}, Sec. 5.3.2, Fig. 7(b)',
                                'the poisoning rate is set to 0.4% where the ASR is lower than 70%'),
    'low_rate_auroc_successful': PaperNumber(
        0.95, '>', f'{PAPER}, Sec. 5.3.2, Fig. 7(b)',
        'correctly detect poisoned samples that can successfully attack ... In these cases, the '
        'AUROC > 0.95'),
    'low_rate_auroc_all_poisoned': PaperNumber(
        0.8, '>', f'{PAPER}, Sec. 5.3.2, Fig. 7(b)',
        'can still reach promising performance (AUROC > 0.8) in detecting all poisoned samples'),
    # Sec. 5.3.1, Fig. 7(a): BadNets and PhysicalBA on Tiny ImageNet.
    'trigger_size_auroc': PaperNumber(
        0.93, '>', f'{PAPER}, Sec. 5.3.1, Fig. 7(a)',
        'our methods have high AUROC values (> 0.93) across different trigger sizes under both '
        'data-free and data-limited settings (Tiny ImageNet, BadNets and PhysicalBA)'),
    # Sec. 5.2, Fig. 6: the figure's bars are not in the text; this is the one
    # number stated about them.
    'slowdown_vs_no_defense': PaperNumber(
        0.05, '~', f'{PAPER}, Sec. 5.2, Fig. 6',
        'Our detection is approximately 5% slower compared with the standard inference process '
        'without any defense'),
    # Sec. 5.1: the evaluation protocol.
    'eval_noise_magnitude': PaperNumber(
        0.05, '=', f'{PAPER}, Sec. 5.1',
        'The augmented datasets are created by adding small random noise to their original '
        'version. The noise magnitude is set to 0.05.'),
    'defender_images_per_class': PaperNumber(
        100, '=', f'{PAPER}, Sec. 5.1',
        'We assume that defenders have 100 benign samples per class under the data-limited setting'),
    'attack_asr': PaperNumber(
        0.98, '>=', f'{PAPER}, Sec. 5.1',
        'inject sufficient poisoned samples to ensure the attack success rate >= 98%'),
    # App. C: training of the attacked models.
    'train_epochs': PaperNumber(200, '=', f'{PAPER}, App. C', 'We set the training epoch as 200'),
    'poison_rate_low': PaperNumber(0.05, '>=', f'{PAPER}, App. C', 'the poisoning rate as 5 - 10%'),
    'poison_rate_high': PaperNumber(0.10, '<=', f'{PAPER}, App. C', 'the poisoning rate as 5 - 10%'),
    'other_label_poison_rate': PaperNumber(
        0.05, '<=', f'{PAPER}, App. C',
        'we inject less amount (<= 5%) of poisoned samples to affect labels other than the target '
        'label (data-limited scenario and ablation study)'),
    # App. G, Fig. 9: several triggers into one target label (CIFAR-10 and Tiny
    # ImageNet, ResNet-34). The figure's values are not in the text.
    'multi_trigger_asr': PaperNumber(
        0.99, '>=', f'{PAPER}, App. G, Fig. 9',
        'We inject arbitrary amounts of poison samples for each backdoor trigger to ensure the '
        'attack efficacy ASR >= 99% ... SCALE-UP performs resilient to the increasing number of '
        'injected backdoor triggers'),
    # App. H, Fig. 10: multiple infected labels (BadNets 4x4, CIFAR-10).
    'all_labels_infected_auroc': PaperNumber(
        0.883, '>=', f'{PAPER}, App. H, Fig. 10',
        'even with 100% labels are infected, SCALE-UP can still perform effectively with AUROC '
        '>= 0.883'),
    # App. I, Fig. 11 and App. J, Fig. 12 (Tiny ImageNet, ResNet-34).
    'optimal_num_scales': PaperNumber(
        11, '>=', f'{PAPER}, App. I, Fig. 11',
        'In most settings, with n >= 11 SCALE-UP can achieve optimal performance'),
    'optimal_defender_images': PaperNumber(
        100, '>=', f'{PAPER}, App. J, Fig. 12',
        'achieves optimal performance when the size >= 100'),
}
# Sec. 5.2 also claims the data-limited AUROC on WaNet (Tiny ImageNet) is "0.5
# greater than all baseline defenses"; Table 2 gives 0.946 against at best
# 0.503 (DeepSweep), a margin of 0.443. Not stored as a number.


def table1_by_detector() -> dict[tuple[str, str, str], float]:
  """Table 1 keyed by this project's names: ``{(attack, detector, mode): AUROC}``.

  ``attack`` is a ``config.attack`` value (``'badnets'``, ``'physical'``, ...),
  ``(detector, mode)`` as in :func:`scaleup_jax.compare.columns`.
  """
  out = {}
  for (row, col), v in TABLE1.as_dict().items():
    det, mode = DEFENSE_NAMES[row]
    out[(ATTACK_NAMES[col], det, mode)] = v
  return out
