"""The review page: the flagged inputs, newest first, with thumbnails, scores, times and downloads.

Server-rendered HTML without JavaScript (the page's Content-Security-Policy
forbids scripts); every value from the store is escaped. Served by the app
behind the operator token (:mod:`scaleup_jax.serve.app`).
"""

from __future__ import annotations

import datetime
import html
from typing import Sequence
from urllib.parse import urlencode

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
p.meta { color: #555; margin: .2rem 0 1rem; }
table { border-collapse: collapse; background: #fff; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .6rem; text-align: left; vertical-align: middle; }
th { background: #eef0f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td code { font-size: 12px; }
img.thumb { width: 64px; height: 64px; image-rendering: pixelated; border: 1px solid #ccc; }
.flag { color: #a15c00; font-weight: 600; }
.block { color: #b00020; font-weight: 600; }
form.inline { display: inline; }
nav { margin: 1rem 0; }
.empty { padding: 2rem; color: #555; }
input[type=password] { width: 22rem; }
"""


def _t(ts: float) -> str:
  return datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M:%S.%f')[:-3] + ' UTC'


def _page(title: str, body: str) -> str:
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<title>{html.escape(title)}</title>'
          '<meta name="viewport" content="width=device-width, initial-scale=1">'
          '<link rel="stylesheet" href="/review/review.css"></head>'
          f'<body>{body}</body></html>\n')


def login_page(message: str | None = None) -> str:
  """The operator-token form (POSTs to ``/review/login``)."""
  msg = f'<p class="block">{html.escape(message)}</p>' if message else ''
  return _page('SCALE-UP firewall: sign in', (
      '<h1>SCALE-UP firewall: review</h1>'
      '<p class="meta">The review page needs the operator token.</p>' + msg +
      '<form method="post" action="/review/login">'
      '<label>Operator token <input type="password" name="token" id="token" '
      'autocomplete="current-password" required></label> '
      '<button type="submit" id="signin">Sign in</button></form>'))


def review_page(records: Sequence[dict], total: int, detector: dict | None, model: str,
                limit: int, class_names: Sequence[str] | None = None,
                store_images: bool = True) -> str:
  """The list of flagged inputs (``records`` newest first, from :meth:`FlagStore.list`)."""
  if detector:
    det = (f'score <b>{html.escape(str(detector["score"]))}</b>, alpha = '
           f'{detector["alpha"]:g} ({html.escape(detector["rule"])} rule on '
           f'{detector["num_calibration"]} benign calibration images), flag when '
           f'{html.escape(detector["rule_in_words"])}')
  else:
    det = 'no detector'
  rows = []
  for r in records:
    label = str(r['label'])
    if class_names is not None and 0 <= int(r['label']) < len(class_names):
      label = f'{r["label"]} ({class_names[int(r["label"])]})'
    rid = int(r['id'])
    if r['has_image']:
      dl = f'<a class="download" href="/review/flags/{rid}/image" download>download</a>'
    else:
      dl = '<span title="the operator does not keep images">not stored</span>'
    spc = '' if r['spc'] is None else f'{r["spc"]:.2f}'
    rows.append(
        f'<tr data-id="{rid}"><td class="num">{rid}</td><td>{html.escape(_t(r["time"]))}</td>'
        f'<td><img class="thumb" alt="flagged input {rid}" '
        f'src="/review/flags/{rid}/thumbnail.png"></td>'
        f'<td>{html.escape(label)}</td><td class="num">{spc}</td>'
        f'<td class="num">{r["score"]:.4g}</td>'
        f'<td class="{html.escape(r["decision"])}">{html.escape(r["decision"])}</td>'
        f'<td><code>{html.escape(r["request_id"])}</code> #{int(r["image_index"])}</td>'
        f'<td><code title="{html.escape(r["image_sha256"])}">'
        f'{html.escape(r["image_sha256"][:16])}…</code></td><td>{dl}</td></tr>')
  if rows:
    table = ('<table id="flags"><thead><tr><th>#</th><th>time</th><th>input</th><th>label</th>'
             '<th>SPC</th><th>score</th><th>decision</th><th>request id, image</th>'
             '<th>SHA-256</th><th>image</th></tr></thead><tbody>' + ''.join(rows) +
             '</tbody></table>')
  else:
    table = '<p class="empty" id="flags">No flagged input yet.</p>'
  nav = ''
  if records and len(records) == limit:
    q = urlencode({'before': int(records[-1]['id']), 'limit': limit})
    nav = f'<nav><a href="/review?{q}" id="older">older →</a></nav>'
  keep = 'images kept' if store_images else 'images not kept (hash and thumbnail only)'
  return _page('SCALE-UP firewall: flagged inputs', (
      '<h1>Flagged inputs</h1>'
      f'<p class="meta">{total} record{"s" if total != 1 else ""} in the store ({keep}), newest '
      f'first. Model <code>{html.escape(model)}</code>; {det}.</p>'
      '<form class="inline" method="post" action="/review/logout">'
      '<button type="submit">Sign out</button></form>'
      f'{table}{nav}'))
