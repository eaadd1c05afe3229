"""Atomic writes and content hashes for every file the project saves and later trusts.

Two mechanisms, one home:

* **Atomic writes.** :func:`atomic_write_bytes` (and the text/JSON/npz forms)
  write to a temporary file in the same directory, ``fsync`` it and rename it
  over the target, so a crash leaves either the old file or the new one, never
  a half-written file that looks complete.
* **Manifests.** :func:`write_manifest` records the SHA-256 and size of named
  files (relative to a root directory) in ``<root>/manifest.json``;
  :func:`verify_manifest` recomputes them before anything is loaded and raises
  :class:`IntegrityError` naming the file and what differs. A directory without
  a manifest (written before this module existed) passes with a one-line
  warning, never silently.

Model weights are additionally checked by content (:func:`tree_digest`): the
SHA-256 of every restored array, so a corrupt or swapped weight file is caught
even where the checkpoint library reads it without complaint.

Single files that travel on their own carry their checksum inside:
:func:`save_npz_checked` / :func:`load_npz_checked` (an ``__integrity__``
entry with a kind tag and the digest of every array) and
:func:`save_json_checked` / :func:`load_json_checked`.

For tests, :func:`fault_point` kills the process at named points (for
instance between writing a temporary file and renaming it) when
``$SCALEUP_JAX_FAULT`` names them, to prove that interrupted work resumes.

Seal directories written before manifests existed (run directories of the
model zoo) with::

    python -m scaleup_jax.integrity seal zoo/cifar10_badnets_resnet20 ...
    python -m scaleup_jax.integrity verify zoo/cifar10_badnets_resnet20 ...
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

MANIFEST = 'manifest.json'
_UMASK = os.umask(0)
os.umask(_UMASK)
MANIFEST_VERSION = 1


class IntegrityError(ValueError):
  """A saved file is missing, truncated, altered or belongs to another run."""


class MissingManifestWarning(UserWarning):
  """A directory written before manifests existed was loaded unchecked."""


class UncheckedFileWarning(MissingManifestWarning):
  """A single file written before checksums existed was loaded unchecked."""


_format_warning_orig = getattr(warnings.formatwarning, '_scaleup_orig', warnings.formatwarning)


def _format_warning(message, category, filename, lineno, line=None):
  """One line (``warning: ...``) for this module's warnings, Python's format otherwise."""
  if isinstance(category, type) and issubclass(category, MissingManifestWarning):
    return f'warning: {message}\n'
  return _format_warning_orig(message, category, filename, lineno, line)


_format_warning._scaleup_orig = _format_warning_orig
warnings.formatwarning = _format_warning

FAULT_ENV = 'SCALEUP_JAX_FAULT'
FAULT_EXIT_CODE = 75
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
  """Kills the process here if ``$SCALEUP_JAX_FAULT`` names this point (tests only).

  ``$SCALEUP_JAX_FAULT`` is a comma-separated list of ``NAME`` or ``NAME#K``
  (the K-th time the point is reached, default the first). The process ends
  with ``os._exit(FAULT_EXIT_CODE)``: no ``finally`` block, no atexit handler
  and no background thread runs on, as after ``kill -9``. Points used by the
  project: ``atomic_write:<file name>`` (temporary file written and fsynced,
  not yet renamed), ``checkpoint_saving:<step>`` (manifest entry written,
  checkpoint not started), ``checkpoint_saved:<step>`` (checkpoint write
  issued, still in flight) and ``epoch_start:<epoch>`` (0-based, between
  epochs).

  Args:
    name: the point's name.
  """
  spec = os.environ.get(FAULT_ENV)
  if not spec:
    return
  for item in spec.split(','):
    point, _, nth = item.strip().partition('#')
    if point != name:
      continue
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(nth or 1):
      sys.stdout.flush()
      sys.stderr.write(f'fault injection: process killed at {name}\n')
      sys.stderr.flush()
      os._exit(FAULT_EXIT_CODE)
    return


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  """Hex SHA-256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
  """Hex SHA-256 of ``data``."""
  return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  """Writes ``data`` to ``path`` through a fsynced temporary file and a rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; keep the usual mode
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    fault_point(f'atomic_write:{path.name}')
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)
  return path


def _fsync_dir(directory: Path) -> None:
  """Makes a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  """UTF-8 text form of :func:`atomic_write_bytes`."""
  return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> Path:
  """JSON form of :func:`atomic_write_bytes` (``indent=2`` unless given)."""
  dumps_kwargs.setdefault('indent', 2)
  return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + '\n')


def _json_default(obj):
  """numpy scalars and arrays as JSON numbers and lists."""
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f'{type(obj).__name__} is not JSON-serialisable: {obj!r}')


