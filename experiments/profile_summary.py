"""Where a traced step's device time goes: the ops of a `jax.profiler` trace, summed.

    python -m experiments.profile_summary PROFILE_DIR [--top=25] [--output=ops.json]

PROFILE_DIR is what `python -m vgg_jax.benchmark --profile_dir=...` (or any
`jax.profiler.start_trace`) wrote. Reads its newest `*.xplane.pb` with jax's own
reader and, per device plane, adds up the durations of the events on the
"XLA Ops" line (on planes without one, on every line) by op name. Prints and
writes JSON: each op's milliseconds and share of the plane's summed time, the
largest first, and the line names found, so that a trace can be read on a machine
without TensorBoard or xprof (the device machines of a one-shot GPU run).
"""

import collections
import glob
import json
import os
import sys

import jax
from absl import app, flags

_OPS_LINE = 'XLA Ops'


def newest_xplane(profile_dir: str) -> str:
  paths = glob.glob(os.path.join(profile_dir, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'no *.xplane.pb under {profile_dir}: trace a run with '
                            '--profile_dir first')
  return max(paths, key=os.path.getmtime)


def plane_op_times(plane) -> dict:
  """{'lines': [...], 'total_ms': ..., 'ops': [{'name', 'ms', 'share', 'count'}, ...]}."""
  lines = list(plane.lines)
  chosen = [line for line in lines if line.name == _OPS_LINE] or lines
  ns, count = collections.Counter(), collections.Counter()
  for line in chosen:
    for event in line.events:
      ns[event.name] += event.duration_ns
      count[event.name] += 1
  total = sum(ns.values())
  ops = [{'name': name, 'ms': t / 1e6, 'share': t / total if total else 0.0,
          'count': count[name]} for name, t in ns.most_common()]
  return {'lines': [line.name for line in lines], 'summed_line': _OPS_LINE
          if chosen is not lines else 'all', 'total_ms': total / 1e6, 'ops': ops}


def summarize(profile_dir: str, top: int) -> dict:
  path = newest_xplane(profile_dir)
  planes = jax.profiler.ProfileData.from_file(path).planes
  devices = {}
  for plane in planes:
    if plane.name.startswith('/device:'):
      summary = plane_op_times(plane)
      summary['ops'] = summary['ops'][:top]
      devices[plane.name] = summary
  return {'xplane': os.path.relpath(path, profile_dir), 'devices': devices}


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('give one PROFILE_DIR')
  try:
    result = summarize(argv[1], flags.FLAGS.top)
  except FileNotFoundError as e:
    sys.exit(f'profile_summary: error: {e}')
  text = json.dumps(result, indent=2)
  print(text)
  if flags.FLAGS.output:
    with open(flags.FLAGS.output, 'w') as out:
      out.write(text + '\n')


if __name__ == '__main__':
  flags.DEFINE_integer('top', 25, 'Ops listed per device, the most time first.')
  flags.DEFINE_string('output', None, 'Also write the JSON to this file.')
  app.run(main)
