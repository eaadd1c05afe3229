"""XLA flags the project sets before JAX starts (documented in docs/performance.md).

On x86 CPUs, jax 0.10's experimental YNNPACK fusion made ResNet convolutions
slower than XLA's own emitter; the empty ``--xla_cpu_experimental_ynn_fusion_type=``
turns it off (see ``python -m eval.bench --xla_compare`` for the measurement).
A value the user already put in ``XLA_FLAGS`` wins.
"""

import os

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)


def set_default_xla_flags() -> None:
  """Appends :data:`CPU_FLAGS` to ``$XLA_FLAGS`` unless set there already.

  Must run before the first JAX computation; entry points call it at import.
  Set ``SCALEUP_JAX_NO_XLA_FLAGS=1`` to leave ``XLA_FLAGS`` untouched.
  """
  if os.environ.get('SCALEUP_JAX_NO_XLA_FLAGS'):
    return
  flags = os.environ.get('XLA_FLAGS', '')
  for flag in CPU_FLAGS:
    name = flag.split('=')[0]
    if name not in flags:
      flags = f'{flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = flags