def _json_native(payload: Any) -> Any:
  """``payload`` as it reads back from JSON (tuples as lists, keys as strings)."""
  return json.loads(json.dumps(payload, default=_json_default))


def _canonical_json(payload: Any) -> bytes:
  """The bytes a checked JSON file's hash covers: sorted keys, no whitespace."""
  return json.dumps(_json_native(payload), sort_keys=True, separators=(',', ':'),
                    ensure_ascii=False, allow_nan=True).encode('utf-8')


def save_json_checked(path: str | os.PathLike, payload: Any, kind: str) -> Path:
  """Atomically writes a JSON file that carries its own checksum and kind tag.

  The file holds ``{"kind": kind, "sha256": ..., "payload": payload}``, where
  the hash is over the canonical JSON of ``payload`` (sorted keys, compact
  separators), so reformatting the file does not matter but any change to a
  value does. Read it back with :func:`load_json_checked`.

  Args:
    path: destination file.
    payload: any JSON-serialisable value.
    kind: a short tag naming what the file is (e.g. ``'calibration'``); a
      file of another kind is refused at load.

  Returns:
    The path written.
  """
  if not isinstance(kind, str) or not kind:
    raise ValueError(f'kind must be a non-empty string, got {kind!r}')
  payload = _json_native(payload)
  digest = sha256_bytes(_canonical_json(payload))
  return atomic_write_json(path, {'kind': kind, 'sha256': digest, 'payload': payload},
                           sort_keys=True)


def load_json_checked(path: str | os.PathLike, kind: str, allow_unchecked: bool = False) -> Any:
  """Reads a file written by :func:`save_json_checked` and verifies it.

  Args:
    path: the file.
    kind: the kind the caller expects.
    allow_unchecked: accept a plain JSON file written before checksums
      existed (returned whole, after an :class:`UncheckedFileWarning`).

  Returns:
    The payload.

  Raises:
    IntegrityError: naming the file, if it is missing, not valid JSON, has no
      checksum (unless ``allow_unchecked``), is of another kind, or its payload
      no longer matches its hash.
  """
  path = Path(path)
  if not path.is_file():
    raise IntegrityError(f'{str(path)!r} is missing')
  try:
    doc = json.loads(path.read_text(encoding='utf-8'))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IntegrityError(f'{str(path)!r} is not valid JSON (truncated or corrupt): {e}') from None
  if not isinstance(doc, dict) or not {'kind', 'sha256', 'payload'} <= set(doc):
    if allow_unchecked:
      warnings.warn(f'{str(path)!r} carries no checksum (written by an older version): '
                    'loaded without an integrity check', UncheckedFileWarning, stacklevel=2)
      return doc
    raise IntegrityError(f'{str(path)!r} carries no checksum (expected keys kind, sha256, '
                         'payload): not written by save_json_checked')
  if doc['kind'] != kind:
    raise IntegrityError(f'{str(path)!r} is a {doc["kind"]!r} file, expected {kind!r}')
  digest = sha256_bytes(_canonical_json(doc['payload']))
  if digest != doc['sha256']:
    raise IntegrityError(f'{str(path)!r}: payload has SHA-256 {digest[:16]}…, the file says '
                         f'{str(doc["sha256"])[:16]}… (edited or corrupt)')
  return doc['payload']


def read_results(path: str | os.PathLike, filename: str, what: str, command: str) -> Any:
  """The JSON results file ``path`` (or ``path/filename`` for a directory) of an experiment.

  Raises:
    InputError: naming the path and the ``command`` that writes it, when absent.
  """
  from scaleup_jax.validation import InputError
  p = Path(path)
  if p.is_dir():
    p = p / filename
  if not p.is_file():
    raise InputError(f'no {what} results at {str(p)!r}; run {command}')
  return json.loads(p.read_text())


def atomic_save_npz(path: str | os.PathLike, **arrays) -> Path:
  """``np.savez_compressed`` through :func:`atomic_write_bytes`."""
  import io
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  return atomic_write_bytes(path, buf.getvalue())


NPZ_INTEGRITY_KEY = '__integrity__'


def array_digest(a) -> str:
  """SHA-256 of one array's dtype, shape and bytes (the leaf hash of :func:`tree_digest`)."""
  a = np.ascontiguousarray(np.asarray(a))
  h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
  h.update(a.tobytes())
  return h.hexdigest()


def npz_digest(arrays: Mapping[str, Any]) -> dict[str, str]:
  """``{name: array_digest}`` of the arrays of an ``.npz`` (what its checksum covers)."""
  return {k: array_digest(v) for k, v in sorted(arrays.items()) if k != NPZ_INTEGRITY_KEY}


