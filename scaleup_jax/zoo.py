"""The model zoo: one run directory per model under ``zoo/``, summarised as a table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scaleup_jax import paths

ZOO = paths.zoo_dir(required=False) or Path('zoo')


def zoo_entries(zoo_dir: Path = ZOO) -> list[dict]:
  """Metrics of every finished zoo model (directories with a ``metrics.json``)."""
  rows = []
  for d in sorted(p for p in Path(zoo_dir).iterdir() if (p / 'metrics.json').is_file()):
    m = json.loads((d / 'metrics.json').read_text())
    rows.append({'name': d.name, **{k: v for k, v in m.items() if k != 'history'}})
  return rows


def zoo_table(zoo_dir: Path = ZOO) -> str:
  """A markdown table: model, attack, rate, BA, ASR, epochs, wall time, command."""
  lines = ['| model dir | arch | attack | poison rate | BA | ASR | epochs | train time | command |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in zoo_entries(zoo_dir):
    asr = f"{100 * r['asr']:.2f}%" if 'asr' in r else '–'
    lines.append(
        f"| `{r['name']}` | {r['model']} | {r['attack']} | {r['poison_rate']:g} | "
        f"{100 * r['ba']:.2f}% | {asr} | {r['epochs']} | {r['train_seconds'] / 60:.0f} min "
        f"({r['device']}) | `{r['command']}` |")
  return '\n'.join(lines)


def main(argv: list[str]) -> int:
  """``python -m scaleup_jax.zoo [DIR]``: prints the table of ``DIR`` (default ``zoo/``)."""
  zoo_dir = Path(argv[0]) if argv else ZOO
  if len(argv) > 1 or not zoo_dir.is_dir():
    print(f'usage: python -m scaleup_jax.zoo [DIR]; {" ".join(argv)!r} is not one directory',
          file=sys.stderr)
    return 2
  print(zoo_table(zoo_dir))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
