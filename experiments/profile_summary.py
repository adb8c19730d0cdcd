"""Where a traced step's device time goes: the ops of a `jax.profiler` trace, summed.

    python -m experiments.profile_summary PROFILE_DIR [--top=25] [--output=ops.json]

PROFILE_DIR is what `python -m vgg_jax.benchmark --profile_dir=...` (or any
`jax.profiler.start_trace`, e.g. a training run's WORKDIR/profile) wrote. Reads
its newest `*.xplane.pb` with jax's own reader and, per device plane, adds up
the durations of the events on the "XLA Ops" line (on planes without one, on
every line) by op name; on the CPU backend, which has no device plane, the host
plane's events that XLA tagged with their HLO op. Prints and
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

from vgg_jax import cli
from vgg_jax import workdir as run_files

_OPS_LINE = 'XLA Ops'


def newest_xplane(profile_dir: str) -> str:
  paths = glob.glob(os.path.join(profile_dir, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'no *.xplane.pb under {profile_dir}: trace a run with '
                            '--profile_dir first')
  return max(paths, key=os.path.getmtime)


def _is_xla_op(event) -> bool:
  return any(key == 'hlo_op' for key, _ in event.stats)


def plane_op_times(plane, xla_ops_only: bool = False) -> dict:
  """{'lines': [...], 'total_ms': ..., 'ops': [{'name', 'ms', 'share', 'count'}, ...]};
  `xla_ops_only`: every line's events tagged with an HLO op (the CPU's host plane)."""
  lines = list(plane.lines)
  chosen = lines if xla_ops_only else [l for l in lines if l.name == _OPS_LINE] or lines
  ns, count = collections.Counter(), collections.Counter()
  for line in chosen:
    for event in line.events:
      if xla_ops_only and not _is_xla_op(event):
        continue
      ns[event.name] += event.duration_ns
      count[event.name] += 1
  total = sum(ns.values())
  ops = [{'name': name, 'ms': t / 1e6, 'share': t / total if total else 0.0,
          'count': count[name]} for name, t in ns.most_common()]
  summed = 'xla ops' if xla_ops_only else _OPS_LINE if chosen is not lines else 'all'
  return {'lines': [line.name for line in lines], 'summed_line': summed,
          'total_ms': total / 1e6, 'ops': ops}


def summarize(profile_dir: str, top: int) -> dict:
  path = newest_xplane(profile_dir)
  planes = list(jax.profiler.ProfileData.from_file(path).planes)  # an iterator
  devices = {plane.name: plane_op_times(plane) for plane in planes
             if plane.name.startswith('/device:')}
  if not devices:  # the CPU backend: XLA's ops run on the host's threads
    devices = {plane.name: plane_op_times(plane, xla_ops_only=True) for plane in planes
               if plane.name == '/host:CPU'}
  for summary in devices.values():
    summary['ops'] = summary['ops'][:top]
  return {'xplane': os.path.relpath(path, profile_dir), 'devices': devices}


def main(argv):
  """`argv` is [program, PROFILE_DIR] (`cli.flags_parser` refuses any other)."""
  try:
    result = summarize(argv[1], flags.FLAGS.top)
  except FileNotFoundError as e:
    sys.exit(f'experiments.profile_summary: error: {e}')
  text = json.dumps(result, indent=2)
  print(text)
  if flags.FLAGS.output:
    run_files.write_text_atomic(flags.FLAGS.output, text + '\n')


if __name__ == '__main__':
  flags.DEFINE_integer('top', 25, 'Ops listed per device, the most time first.')
  flags.DEFINE_string('output', None, 'Also write the JSON to this file.')
  app.run(main, flags_parser=cli.flags_parser('experiments.profile_summary',
                                              usage='PROFILE_DIR'))