def save_npz_checked(path: str | os.PathLike, kind: str, /, **arrays) -> Path:
  """Atomically writes a compressed ``.npz`` that carries its own checksum.

  Beside ``arrays`` the file holds ``__integrity__``: a JSON string with the
  kind tag and the :func:`array_digest` of every array. Read it back with
  :func:`load_npz_checked`; plain ``np.load`` still works and sees one extra
  entry.

  Args:
    path: destination file (``.npz``).
    kind: a short tag naming what the file is (``'trigger'``, ``'scores'``...).
    **arrays: the arrays, as for ``np.savez`` (``path`` and ``kind`` are
      positional-only, so arrays may carry those names too).

  Returns:
    The path written.
  """
  if NPZ_INTEGRITY_KEY in arrays:
    raise ValueError(f'{NPZ_INTEGRITY_KEY!r} is reserved for the checksum of {str(path)!r}')
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  stamp = json.dumps({'kind': kind, 'arrays': npz_digest(arrays)}, sort_keys=True)
  return atomic_save_npz(path, **arrays, **{NPZ_INTEGRITY_KEY: np.asarray(stamp)})


def load_npz_checked(path: str | os.PathLike, kind: str,
                     allow_unchecked: bool = True) -> dict[str, np.ndarray]:
  """Reads an ``.npz`` written by :func:`save_npz_checked` and verifies it.

  Args:
    path: the file.
    kind: the kind the caller expects.
    allow_unchecked: accept a file written before checksums existed (after an
      :class:`UncheckedFileWarning`; pass False where a manifest already
      vouched for the file, and the warning is not wanted, by catching it).

  Returns:
    ``{name: array}`` without the checksum entry.

  Raises:
    IntegrityError: naming the file, if it is missing, unreadable (truncated,
      flipped bytes in the archive), of another kind, has arrays missing,
      added or altered, or has no checksum and ``allow_unchecked`` is False.
  """
  path = Path(path)
  if not path.is_file():
    raise IntegrityError(f'{str(path)!r} is missing')
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile, zlib, numpy format errors come in many types.
    msg = str(e).splitlines()[0] if str(e) else ''
    raise IntegrityError(f'{str(path)!r} is not a readable .npz (truncated or corrupt): '
                         f'{type(e).__name__}: {msg}') from None
  stamp = arrays.pop(NPZ_INTEGRITY_KEY, None)
  if stamp is None:
    if not allow_unchecked:
      raise IntegrityError(f'{str(path)!r} carries no checksum ({NPZ_INTEGRITY_KEY!r} entry)')
    warnings.warn(f'{str(path)!r} carries no checksum (written by an older version): '
                  'loaded without an integrity check', UncheckedFileWarning, stacklevel=2)
    return arrays
  try:
    stamp = json.loads(str(stamp))
    got_kind, want = stamp['kind'], dict(stamp['arrays'])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise IntegrityError(f'{str(path)!r} has a damaged {NPZ_INTEGRITY_KEY!r} entry: {e}') from None
  if got_kind != kind:
    raise IntegrityError(f'{str(path)!r} is a {got_kind!r} file, expected {kind!r}')
  got = npz_digest(arrays)
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or extra or changed:
    parts = ([f'array {changed[0]!r} differs from its checksum'] if changed else []) + (
        [f'arrays {missing} missing'] if missing else []) + (
        [f'unexpected arrays {extra}'] if extra else [])
    raise IntegrityError(f'{str(path)!r}: ' + '; '.join(parts) + ' (altered or corrupt)')
  return arrays


def file_record(path: str | os.PathLike) -> dict:
  """``{'sha256': ..., 'bytes': ...}`` of one file."""
  return {'sha256': sha256_file(path), 'bytes': os.path.getsize(path)}


def save_manifest(root: str | os.PathLike, manifest: Mapping) -> Path:
  """Atomically (re)writes ``root/manifest.json`` with ``manifest`` (keys sorted)."""
  return atomic_write_json(Path(root) / MANIFEST, dict(manifest), sort_keys=True)


def read_manifest(root: str | os.PathLike) -> dict | None:
  """The manifest of ``root``, or None if it has none; a damaged one raises."""
  path = Path(root) / MANIFEST
  if not path.is_file():
    return None
  try:
    manifest = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IntegrityError(f'corrupt manifest {str(path)!r}: {e}') from None
  if not isinstance(manifest, dict) or not isinstance(manifest.get('files'), dict):
    raise IntegrityError(f'corrupt manifest {str(path)!r}: no "files" table')
  return manifest


