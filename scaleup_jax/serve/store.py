"""The trace-back store: every flagged input, written durably before its response is sent.

One SQLite database in WAL mode. A record holds the time, the request id and
the image's index in its request, the SHA-256 of the image as submitted, the
model's label, SPC, the detector's score and threshold, the decision, a PNG
thumbnail and, unless the operator turns it off, the image itself (the
uploaded PNG/JPEG bytes, or a ``.npy`` of a raw array). Writes come in one
transaction per detector batch (:meth:`FlagStore.add_many`), committed with
``synchronous=FULL`` by default, so a committed record survives ``kill -9`` of
the server and a power loss alike; the firewall answers a request only after
the transaction holding its flagged images has committed.

Retention: at most ``max_records`` records (oldest deleted first) and, if
``max_age_s`` is set, none older than that; applied after every write.

Several processes may write the same file on one machine (Ray Serve
replicas): SQLite's locks serialise them (``busy_timeout``). WAL needs a local
file system; it does not work over NFS.

Example:
  >>> store = FlagStore('runs/serve/flags.sqlite', store_images=True, max_records=10000)
  >>> store.add_many([FlagRecord(...)])
  >>> store.list(limit=20)            # newest first, without the blobs
"""

from __future__ import annotations

import dataclasses
import io
import sqlite3
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from scaleup_jax.validation import InputError

