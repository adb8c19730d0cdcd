"""What a training budget buys: test error against epochs, training time and FLOPs.

    python -m experiments.budget DIR [--goal=12] [--budget_tflop=305] [--num_classes=10]

Every run under DIR (a directory with config.json and metrics.jsonl, as
`vgg_jax.train` leaves them) becomes one curve in DIR/budget.png: its test top-1
error after each evaluation, against the epoch, the training time the loop
measured up to it, and the model's FLOPs trained up to it. The time is read back
from metrics.jsonl's rates (each logged interval's images over its img/s): the
loop's own clock, compilation included, evaluation excluded, so it is the time of
the machine the run was made on (in runs made before the loop timed evaluations
apart, an interval with an evaluation inside is timed at a neighbour's rate:
`interval_rates`); the FLOPs (`summary.train_flops_per_image` times
the images trained, the count behind the benchmark's MFU) are the same on every
machine. `--goal` draws a target error (%) across the panels, `--budget_tflop` a
FLOP budget across the last: a time budget at the machine's matmul peak
(`python -m vgg_jax.benchmark --measure=peak`) is the most any kernel could train
in it. DIR/budget.md tables each run's width, compute dtype (and Muon where it trains
the conv kernels, with its products' dtype), epochs, final error, training time, FLOPs
and the rate they were trained at. Both regenerate from the committed runs alone
(budget.md byte for byte, as the tests check).
"""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import Optional, Sequence

from absl import app, flags

from experiments import report
from vgg_jax import cli, config_schema, errors, summary
from vgg_jax import workdir as run_files
from vgg_jax.model import VGG

MARKDOWN = 'budget.md'
PLOT = 'budget.png'


def interval_rates(logged: Sequence[dict]) -> list[tuple[int, int, float]]:
  """(first step, last step, img/s) of each logged interval, as the loop timed it,
  except where an evaluation inside the interval was timed with the queued steps.

  The loop sets an evaluation's time aside. Until it waited for the queued steps
  first (the evaluation lines since then hold `eval/seconds`), that time held the
  dozens of steps still running asynchronously when the evaluation began, and an
  interval with an evaluation inside read 1.3-1.5 times as fast as the others
  (experiments/results/pilot_budget/README.md, 2026-12-06 (afternoon)). Such an
  interval takes the rate of the nearest interval after it without one (before
  it, for the last): the first interval holds the compilation.
  """
  intervals, previous, untimed_evaluation = [], 0, False
  for line in logged:
    if 'img_per_sec' in line:
      intervals.append((previous, line['step'], line['img_per_sec'], untimed_evaluation))
      previous, untimed_evaluation = line['step'], False
    # An evaluation at a logged step came after the log's wait: timed apart.
    elif 'eval/top1_error' in line and 'eval/seconds' not in line:
      untimed_evaluation = True
  fair = [i for i, (*_, biased) in enumerate(intervals) if not biased]

  def stand_in(i):
    after = [j for j in fair if j > i]
    return intervals[after[0] if after else fair[-1]][2]

  return [(first, last, stand_in(i) if biased and fair else rate)
          for i, (first, last, rate, biased) in enumerate(intervals)]


def _compute(dtype: str, optimizer: dict) -> str:
  """The model's dtype, and Muon where it trains the conv kernels (SGD unless the run
  says Muon), with the dtype of its products where not float32."""
  if optimizer.get('kernels', 'sgd') != 'muon':
    return dtype
  products = optimizer.get('muon_dtype', 'float32')
  return f'{dtype}, Muon' + ('' if products == 'float32' else f' ({products} products)')


def training_seconds(logged: Sequence[dict], batch_size: int) -> dict[int, float]:
  """{logged step: training seconds up to it}, from each interval's img/s
  (`interval_rates`)."""
  ends = {last: (last - first) * batch_size / rate
          for first, last, rate in interval_rates(logged)}
  seconds, total = {}, 0.0
  for line in logged:
    total += ends.get(line['step'], 0.0)
    seconds[line['step']] = total
  return seconds


@functools.cache
def _train_flops_per_image(network: VGG) -> int:
  # Cached by the network (modules hash by their fields): tracing one takes a
  # quarter of a second, and the runs share a few networks.
  return summary.train_flops_per_image(network)


def run_curve(run_dir: str, root: str, num_classes: int) -> dict:
  """One run's label, size and (epoch, training minutes, model TFLOP trained,
  top-1 error) points: the last is the whole run's."""
  config = config_schema.complete(run_files.read_json(os.path.join(run_dir,
                                                                   run_files.CONFIG_FILE)))
  logged = run_files.read_metrics(run_dir)
  seconds = training_seconds(logged, config['batch_size'])
  evals = report.epoch_evaluations(logged, config['num_epochs'])
  if not evals:
    raise ValueError(f'{run_dir} has no evaluation in its metrics.jsonl: a run that '
                     'evaluated at least once is needed')
  model = config['model']
  network = VGG.from_config(model, num_classes, config['data']['image_size'])
  flops_per_step = config['batch_size'] * _train_flops_per_image(network)
  return {
      'run': os.path.relpath(run_dir, root),
      'config': report.config_label(model), 'width': model['width'],
      'dtype': model['dtype'], 'batch_size': config['batch_size'],
      'compute': _compute(model['dtype'], config['optimizer']),
      'epochs': config['num_epochs'],
      'points': [(epoch, seconds[step] / 60, step * flops_per_step / 1e12, error)
                 for step, epoch, error in evals],
  }


