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
