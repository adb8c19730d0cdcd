"""How much of a traced step's span XLA's ops cover, and by which kind of op.

    python experiments/results/benchmarks/step_timeline_20261206/timeline.py PROFILE_DIR STEPS

PROFILE_DIR: what `python -m vgg_jax.benchmark ... --steps=STEPS --profile_dir=PROFILE_DIR`
wrote (a trace of one window of STEPS steps). Reads the CPU's host plane as
`experiments.profile_summary` does (events tagged with an HLO op), then prints the span
from the first op's start to the last op's end, the union of the ops' intervals (time in
which at least one op ran), the idle rest and its gaps by size, and the ops' summed time
by kind (the op name without its number), per step.
"""

import collections
import os
import re
import sys

import jax

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *['..'] * 4)))
from experiments import profile_summary  # pylint: disable=wrong-import-position


def main(profile_dir, steps):
  path = profile_summary.newest_xplane(profile_dir)
  plane = next(p for p in jax.profiler.ProfileData.from_file(path).planes
               if p.name == '/host:CPU')
  events = sorted((e.start_ns, e.start_ns + e.duration_ns, e.name)
                  for line in plane.lines for e in line.events
                  if profile_summary._is_xla_op(e))  # pylint: disable=protected-access
  busy, gaps = 0, []
  start, end = events[0][:2]
  for s, e, _ in events[1:]:
    if s > end:
      busy, gaps, start = busy + end - start, gaps + [s - end], s
    end = max(end, e)
  busy += end - start
  span = max(e for _, e, _ in events) - events[0][0]
  print(f'per step: span {span / 1e6 / steps:.2f} ms, ops running {busy / 1e6 / steps:.2f} ms '
        f'({busy / span:.1%}), idle {(span - busy) / 1e6 / steps:.2f} ms in '
        f'{len(gaps) / steps:.0f} gaps')
  sizes = collections.Counter()
  for g in gaps:
    sizes['< 10 us' if g < 1e4 else '< 100 us' if g < 1e5 else '< 1 ms' if g < 1e6
          else '>= 1 ms'] += g / 1e6 / steps
  print('idle by gap size, ms per step:', {k: round(v, 2) for k, v in sorted(sizes.items())})
  kinds = collections.Counter()
  for s, e, name in events:
    kinds[re.sub(r'\.\d+$', '', name)] += (e - s) / 1e6 / steps
  total = sum(kinds.values())
  print(f'ops summed: {total:.2f} ms per step')
  for kind, ms in kinds.most_common(12):
    print(f'  {ms:6.2f} ms {ms / total:6.1%}  {kind}')


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]))
