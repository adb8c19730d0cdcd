"""Trains the five CIFAR-10 sweeps at one size of configs/cifar10.py, a point at a
time, and commits each finished point, so that the campaign spans sittings and machines.

    python -m experiments.continue_sweeps --images=ROOT [--commit] [--seeds=3] [--dry_run]
        [--size=twocore|muon|amx,muon] [--epochs=E] [--only=REGEX]

At --size=twocore (the default) without --epochs, the size's own 10 epochs, in
experiments/results/cifar10_twocore; with it, E epochs for every point, in
experiments/results/cifar10_twocore_epochsE (25 epochs: what 15 minutes of the 2-core
machines hold for VGG-D since 2026-12-05). --size=muon: in experiments/results/cifar10_muon;
--size=amx,muon (VGG-D's 12 % in about 15 minutes of a 2-core CPU that multiplies
bfloat16; every point's conv1_1 a frozen whitening filter bank): in
experiments/results/cifar10_amx_muon.

ROOT holds CIFAR-10 as an image folder (ROOT/train/<class>/*.png|jpg,
ROOT/test/<class>/...). It is linked at workdirs/cifar10, and the points'
configs name that relative path: a point's frozen config (point.json) must
match for the point to count as done, whatever machine runs the campaign.

Order: seed 0 of every distinct point of every sweep, then seed 1, then seed 2,
so that a campaign cut off early has each configuration at least once
(`--only` runs just the points whose names match: e.g. more seeds for the
two configurations of one undecided comparison, `--seeds=5
--only='^variant=(C|D),seed='`). A
point shared by several sweeps (D at S = 37: depth, conv1x1, scale_jitter)
trains once and gets every sweep's evaluations right after, while its
checkpoints are on the machine. With --commit, each point's directory is
committed to git as soon as its training and evaluations are done:
everything but its checkpoints, which .gitignore keeps out. A fresh
clone then skips the committed points without starting them, and a point cut
off midway starts again from its newest checkpoint on the same machine, or
from scratch on another.

The points run through `experiments.sweep` (its local launcher), one at a
time: two at once would only share the same two cores.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from absl import app, flags

from experiments import sweep
from vgg_jax import cli, faults
from vgg_jax import workdir as run_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_ROOT = os.path.join('experiments', 'results')
# The configs/cifar10.py sizes a campaign can train at.
SIZES = ('twocore', 'muon', 'amx,muon')
IMAGES_LINK = os.path.join('workdirs', 'cifar10')
SWEEPS = ('depth', 'conv1x1', 'scale_jitter', 'lrn', 'kernel_size')


def sweep_argument(seeds: int, epochs: float = 0.0, size: str = 'twocore') -> str:
  return f'{size},folder={IMAGES_LINK},seeds={seeds}' + (f',epochs={epochs:g}' if epochs else '')


def results_dir(epochs: float = 0.0, size: str = 'twocore') -> str:
  """The campaign's directory: the size's own epochs, or `epochs` of them."""
  name = os.path.join(RESULTS_ROOT, f'cifar10_{size.replace(",", "_")}')
  return f'{name}_epochs{epochs:g}' if epochs else name


def link_images(images: str) -> None:
  """workdirs/cifar10 -> ROOT, the folder every point's config names."""
  if not os.path.isdir(os.path.join(images, 'train')):
    raise ValueError(f'--images={images} has no train/ directory: give the root of '
                     'CIFAR-10 as an image folder (ROOT/train/<class>/..., ROOT/test/...)')
  link = os.path.join(REPO, IMAGES_LINK)
  os.makedirs(os.path.dirname(link), exist_ok=True)
  if os.path.islink(link):
    os.remove(link)
  elif os.path.exists(link):
    raise ValueError(f'{link} exists and is not a link: move it away')
  os.symlink(os.path.abspath(images), link)


def campaign(seeds: int, epochs: float = 0.0, size: str = 'twocore'
             ) -> list[list[tuple[str, sweep.Point]]]:
  """The distinct points in the order they run (by seed, then by sweep), each
  as its (sweep name, point) for every sweep it belongs to: a shared point
  gets all its sweeps' evaluations while its checkpoints are at hand."""
  argument, workdir = sweep_argument(seeds, epochs, size), results_dir(epochs, size)
  sweeps = {}
  for name in SWEEPS:
    module, arg = sweep.load_sweep_module(
        os.path.join(REPO, 'configs', 'sweeps', f'{name}.py:{argument}'))
    sweeps[name] = sweep.make_points(module.get_config(arg), module.get_sweep(arg),
                                     os.path.join(REPO, workdir))
  by_point: dict[str, list[tuple[str, sweep.Point]]] = {}
  for seed in range(seeds):
    for name, points in sweeps.items():
      for point in points:
        if point.config['seed'] == seed:
          by_point.setdefault(point.name, []).append((name, point))
  return list(by_point.values())


def select(points: list[list[tuple[str, sweep.Point]]], only: str
           ) -> list[list[tuple[str, sweep.Point]]]:
  """The campaign's points whose names match the regex `only`, in campaign order."""
  pattern = sweep.name_pattern(only)
  selected = [m for m in points if pattern.search(m[0][1].name)]
  if not selected:
    raise ValueError(f'--only={only!r} matches none of the campaign\'s points, e.g. '
                     f'{", ".join(m[0][1].name for m in points[:3])}')
  return selected