def write_manifest(root: str | os.PathLike, files: Iterable[str], extra: Mapping | None = None,
                   update: bool = True) -> dict:
  """Records the hash and size of ``files`` (paths relative to ``root``).

  With ``update`` the entries join those already in the manifest (a file
  named again is re-hashed); ``extra`` is merged into the manifest's top
  level (for instance ``{'weights': tree_digest(variables)}``).
  """
  root = Path(root)
  manifest = (read_manifest(root) if update else None) or {'version': MANIFEST_VERSION,
                                                          'files': {}}
  for rel in files:
    rel = Path(rel).as_posix()
    manifest['files'][rel] = file_record(root / rel)
  if extra:
    manifest.update(extra)
  save_manifest(root, manifest)
  return manifest


def check_file(root: str | os.PathLike, rel: str, entry: Mapping) -> None:
  """Raises :class:`IntegrityError` unless ``root/rel`` matches its manifest ``entry``."""
  path = Path(root) / rel
  if not path.is_file():
    raise IntegrityError(f'{str(path)!r} is missing (listed in {MANIFEST})')
  size = os.path.getsize(path)
  if size != entry['bytes']:
    raise IntegrityError(f'{str(path)!r} has {size} bytes, the manifest says {entry["bytes"]} '
                         '(truncated or replaced)')
  digest = sha256_file(path)
  if digest != entry['sha256']:
    raise IntegrityError(f'{str(path)!r} has SHA-256 {digest[:16]}…, the manifest says '
                         f'{entry["sha256"][:16]}… (altered or from another run)')


def verify_manifest(root: str | os.PathLike, only: Iterable[str] | None = None,
                    what: str = 'run') -> dict | None:
  """Checks the files listed in ``root``'s manifest; returns the manifest.

  Args:
    root: directory holding ``manifest.json``.
    only: check only these relative paths (each must be listed); default all.
    what: a word for the warning and errors ("run", "cache", ...).

  Returns:
    The manifest, or None (after a :class:`MissingManifestWarning`) for a
    directory that has none.

  Raises:
    IntegrityError: naming the file and what differs (missing, size, hash).
  """
  root = Path(root)
  manifest = read_manifest(root)
  if manifest is None:
    warnings.warn(f'{what} {str(root)!r} has no {MANIFEST} (written by an older version): '
                  'its files are loaded without an integrity check', MissingManifestWarning,
                  stacklevel=2)
    return None
  entries = manifest['files']
  names = sorted(entries) if only is None else [Path(p).as_posix() for p in only]
  for rel in names:
    if rel not in entries:
      raise IntegrityError(f'{str(root / rel)!r} is not listed in {str(root / MANIFEST)!r}')
    check_file(root, rel, entries[rel])
  return manifest


def tree_digest(tree) -> dict[str, str]:
  """SHA-256 of every array leaf of a pytree, keyed by its path.

  The digest covers dtype, shape and bytes, so equal digests mean bit-identical
  arrays. Works on jax or numpy leaves (jax arrays are copied to the host).
  """
  import jax
  out = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[jax.tree_util.keystr(keypath)] = array_digest(leaf)
  return out


def compare_digests(want: Mapping[str, str], got: Mapping[str, str], where: str) -> None:
  """Raises :class:`IntegrityError` naming the arrays whose digests differ."""
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or extra or changed:
    parts = []
    if changed:
      parts.append(f'{len(changed)} array(s) differ from the manifest, first {changed[0]}')
    if missing:
      parts.append(f'missing {missing[:3]}')
    if extra:
      parts.append(f'unexpected {extra[:3]}')
    raise IntegrityError(f'{where}: ' + '; '.join(parts) +
                         ' (corrupt weights, or weights of another run)')


def main(argv: list[str] | None = None) -> int:
  """``python -m scaleup_jax.integrity {seal,verify} RUN_DIR...`` (see the module docstring).

  ``seal`` writes the manifest of run directories that have none (the weights'
  digests, every checkpoint file and the run files); ``verify`` checks them as
  ``load_run`` does. Returns the exit status (2 on the first failure).
  """
  import argparse
  parser = argparse.ArgumentParser(prog='python -m scaleup_jax.integrity',
                                   description='Seal or verify run directories.')
  parser.add_argument('command', choices=('seal', 'verify'))
  parser.add_argument('dirs', nargs='+', help='run directories')
  parser.add_argument('--force', action='store_true',
                      help='seal: replace an existing manifest (trusts the files as they are)')
  args = parser.parse_args(argv)
  from scaleup_jax import checkpoint
  for d in args.dirs:
    try:
      if args.command == 'seal':
        m = checkpoint.seal_run(d, force=args.force)
        print(f'sealed {d}: {len(m["files"])} files, step(s) {sorted(m["checkpoints"])}')
      else:
        checkpoint.verify_run(d)
        print(f'ok {d}')
    except (IntegrityError, checkpoint.CheckpointError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  return 0


if __name__ == '__main__':
  # Run the imported module's main, so that its IntegrityError is the one raised by checkpoint.
  from scaleup_jax.integrity import main as _main
  sys.exit(_main())
