"""Where the model zoo is: a flag, then ``$SCALEUP_JAX_ZOO``, then ``./zoo``, then the install.

The library never looks at its own source tree for data. A zoo directory is
found, in order, from:

1. an explicit argument (the entry points' ``--zoo`` / ``--ckpt`` flags);
2. the environment variable ``SCALEUP_JAX_ZOO``;
3. ``zoo/`` under the current working directory (a source checkout);
4. the copy installed with the package: wheels carry the default model,
   ``cifar10_badnets_resnet20``, as package data of the ``zoo`` package.

When none holds what was asked for, :class:`ZooNotFoundError` says in one line
where it looked and which flag or variable takes a path.
"""

from __future__ import annotations

import os
from pathlib import Path

ZOO_ENV = 'SCALEUP_JAX_ZOO'
DEFAULT_MODEL = 'cifar10_badnets_resnet20'


class ZooNotFoundError(FileNotFoundError):
  """No zoo directory (or no model of that name in it) was found."""


def _installed_zoos() -> list[Path]:
  """Directories of the installed ``zoo`` package data (a namespace package)."""
  import importlib.util
  try:
    spec = importlib.util.find_spec('zoo')
  except (ImportError, ValueError):
    return []
  if spec is None or not spec.submodule_search_locations:
    return []
  return [Path(p) for p in spec.submodule_search_locations]


def zoo_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
  """The zoo directories searched, in order (existing or not, no repeats)."""
  out = []
  if explicit:
    out.append(Path(explicit).expanduser())
  if os.environ.get(ZOO_ENV):
    out.append(Path(os.environ[ZOO_ENV]).expanduser())
  out.append(Path.cwd() / 'zoo')
  out.extend(_installed_zoos())
  seen, unique = set(), []
  for d in out:
    key = os.path.abspath(d)
    if key not in seen:
      seen.add(key)
      unique.append(d)
  return unique


def zoo_dir(explicit: str | os.PathLike | None = None, required: bool = True) -> Path | None:
  """The first existing zoo directory of :func:`zoo_candidates`.

  Raises:
    ZooNotFoundError: none exists and ``required``.
  """
  for d in zoo_candidates(explicit):
    if d.is_dir():
      return d
  if required:
    raise ZooNotFoundError(
        f'no model zoo found (looked in {", ".join(str(d) for d in zoo_candidates(explicit))}); '
        f'pass --ckpt RUN_DIR, or set ${ZOO_ENV} to the zoo/ directory of a scaleup-jax checkout')
  return None


def zoo_model(name: str = DEFAULT_MODEL, explicit_zoo: str | os.PathLike | None = None) -> Path:
  """The run directory of zoo model ``name`` (``'sweeps/...'`` allowed).

  Raises:
    ZooNotFoundError: no searched zoo holds ``name``; the message lists them.
  """
  tried = zoo_candidates(explicit_zoo)
  for d in tried:
    if (d / name / 'config.json').is_file():
      return d / name
  raise ZooNotFoundError(
      f'zoo model {name!r} not found (looked in {", ".join(str(d) for d in tried)}); pass '
      f'--ckpt RUN_DIR, or set ${ZOO_ENV} to the zoo/ directory of a scaleup-jax checkout')


def resolve_ckpt(path: str | os.PathLike) -> Path:
  """A run directory from a user's path: as given if it exists, else ``zoo/NAME`` in the zoo.

  Lets configs name models as ``'zoo/cifar10_clean_resnet20'`` and still find
  them from an installed package or outside the checkout.
  """
  p = Path(path).expanduser()
  if p.exists() or p.is_absolute():
    return p
  parts = p.parts
  if parts and parts[0] == 'zoo' and len(parts) > 1:
    try:
      return zoo_model(str(Path(*parts[1:])))
    except ZooNotFoundError:
      return p
  return p
