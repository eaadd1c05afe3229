"""The ``scaleup-jax`` console script: one command, the entry points as subcommands.

  scaleup-jax detect --ckpt zoo/cifar10_badnets_resnet20     # = python -m eval.detect ...
  scaleup-jax train --config train/configs/badnets_resnet20.py:quick --workdir /tmp/q
  scaleup-jax --help

Each subcommand runs the module's own ``main`` with the remaining arguments, so
flags and help are exactly those of the ``python -m`` form.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> (module, how its main takes arguments: 'absl' = app.run(main), 'argv' = main(argv[1:]))
COMMANDS = {
    'detect': ('eval.detect', 'absl', 'SCALE-UP (or a baseline) on a trained model'),
    'compare': ('eval.compare', 'absl', 'AUROC per attack x detector over the zoo'),
    'reproduce': ('eval.reproduce', 'absl', "the paper's tables and figures at CPU scale"),
    'bench': ('eval.bench', 'absl', 'detection throughput, JAX against PyTorch'),
    'theory': ('eval.theory', 'argv', "Theorem 1's kernel-regression toy"),
    'train': ('train.main', 'absl', 'train a (backdoored) model from a config'),
    'zoo': ('scaleup_jax.zoo', 'argv', 'the table of a zoo directory'),
}
OPTIONAL = {
    'operating-points': ('eval.operating_points', 'argv', 'calibrated thresholds per FPR budget'),
    'diagnose': ('eval.diagnose', 'absl', "a model's saturation classes and SCALE-UP settings"),
    'protocol': ('eval.protocol', 'absl', "checks behind the paper-protocol choices (noise, forms)"),
    'serve': ('eval.serve', 'absl', 'SCALE-UP as an HTTP firewall in front of the model'),
    'failure-map': ('eval.failure_map', 'argv', 'AUROC per trigger pattern x target, and why'),
}


def available() -> dict:
  """The subcommands whose module is present in this install."""
  out = dict(COMMANDS)
  for name, entry in OPTIONAL.items():
    if importlib.util.find_spec(entry[0]) is not None:
      out[name] = entry
  return out


def usage(commands: dict) -> str:
  width = max(map(len, commands))
  lines = ['usage: scaleup-jax COMMAND [FLAGS...]   (scaleup-jax COMMAND --help for its flags)',
           '', 'commands:']
  lines += [f'  {name:<{width}}  {doc}   (python -m {mod})' for name, (mod, _, doc) in
            commands.items()]
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  commands = available()
  if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
    print(usage(commands))
    return 0 if len(argv) >= 2 else 2
  name, rest = argv[1], argv[2:]
  if name not in commands:
    print(f'error: unknown command {name!r}; expected one of {", ".join(commands)}',
          file=sys.stderr)
    return 2
  module_name, style, _ = commands[name]
  module = importlib.import_module(module_name)
  if style == 'argv':
    return int(module.main(rest) or 0)
  from absl import app
  app.run(module.main, argv=[f'scaleup-jax {name}'] + rest)
  return 0


if __name__ == '__main__':
  sys.exit(main())