def point_state(name: str, point: sweep.Point, results: str) -> str:
  """`sweep.status` of the point in the campaign's directory `results`; an error
  where evaluations are missing and no checkpoint is here to make them from."""
  point_dir = os.path.join(REPO, results, point.name)
  state = sweep.status(point_dir, point.evals)
  if state == 'evaluate' and not run_files.has_checkpoints(point_dir):
    raise ValueError(
        f'{point.name} lacks the {name} sweep\'s evaluations '
        f'{", ".join(sweep.missing_evals(point_dir, point.evals))} and its checkpoints are '
        'not on this machine: delete its directory to train it again')
  return state


def pending_memberships(memberships: list[tuple[str, sweep.Point]], results: str
                        ) -> list[tuple[str, sweep.Point, str]]:
  """(sweep, point, state) of one point's memberships whose training or
  evaluations are not yet in the campaign's directory `results`."""
  states = ((name, point, point_state(name, point, results)) for name, point in memberships)
  return [pending for pending in states if pending[2] != 'done']


def run_point(name: str, point: sweep.Point, seeds: int, epochs: float, size: str,
              stop: sweep.StopRequest) -> int:
  """The sweep's exit status for the point; once `stop.received`, the sweep is
  passed SIGTERM (its points checkpoint) and waited for."""
  sweep_file = os.path.join('configs', 'sweeps', f'{name}.py')
  cmd = [sys.executable, '-m', 'experiments.sweep',
         f'--sweep={sweep_file}:{sweep_argument(seeds, epochs, size)}',
         f'--workdir={results_dir(epochs, size)}', f'--only=^{re.escape(point.name)}$']
  print(f'$ {" ".join(cmd)}', flush=True)
  # A session of its own: a Ctrl-C reaches this process only, which stops it in order.
  proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True,
                          preexec_fn=sweep.end_with_parent())
  while proc.poll() is None:
    if stop.received:
      proc.send_signal(signal.SIGTERM)
      return proc.wait()
    time.sleep(0.5)
  return proc.returncode


def commit(name: str, point: sweep.Point, results: str) -> None:
  """Commits the point's directory, the sweeps' manifests and the committed
  points' changes: a point shared with this sweep has it added to its
  point.json's sweeps, which the report reads. Points not yet done stay out."""
  paths = [os.path.join(results, point.name), os.path.join(results, sweep.SWEEPS_DIR)]
  message = (f'Results: point {point.name} of the {name} sweep(s) (CIFAR-10, '
             f'{os.path.basename(results)})')
  for attempt in range(10):  # another git command may hold the index for a moment
    for git in (['add', *paths], ['commit', '-q', '-m', message, '--', results]):
      done = subprocess.run(['git', *git], cwd=REPO, check=False, capture_output=True, text=True)
      if done.returncode != 0:
        break
    if done.returncode == 0:
      return
    time.sleep(2 + attempt)
  reason = ' '.join((done.stderr or done.stdout).split())
  raise RuntimeError(f'git could not commit {point.name} ({reason}): its results are complete '
                     f'on disk; commit {" and ".join(paths)} with git, then rerun to go on')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  options = flags.FLAGS
  if options.epochs < 0:  # before the link: a bad flag changes nothing on disk
    sys.exit(f'experiments.continue_sweeps: error: --epochs={options.epochs:g} is negative: '
             'give a number of epochs, or leave it out for the size\'s own')
  results = results_dir(options.epochs, options.size)
  points = campaign(options.seeds, options.epochs, options.size)
  try:
    if options.only:
      points = select(points, options.only)
    link_images(options.images)
    pending = [todo for todo in (pending_memberships(m, results) for m in points) if todo]
  except ValueError as e:
    sys.exit(f'experiments.continue_sweeps: error: {e}')
  print(f'{len(points) - len(pending)} of the {len(points)} points are done, '
        f'{len(pending)} to run', flush=True)
  with sweep.StopRequest() as stop:
    for todo in pending:
      for name, point, state in todo:
        print(f'[{state}] {name}: {point.name}', flush=True)
      if options.dry_run:
        continue
      for name, point, _ in todo:
        status = run_point(name, point, options.seeds, options.epochs, options.size, stop)
        if stop.received:
          print(f'experiments.continue_sweeps: stopped by {stop.received}; rerun the same '
                'command to continue', file=sys.stderr)
          sys.exit(faults.PREEMPTED_EXIT_CODE)
        if status != 0:
          sys.exit(f'experiments.continue_sweeps: {point.name} failed: see '
                   f'{os.path.join(results, point.name, run_files.LOG_FILE)}')
      if options.commit:
        try:
          commit(', '.join(name for name, _, _ in todo), todo[0][1], results)
        except RuntimeError as e:
          sys.exit(f'experiments.continue_sweeps: error: {e}')


if __name__ == '__main__':
  flags.DEFINE_string('images', None, 'CIFAR-10 as an image folder.', required=True)
  flags.DEFINE_integer('seeds', 3, 'Seeds per configuration.', lower_bound=1)
  flags.DEFINE_enum('size', 'twocore', SIZES, 'The configs/cifar10.py size of every point; '
                    'a campaign of its own, in experiments/results/cifar10_SIZE.')
  flags.DEFINE_float('epochs', 0.0, 'Epochs of every point (0: the size\'s own); a campaign '
                     'of its own, in experiments/results/cifar10_SIZE_epochsE.')
  flags.DEFINE_bool('commit', False, 'git-commit each point once it is done.')
  flags.DEFINE_string('only', None, 'Only the points whose name matches this regex.')
  flags.DEFINE_bool('dry_run', False, 'List the points still to run; run nothing.')
  app.run(main, flags_parser=cli.flags_parser('experiments.continue_sweeps'))