SCHEMA_VERSION = 1
SYNCHRONOUS = ('FULL', 'NORMAL', 'EXTRA')
THUMB_SIDE = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flags (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time REAL NOT NULL,
  request_id TEXT NOT NULL,
  image_index INTEGER NOT NULL,
  image_sha256 TEXT NOT NULL,
  label INTEGER NOT NULL,
  spc REAL,
  score REAL NOT NULL,
  score_name TEXT NOT NULL,
  threshold REAL NOT NULL,
  alpha REAL NOT NULL,
  decision TEXT NOT NULL,
  model TEXT NOT NULL,
  thumbnail BLOB NOT NULL,
  image BLOB,
  image_type TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_time ON flags(time);
CREATE INDEX IF NOT EXISTS flags_request ON flags(request_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = ('id', 'time', 'request_id', 'image_index', 'image_sha256', 'label', 'spc', 'score',
            'score_name', 'threshold', 'alpha', 'decision', 'model', 'image_type')


class StoreError(RuntimeError):
  """The store cannot be opened or written (disk full, locked, another schema)."""


@dataclasses.dataclass(frozen=True)
class FlagRecord:
  """One flagged input (see the module docstring for the fields)."""

  time: float
  request_id: str
  image_index: int
  image_sha256: str
  label: int
  spc: float | None
  score: float
  score_name: str
  threshold: float
  alpha: float
  decision: str
  model: str
  thumbnail: bytes
  image: bytes | None
  image_type: str


def thumbnail_png(image: np.ndarray, side: int = THUMB_SIDE) -> bytes:
  """A PNG thumbnail of a float ``(H, W, C)`` image in [0, 1], at most ``side`` pixels wide.

  Small images (CIFAR-10's 32x32) are kept at their size; the review page
  enlarges them without smoothing.
  """
  from PIL import Image
  a = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
  if a.shape[-1] == 1:
    a = a[..., 0]
  im = Image.fromarray(a)
  im.thumbnail((side, side))
  buf = io.BytesIO()
  im.save(buf, format='PNG')
  return buf.getvalue()


class FlagStore:
  """SQLite store of flagged inputs (WAL mode, durable commits, retention).

  Args:
    path: the database file (created with its directory).
    store_images: keep the submitted image bytes; False keeps the hash and
      the thumbnail only.
    max_records: retention limit on the number of records (>= 1).
    max_age_s: drop records older than this many seconds (None: no age limit).
    synchronous: SQLite ``synchronous`` level: ``'FULL'`` (default: a commit
      survives power loss) or ``'NORMAL'`` (survives a killed process, not a
      power loss; faster).

  Raises:
    StoreError: the file cannot be opened as a store.
  """

  def __init__(self, path, store_images: bool = True, max_records: int = 100_000,
               max_age_s: float | None = None, synchronous: str = 'FULL'):
    if int(max_records) < 1:
      raise InputError(f'retention max_records must be >= 1; got {max_records}')
    if max_age_s is not None and not float(max_age_s) > 0:
      raise InputError(f'retention max_age_s must be > 0 (or None); got {max_age_s}')
    if str(synchronous).upper() not in SYNCHRONOUS:
      raise InputError(f'synchronous must be one of {SYNCHRONOUS}; got {synchronous!r}')
    self.path = Path(path).expanduser().absolute()
    self.store_images = bool(store_images)
    self.max_records = int(max_records)
    self.max_age_s = None if max_age_s is None else float(max_age_s)
    self.synchronous = str(synchronous).upper()
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._lock = threading.Lock()  # one writer connection, used by one thread at a time
    try:
      self._db = self._connect()
      self._db.executescript(_SCHEMA)
      row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
      if row is None:
        with self._db:
          self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
      elif int(row[0]) != SCHEMA_VERSION:
        raise StoreError(f'{str(self.path)!r} has store schema version {row[0]}; this code '
                         f'writes version {SCHEMA_VERSION}')
    except sqlite3.DatabaseError as e:
      raise StoreError(f'cannot open the flag store {str(self.path)!r}: {e}') from None

  def _connect(self) -> sqlite3.Connection:
    db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
    mode = db.execute('PRAGMA journal_mode=WAL').fetchone()[0]
    if str(mode).lower() != 'wal':
      raise StoreError(f'{str(self.path)!r}: SQLite refused WAL mode (got {mode!r}); the store '
                       'needs a local file system')
    db.execute(f'PRAGMA synchronous={self.synchronous}')
    db.execute('PRAGMA busy_timeout=30000')
    return db

  def add_many(self, records: Sequence[FlagRecord]) -> None:
    """Writes ``records`` in one durable transaction, then applies retention.

    Returns only after the commit (and, with ``synchronous=FULL``, the WAL
    fsync); raises :class:`StoreError` if nothing could be written.
    """
    if not records:
      return
    rows = [(r.time, r.request_id, int(r.image_index), r.image_sha256, int(r.label),
             None if r.spc is None else float(r.spc), float(r.score), r.score_name,
             float(r.threshold), float(r.alpha), r.decision, r.model, r.thumbnail,
             r.image if self.store_images else None, r.image_type) for r in records]
    with self._lock:
      try:
        self._db.execute('BEGIN IMMEDIATE')
        try:
          self._db.executemany(
              'INSERT INTO flags (time, request_id, image_index, image_sha256, label, spc, score, '
              'score_name, threshold, alpha, decision, model, thumbnail, image, image_type) '
              'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)', rows)
          self._retain()
          self._db.execute('COMMIT')
        except BaseException:
          self._db.execute('ROLLBACK')
          raise
      except sqlite3.Error as e:
        raise StoreError(f'could not write {len(rows)} flagged records to {str(self.path)!r}: '
                         f'{e}') from None

  def _retain(self) -> None:
    self._db.execute('DELETE FROM flags WHERE id <= (SELECT id FROM flags ORDER BY id DESC '
                     'LIMIT 1 OFFSET ?)', (self.max_records,))
    if self.max_age_s is not None:
      self._db.execute('DELETE FROM flags WHERE time < ?', (time.time() - self.max_age_s,))

  def _read(self, sql: str, args=()) -> list[tuple]:
    # A fresh connection per read: reads never wait for the writer (WAL) and
    # never share a connection with another thread.
    db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
    try:
      return db.execute(sql, args).fetchall()
    finally:
      db.close()

  def count(self) -> int:
    return int(self._read('SELECT COUNT(*) FROM flags')[0][0])

  def list(self, limit: int = 50, before_id: int | None = None) -> list[dict]:
    """Records newest first (by id), without thumbnail and image bytes.

    Args:
      limit: at most this many (1..1000).
      before_id: only records with a smaller id (the next page).
    """
    limit = max(1, min(int(limit), 1000))
    cols = ', '.join(_COLUMNS)
    extra = ', image IS NOT NULL'
    if before_id is None:
      rows = self._read(f'SELECT {cols}{extra} FROM flags ORDER BY id DESC LIMIT ?', (limit,))
    else:
      rows = self._read(f'SELECT {cols}{extra} FROM flags WHERE id < ? ORDER BY id DESC LIMIT ?',
                        (int(before_id), limit))
    return [dict(zip(_COLUMNS + ('has_image',), (*r[:-1], bool(r[-1])))) for r in rows]

  def get(self, record_id: int, blobs: bool = False) -> dict | None:
    """One record by id (with ``thumbnail`` and ``image`` bytes if ``blobs``), or None."""
    cols = ', '.join(_COLUMNS) + (', thumbnail, image' if blobs else '') + ', image IS NOT NULL'
    rows = self._read(f'SELECT {cols} FROM flags WHERE id = ?', (int(record_id),))
    if not rows:
      return None
    names = _COLUMNS + (('thumbnail', 'image') if blobs else ()) + ('has_image',)
    out = dict(zip(names, rows[0]))
    out['has_image'] = bool(out['has_image'])
    return out

  def by_request(self, request_id: str) -> list[dict]:
    """The records of one request id, by image index."""
    cols = ', '.join(_COLUMNS)
    rows = self._read(f'SELECT {cols} FROM flags WHERE request_id = ? ORDER BY image_index',
                      (request_id,))
    return [dict(zip(_COLUMNS, r)) for r in rows]

  def close(self) -> None:
    with self._lock:
      self._db.close()
