"""Shared helpers for the command-line entry points."""

from __future__ import annotations

import contextlib
import sys

from scaleup_jax.checkpoint import CheckpointError
from scaleup_jax.data import DatasetNotFoundError
from scaleup_jax.integrity import IntegrityError
from scaleup_jax.paths import ZooNotFoundError
from scaleup_jax.validation import InputError


@contextlib.contextmanager
def friendly_errors():
  """Turns the project's expected errors into a one-line message and exit code 2."""
  try:
    yield
  except (CheckpointError, IntegrityError, DatasetNotFoundError, ZooNotFoundError, InputError,
          ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def numbers(name: str, values, cast=float) -> tuple | None:
  """A list flag's values as a tuple of ``cast`` (None stays None); InputError naming ``--name``.

  Example:
    >>> numbers('scales', ['3', '5'])
    (3.0, 5.0)
  """
  if values is None:
    return None
  try:
    return tuple(cast(v) for v in values)
  except ValueError:
    raise InputError(f'--{name} must be numbers; got {list(values)}') from None
