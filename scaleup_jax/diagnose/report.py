"""Words for a diagnosis (:func:`scaleup_jax.diagnose.diagnose`): text and markdown only."""

from __future__ import annotations


def summary_text(result: dict) -> str:
  """The lines ``eval.diagnose`` prints."""
  rec = result['recommendation']
  names = result['class_names']
  sets = result['scale_sets']
  first = next(iter(sets))
  s = sets[first]
  lines = [f"Diagnosis on {result['num_images']} benign images ({result['num_classes']} classes); "
           f"accuracy {s['accuracy']:.3f}"]
  if rec['sink_classes']:
    top = s['sink_shares'][-1]
    sinks = ', '.join(f"{names[k]} ({top[k]:.0%} of x{s['scales'][-1]:g} images)"
                      for k in rec['sink_classes'])
    lines.append(f'Sink classes (amplified images fall into them): {sinks}')
  else:
    lines.append('Sink classes: none (no class takes >= 25% of the most-amplified images)')
  lines.append(f'Benign SPC per true class, scale set {first}:')
  by = s['by_true_class']
  lines.append('  ' + '  '.join(f'{names[k]} {by["mean"][k]:.2f}' for k in range(len(names))))
  lines.append('Scale sets (benign mean SPC; FPR if every SPC = 1 image is flagged):')
  for name, d in sets.items():
    mark = '  <- recommended' if name == rec['scale_set'] else ''
    lines.append(f"  {name:<28} {d['benign_spc_mean']:.3f}   {d['fpr_at_spc_one']:.3f}{mark}")
  lines.append(f"Recommendation: mode {rec['mode']}, scales {rec['scales']}; {rec['why']}. "
               f"Expect an FPR of {rec['expected_fpr_flagging_spc_one']:.1%} when flagging "
               'SPC = 1; a calibrated threshold (eval.detect) can trade that for TPR.')
  return '\n'.join(lines)


def markdown(result: dict, command: str | None = None) -> str:
  """A markdown report of one diagnosis."""
  names = result['class_names']
  out = ['# SCALE-UP pre-deployment diagnosis', '']
  if command:
    out += [f'Command: `{command}`', '']
  out += ['```', summary_text(result), '```', '']
  for name, d in result['scale_sets'].items():
    out += [f'## Scale set {name}', '',
            '| class | images | benign SPC (true class) | at SPC 1 | share at largest scale |',
            '| --- | ---: | ---: | ---: | ---: |']
    by = d['by_true_class']
    last = d['sink_shares'][-1]
    for k, n in enumerate(names):
      out.append(f"| {n} | {by['count'][k]} | {by['mean'][k]:.3f} | {by['at_one'][k]:.3f} | "
                 f'{last[k]:.3f} |')
    out.append('')
  return '\n'.join(out)