def find_curves(root: str, num_classes: int = 10) -> list[dict]:
  """Every run under `root` with a config and metrics, in path order."""
  runs = report.find_runs(root, marker=run_files.METRICS_FILE)
  if not runs:
    raise ValueError(f'no run (a directory with config.json and metrics.jsonl) under {root}: '
                     'pass a directory that holds training runs')
  return [run_curve(run, root, num_classes) for run in runs]


def markdown(curves: Sequence[dict]) -> str:
  lines = ['| run | config | width | compute | epochs | final top-1 error | training time | '
           'model FLOPs trained | their rate |',
           '|---|---|---|---|---|---|---|---|---|']
  for c in curves:
    _, minutes, tflop, error = c['points'][-1]
    lines.append(f'| `{c["run"]}` | {c["config"]} | {c["width"]:g} | {c["compute"]} | '
                 f'{c["epochs"]:g} | '
                 f'{100 * error:.1f} % | {minutes:.1f} min | {tflop:,.0f} TFLOP | '
                 f'{tflop * 1e3 / (minutes * 60):.0f} GFLOP/s |')
  return ('Test top-1 error (centre crop) after the last epoch, the training time the '
          'loop measured (compilation included, evaluations excluded; in runs made before '
          'the loop timed evaluations apart, an interval with an evaluation inside at the '
          "rate of the next one without, `budget.interval_rates`), and the "
          "model's FLOPs over every image trained (forward and backward, "
          '`summary.train_flops_per_image`) with the rate that time gives them, per run; '
          f'`python -m experiments.budget` wrote this file and `{PLOT}`.\n\n'
          + '\n'.join(lines) + '\n')


def families(curves: Sequence[dict]) -> dict[str, list[dict]]:
  """The runs grouped by what sets their speed and schedule (compute dtype, width,
  batch), float32 first, then by width and batch: one colour and one legend entry
  each, so that dozens of runs stay readable (budget.md names every run)."""
  groups: dict[str, list[dict]] = {}
  # A stable sort: each family's runs stay in the order given.
  for c in sorted(curves, key=lambda c: (c['dtype'] != 'float32', c['compute'], c['width'],
                                         c['batch_size'])):
    groups.setdefault(f'width {c["width"]:g}, {c["compute"]}, batch {c["batch_size"]}',
                      []).append(c)
  return groups


def plot(curves: Sequence[dict], path: str, goal: Optional[float] = None,
         budget_tflop: Optional[float] = None) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
  for colour, (family, members) in zip(plt.cm.tab10.colors * 2, families(curves).items()):
    for i, c in enumerate(members):
      *abscissae, top1 = zip(*c['points'])
      label = f'{family} ({len(members)} run{"s" * (len(members) > 1)})' if i == 0 else None
      for ax, x in zip(axes, abscissae):
        ax.plot(x, [100 * e for e in top1], color=colour, alpha=0.7, linewidth=1,
                marker='.', markersize=3, label=label)
  if goal is not None:
    for ax in axes:
      ax.axhline(goal, color='black', linestyle='--', linewidth=1, label=f'goal, {goal:g} %')
  if budget_tflop is not None:
    axes[2].axvline(budget_tflop, color='black', linestyle=':', linewidth=1,
                    label=f'budget, {budget_tflop:g} TFLOP')
  axes[0].set_xlabel('epoch')
  axes[1].set_xlabel('training time (min), as measured on its machine')
  axes[2].set_xlabel("model FLOPs trained (TFLOP), the same on every machine")
  axes[0].set_ylabel('test top-1 error (%), centre crop')
  fig.suptitle('What a training budget buys (each run one line; budget.md names them)')
  report.save_figure(fig, axes, path, legend_axes=(axes[0], axes[2]))


def write_budget(root: str, goal: Optional[float] = None, num_classes: int = 10,
                 budget_tflop: Optional[float] = None) -> str:
  """budget.md and budget.png in `root`; returns the markdown's path."""
  curves = find_curves(root, num_classes)
  plot(curves, os.path.join(root, PLOT), goal, budget_tflop)
  path = os.path.join(root, MARKDOWN)
  run_files.write_text_atomic(path, markdown(curves))
  return path


def _define_flags() -> types.SimpleNamespace:
  """Defined by `python -m experiments.budget` only: importing defines no flag."""
  return types.SimpleNamespace(
      goal=flags.DEFINE_float('goal', None, 'A target test error (%) to draw.'),
      budget_tflop=flags.DEFINE_float(
          'budget_tflop', None, 'A budget of model FLOPs (TFLOP) to draw, e.g. a time '
          "budget at the machine's matmul peak: 15 min at 339 GFLOP/s is 305."),
      num_classes=flags.DEFINE_integer(
          'num_classes', 10, "The runs' number of classes (FC3's size in the FLOP count; "
          'config.json does not hold it).'))


def main(argv, command: types.SimpleNamespace):
  """`argv` is [program, DIR] (`cli.flags_parser` refuses any other)."""
  try:
    path = write_budget(argv[1], command.goal.value, command.num_classes.value,
                        command.budget_tflop.value)
  except errors.USER_ERRORS as e:
    sys.exit(f'experiments.budget: error: {e}')
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(functools.partial(main, command=_define_flags()),
          flags_parser=cli.flags_parser('experiments.budget', usage='DIR'))
