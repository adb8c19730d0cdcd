"""The report of sweeps: a table in the paper's format, a CSV and plots.

    python -m experiments.report DIR [--out=OUT]     # scan DIR's runs
    python -m experiments.report OUT --from_csv      # regenerate from OUT/results.csv

Scanning finds every run under DIR (a directory with config.json and
eval/*.json, as `experiments.sweep` and `vgg_jax.evaluate` leave them) and
writes OUT/results.csv (default OUT = DIR): one row per sweep, point and
evaluation, with the point's architecture, seed, scales and errors; and
OUT/curves.csv: each point's test error after each epoch of its training
(its metrics.jsonl). Then, from the CSVs alone, so that `--from_csv`
regenerates the same report:

  report.md  the verdict on each of the paper's seven claims (numbers, test,
             reproduces / does not / inconclusive: experiments/claims.py),
             the compute each sweep took (training and evaluation wall
             time as each point recorded it) and each point took, beside
             the machine that trained it, then per sweep a table in the
             layout of the paper's Tables 3-5 (config, train S, test Q,
             protocol, top-1 / top-5 error in % as mean ± sample std over
             seeds, number of seeds);
  <sweep>.png  top-1 and top-5 error per configuration (error bars: std over
             seeds); against the number of weight layers when every
             configuration has its own depth, and against the test scale Q,
             one line per training scale, when a sweep varies the training
             scale and tests at single scales;
  <sweep>_curves.png  test error against epoch, one line per configuration,
             mean over seeds.

A point shared by several sweeps (same name and config in one DIR) appears in
each of them. Runs made outside a sweep are grouped as sweep 'runs'.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import sys
import types
from collections import OrderedDict
from typing import Optional, Sequence

from absl import app, flags

from experiments import claims
from vgg_jax import cli, config_schema, errors, evaluation, machine
from vgg_jax import workdir as run_files
from vgg_jax.model import CONFIGS, config_layers

CSV_FILE = 'results.csv'
CURVES_FILE = 'curves.csv'
REPORT_FILE = 'report.md'
COLUMNS = ('sweep', 'order', 'point', 'seed', 'config', 'weight_layers', 'variant',
           'depths', 'kernel_size', 'conv1x1', 'lrn', 'batch_norm', 'width', 'fc_width',
           'head', 'epochs', 'train_scale', 'test_scale', 'protocol', 'test_scales', 'flip',
           'step', 'num_examples', 'top1_error', 'top5_error', 'nll', 'train_seconds', 'machine',
           'eval_seconds')
NUMERIC = {'order': int, 'seed': int, 'weight_layers': int, 'kernel_size': int,
           'width': float, 'fc_width': int, 'epochs': float, 'step': int,
           'num_examples': int, 'top1_error': float, 'top5_error': float, 'nll': float,
           'train_seconds': float, 'eval_seconds': float}
CURVE_COLUMNS = ('sweep', 'order', 'point', 'seed', 'config', 'train_scale', 'epoch', 'step',
                 'top1_error')
CURVE_NUMERIC = {'order': int, 'seed': int, 'epoch': float, 'step': int, 'top1_error': float}
# How the report names them: 'single' is the centre crop, not the paper's
# single-scale Table 3, which is dense evaluation at Q = S.
PROTOCOL_LABELS = {'single': 'centre crop', 'dense': 'dense', 'multicrop': 'multi-crop',
                   'dense+multicrop': 'dense + multi-crop'}
OTHER_RUNS = 'runs'
ALL_POINTS = 'all sweeps, each point once'


# --------------------------------------------------------------------------
# Scanning runs into rows.
# --------------------------------------------------------------------------


def find_runs(root: str, marker: str = run_files.EVAL_DIR) -> list[str]:
  """Directories under `root` (itself included) holding config.json and `marker`
  (by default eval/, the evaluated runs)."""
  runs = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs
                        if d not in (run_files.CHECKPOINT_DIR, run_files.SLURM_DIR))
    if run_files.CONFIG_FILE in files and os.path.exists(os.path.join(directory, marker)):
      runs.append(directory)
  return sorted(runs)


def scale_label(scale) -> str:
  """'37' for a fixed scale, '[37,73]' for a range (as vgg_jax.evaluate prints)."""
  lo, hi = (scale, scale) if isinstance(scale, (int, float)) else scale
  return str(int(lo)) if lo == hi else f'[{int(lo)},{int(hi)}]'


def config_label(model: dict) -> str:
  """The row of Table 1, plus what the run changes about it: 'B 5x5 1-1-1-1-1'."""
  variant = model['variant']
  row = CONFIGS.get(variant, {})
  parts = [variant]
  depths = model['depths']
  if depths is not None and tuple(depths) != tuple(row.get('depths', ())):
    parts.append('depths ' + '-'.join(str(d) for d in depths))
  if model['kernel_size'] != 3:
    k = model['kernel_size']
    parts.append(f'{k}x{k}')
  if model['conv1x1'] is not None and bool(model['conv1x1']) != row.get('conv1x1'):
    parts.append('+1x1' if model['conv1x1'] else '-1x1')
  if model['lrn'] is not None and bool(model['lrn']) != row.get('lrn'):
    parts.append('+LRN' if model['lrn'] else '-LRN')
  return ' '.join(parts)


def weight_layers(model: dict) -> int:
  return len(config_layers(model)) + (3 if model['head'] == 'fc' else 2)


def _sweep_manifests(root: str) -> dict[str, dict[str, tuple[int, list[str]]]]:
  """{sweep: {point: (position, the sweep's evaluations of it)}} from the
  manifests experiments.sweep writes."""
  manifests = {}
  for directory, _, files in os.walk(root):
    if os.path.basename(directory) != 'sweeps':
      continue
    for file in sorted(files):
      manifest = run_files.read_json(os.path.join(directory, file))
      if isinstance(manifest, dict) and 'points' in manifest:
        manifests[manifest['sweep']] = {p['name']: (i, p.get('evals'))
                                        for i, p in enumerate(manifest['points'])}
  return manifests


def _manifest_entry(manifests: dict, sweep: str, name: str) -> tuple[int, list[str] | None]:
  """(position, evaluations) of point `name` in `sweep`'s manifest; a point no
  manifest lists comes last and keeps every evaluation."""
  return manifests.get(sweep, {}).get(name, (10**6, None))


def _order(manifests: dict, sweep: str, name: str) -> int:
  return _manifest_entry(manifests, sweep, name)[0]


def _sweep_eval_files(manifests: dict, sweep: str, name: str, done: dict):
  """The eval/ files of the evaluations `sweep` asked of point `name` (`done`: the
  point's evals.json, spec -> file), or None (every file) where the manifest or
  evals.json does not say: a point shared by sweeps holds all their
  evaluations, and each sweep's table and plot show its own."""
  specs = _manifest_entry(manifests, sweep, name)[1]
  if specs is None or not done:
    return None
  return {done[spec] for spec in specs if spec in done}


def run_rows(run_dir: str, manifests: dict) -> list[dict]:
  saved = run_files.read_json(os.path.join(run_dir, run_files.CONFIG_FILE))
  config = config_schema.complete(saved)
  point = run_files.read_json(os.path.join(run_dir, run_files.POINT_FILE), {})
  trained = run_files.read_json(os.path.join(run_dir, run_files.TRAIN_RESULT_FILE), {})
  model, data = config['model'], config['data']
  name = point.get('name', os.path.basename(os.path.normpath(run_dir)))
  base = {
      'point': name, 'seed': config['seed'], 'config': config_label(model),
      'weight_layers': weight_layers(model), 'variant': model['variant'],
      'depths': '-'.join(map(str, model['depths'])) if model['depths'] else '',
      'kernel_size': model['kernel_size'],
      'conv1x1': '' if model['conv1x1'] is None else model['conv1x1'],
      'lrn': '' if model['lrn'] is None else model['lrn'],
      'batch_norm': model['batch_norm'], 'width': model['width'],
      'fc_width': model['fc_width'], 'head': model['head'],
      'epochs': config['num_epochs'], 'train_scale': scale_label(data['train_scale']),
      'test_scale': data['test_scale'],
      'train_seconds': trained.get('wall_seconds', ''),
      'machine': training_machines(trained),
  }
  sweeps = point.get('sweeps') or [OTHER_RUNS]
  done = run_files.read_json(os.path.join(run_dir, run_files.EVALS_FILE), {})
  own_files = {sweep: _sweep_eval_files(manifests, sweep, name, done) for sweep in sweeps}
  rows = []
  eval_dir = os.path.join(run_dir, run_files.EVAL_DIR)
  for file in sorted(os.listdir(eval_dir)):
    if not file.endswith('.json'):
      continue
    result = run_files.read_json(os.path.join(eval_dir, file))
    if not isinstance(result, dict) or 'top1_error' not in result:
      continue
    for sweep in sweeps:
      if own_files[sweep] is not None and file not in own_files[sweep]:
        continue
      rows.append({
          **base, 'sweep': sweep, 'order': _order(manifests, sweep, name),
          'protocol': result['protocol'],
          'test_scales': ','.join(str(q) for q in result['scales']),
          'flip': result.get('flip'), 'step': result.get('step'),
          'num_examples': result['num_examples'], 'top1_error': result['top1_error'],
          'top5_error': result['top5_error'], 'nll': result.get('nll', ''),
          'eval_seconds': result.get('seconds', ''),
      })
  return rows


def training_machines(trained: dict) -> str:
  """The machines that trained a point, in the order of its segments
  (`experiments.point`): '' where train_result.json predates the record."""
  labels = [machine.label(s['machine']) for s in trained.get('segments', ())]
  return ' + '.join(dict.fromkeys(labels))


def epoch_evaluations(logged: Sequence[dict], num_epochs: float) -> list[tuple[int, float, float]]:
  """(step, epoch, top-1 error) of each evaluation during training in a run's
  metrics records, at epoch step x epochs / last step, the evaluations being
  once an epoch."""
  evals = [(line['step'], line['eval/top1_error']) for line in logged
           if 'eval/top1_error' in line]
  last = max((step for step, _ in evals), default=0)
  return [(step, step * num_epochs / last, error) for step, error in evals]


def curve_rows(run_dir: str, manifests: dict) -> list[dict]:
  """The run's test error after each evaluation during training (metrics.jsonl)."""
  logged = run_files.read_metrics(run_dir)
  if not any('eval/top1_error' in line for line in logged):
    return []
  config = config_schema.complete(run_files.read_json(os.path.join(run_dir,
                                                                   run_files.CONFIG_FILE)))
  point = run_files.read_json(os.path.join(run_dir, run_files.POINT_FILE), {})
  name = point.get('name', os.path.basename(os.path.normpath(run_dir)))
  return [{'sweep': sweep, 'order': _order(manifests, sweep, name), 'point': name,
           'seed': config['seed'], 'config': config_label(config['model']),
           'train_scale': scale_label(config['data']['train_scale']),
           'epoch': epoch, 'step': step, 'top1_error': error}
          for sweep in point.get('sweeps') or [OTHER_RUNS]
          for step, epoch, error in epoch_evaluations(logged, config['num_epochs'])]


def scan_curves(root: str) -> list[dict]:
  manifests = _sweep_manifests(root)
  rows = [row for run in find_runs(root) for row in curve_rows(run, manifests)]
  return sorted(rows, key=lambda r: (r['sweep'], r['order'], r['point'], r['step']))


def scan(root: str) -> list[dict]:
  manifests = _sweep_manifests(root)
  rows = [row for run in find_runs(root) for row in run_rows(run, manifests)]
  return sorted(rows, key=lambda r: (r['sweep'], r['order'], r['point'],
                                     _protocol_rank(r['protocol']), _scales_rank(r['test_scales'])))


def _protocol_rank(protocol: str) -> int:
  protocols = evaluation.PROTOCOLS
  return protocols.index(protocol) if protocol in protocols else len(protocols)


def _scales_rank(test_scales: str) -> tuple:
  """Single scales before several, each in increasing order: '48' < '32,48,64'."""
  scales = [int(q) for q in test_scales.split(',')]
  return len(scales), scales


# --------------------------------------------------------------------------
# The CSV: what the report is made from.
# --------------------------------------------------------------------------


def write_csv(rows: Sequence[dict], path: str, columns: Sequence[str] = COLUMNS) -> None:
  text = io.StringIO(newline='')
  writer = csv.DictWriter(text, fieldnames=columns, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    # repr keeps every float exactly, so the CSV regenerates the report.
    writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
  run_files.write_text_atomic(path, text.getvalue())


def read_csv(path: str, numeric: dict = NUMERIC) -> list[dict]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: run `python -m experiments.report DIR` on a '
                            'sweep directory first')
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    for key, kind in numeric.items():
      if row.get(key) not in (None, ''):
        row[key] = kind(float(row[key])) if kind is int else kind(row[key])
  return rows


# --------------------------------------------------------------------------
# Aggregation over seeds, the table and the plots.
# --------------------------------------------------------------------------


def aggregate(rows: Sequence[dict]) -> 'OrderedDict[str, list[dict]]':
  """{sweep: [one entry per (config, train S, protocol, test Q) over seeds]}."""
  groups: 'OrderedDict[tuple, list[dict]]' = OrderedDict()
  for row in rows:
    key = (row['sweep'], row['config'], row['train_scale'], row['protocol'],
           row['test_scales'], str(row['flip']))
    groups.setdefault(key, []).append(row)
  sweeps: 'OrderedDict[str, list[dict]]' = OrderedDict()
  for (sweep, config, train_scale, protocol, test_scales, _), members in groups.items():
    top1, top1_std = claims.mean_std([m['top1_error'] for m in members])
    top5, top5_std = claims.mean_std([m['top5_error'] for m in members])
    sweeps.setdefault(sweep, []).append(dict(
        config=config, train_scale=train_scale, protocol=protocol, test_scales=test_scales,
        weight_layers=members[0]['weight_layers'], order=min(m['order'] for m in members),
        top1=top1, top1_std=top1_std, top5=top5, top5_std=top5_std,
        seeds=sorted(m['seed'] for m in members)))
  for entries in sweeps.values():
    entries.sort(key=lambda e: (e['order'], _protocol_rank(e['protocol']),
                                _scales_rank(e['test_scales'])))
  return sweeps


def _percent(mean: float, std: Optional[float]) -> str:
  return f'{100 * mean:.1f}' if std is None else f'{100 * mean:.1f} ± {100 * std:.1f}'


def markdown(sweeps: 'OrderedDict[str, list[dict]]', plots: dict[str, str],
             verdicts: Sequence[dict] = (), curve_plots: Optional[dict[str, str]] = None,
             compute: Optional['OrderedDict[str, dict]'] = None,
             points: Optional['OrderedDict[str, dict]'] = None) -> str:
  lines = ['# Results', '',
           'Top-1 and top-5 test error in %, mean ± sample standard deviation over the '
           'seeds listed; generated by `python -m experiments.report` from '
           f'`{CSV_FILE}`. The paper\'s Table 3 is dense evaluation at one test scale '
           '(Q = S); the centre crop is the quick single-view check.', '']
  if verdicts:
    lines += verdict_table(verdicts)
  if compute:
    lines += compute_table(compute, points)
  curve_plots = curve_plots or {}
  for sweep, entries in sweeps.items():
    lines += [f'## {sweep}', '',
              '| config | weight layers | train S | test Q | protocol | top-1 err | '
              'top-5 err | seeds |',
              '|---|---|---|---|---|---|---|---|']
    for e in entries:
      lines.append(f'| {e["config"]} | {e["weight_layers"]} | {e["train_scale"]} | '
                   f'{e["test_scales"]} | {protocol_label(e["protocol"])} | '
                   f'{_percent(e["top1"], e["top1_std"])} | '
                   f'{_percent(e["top5"], e["top5_std"])} | '
                   f'{",".join(str(s) for s in e["seeds"])} |')
    if sweep in plots:
      lines += ['', f'![{sweep}]({plots[sweep]})']
    if sweep in curve_plots:
      lines += ['', f'![{sweep}: test error during training]({curve_plots[sweep]})']
    lines.append('')
  return '\n'.join(lines)


def point_times(rows: Sequence[dict]) -> 'OrderedDict[str, dict]':
  """{point: {train, machine, passes: {pass: seconds}}} in the rows' order; a
  pass is the protocols evaluated together (same scales, one time)."""
  per_point: 'OrderedDict[str, dict]' = OrderedDict()
  for row in rows:
    point = per_point.setdefault(row['point'], {'train': row['train_seconds'], 'passes': {},
                                                'machine': row.get('machine') or ''})
    point['passes'][(row['test_scales'], row['eval_seconds'])] = row['eval_seconds']
  return per_point


def compute_time(rows: Sequence[dict]) -> 'OrderedDict[str, dict]':
  """{sweep, then ALL_POINTS: {points, trained, train_seconds, eval_seconds}}.

  A point's training counts once per sweep it belongs to (once in ALL_POINTS);
  its evaluations count once per pass: the protocols one pass evaluates
  together (multi-crop and dense + multi-crop) share its scales and its time.
  """
  per_point = point_times(rows)
  sweeps: 'OrderedDict[str, set]' = OrderedDict()
  for row in rows:
    sweeps.setdefault(row['sweep'], set()).add(row['point'])
  sweeps[ALL_POINTS] = set(per_point)
  totals: 'OrderedDict[str, dict]' = OrderedDict()
  for sweep, points in sweeps.items():
    points = sorted(points)  # a fixed order of the float sums, whatever the hash seed
    trained = [per_point[p]['train'] for p in points if per_point[p]['train'] != '']
    passes = [s for p in points for s in per_point[p]['passes'].values() if s != '']
    totals[sweep] = {'points': len(points), 'trained': len(trained),
                     'train_seconds': sum(trained), 'eval_seconds': sum(passes)}
  return totals


def _duration(seconds: float) -> str:
  minutes = int(round(seconds / 60))
  return f'{minutes // 60} h {minutes % 60} min' if minutes >= 60 else f'{minutes} min'


def _clock(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f'{minutes} min {seconds} s'


def compute_table(totals: 'OrderedDict[str, dict]',
                  points: Optional['OrderedDict[str, dict]'] = None) -> list[str]:
  lines = ['## Compute', '',
           'Wall time as each point recorded it (`train_result.json`, `eval/*.json`), on '
           'whatever machine trained it: training includes the evaluations during training; '
           'evaluation is the test protocols after training, one pass counted once. '
           'A point in several sweeps counts in each; the last row counts it once.', '',
           '| sweep | points | training | evaluation |', '|---|---|---|---|']
  for sweep, t in totals.items():
    timed = '' if t['trained'] == t['points'] else f' ({t["trained"]} timed)'
    lines.append(f'| {sweep} | {t["points"]}{timed} | {_duration(t["train_seconds"])} | '
                 f'{_duration(t["eval_seconds"])} |')
  if points:
    lines += ['', 'Per point, with the machine that trained it (`train_result.json`\'s '
              'segments since 2026-12-07; before, the folder\'s README names it): a bfloat16 '
              'size trains nearly three times as fast with AVX-512 BF16 as with AVX2 only.', '',
              '| point | machine | training | evaluation |', '|---|---|---|---|']
    for name, p in points.items():
      trained = 'not recorded' if p['train'] == '' else _clock(p['train'])
      passes = [t for t in p['passes'].values() if t != '']
      lines.append(f'| {name} | {p["machine"] or "not recorded"} | {trained} | '
                   f'{_clock(sum(passes)) if passes else "not recorded"} |')
  return lines + ['']


def _measured(summary: dict) -> str:
  if not summary['n']:
    return 'none'
  return f'{_percent(summary["mean"], summary["std"])} (n = {summary["n"]})'


def verdict_table(verdicts: Sequence[dict]) -> list[str]:
  """The paper's claims, one row per comparison (experiments/claims.py)."""
  lines = ['## Verdicts', '',
           f'Each comparison: top-1 error in % of the first group against the second, '
           f'mean ± std (n); a two-sided test at {claims.ALPHA:g}, Welch\'s t over seeds '
           'between configurations, paired t over models between protocols. A claim '
           'reproduces when every comparison goes the paper\'s way, does not when one goes '
           'significantly against it, and is inconclusive otherwise (experiments/claims.py).',
           '', '| claim | the paper | comparison | first | second | expected | test, p | '
           'verdict |', '|---|---|---|---|---|---|---|---|']
  for verdict in verdicts:
    for i, c in enumerate(verdict['comparisons']):
      p = 'n < 2' if c['p'] is None else f'{c["test"]}, p = {c["p"]:.3f}'
      lines.append(
          f'| {verdict["claim"] if i == 0 else ""} | {verdict["paper"] if i == 0 else ""} | '
          f'{c["label"]} | {_measured(c["first"])} | {_measured(c["second"])} | '
          f'{c["expect"]} | {p} ({c["outcome"]}) | '
          f'{verdict["verdict"] if i == 0 else ""} |')
  return lines + ['']


def protocol_label(protocol: str) -> str:
  return PROTOCOL_LABELS.get(protocol, protocol)


def _series_key(e: dict) -> str:
  return f'{protocol_label(e["protocol"])} Q={e["test_scales"]}'


def plot_sweep(sweep: str, entries: Sequence[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  train_scales = list(dict.fromkeys(e['train_scale'] for e in entries))
  single_q = [e for e in entries if e['protocol'] == 'single' and ',' not in e['test_scales']]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  if len(train_scales) > 1 and len({e['test_scales'] for e in single_q}) > 1:
    # Fixed against jittered S, across test scales: one line per training scale.
    for metric, ax in zip(('top1', 'top5'), axes):
      for config, train_scale in dict.fromkeys((e['config'], e['train_scale']) for e in single_q):
        points = sorted((int(e['test_scales']), e) for e in single_q
                        if e['train_scale'] == train_scale and e['config'] == config)
        ax.errorbar([q for q, _ in points], [100 * e[metric] for _, e in points],
                    yerr=[100 * (e[f'{metric}_std'] or 0) for _, e in points],
                    marker='o', capsize=3, label=f'{config}, train S={train_scale}')
      ax.set_xlabel('test scale Q (centre crop)')
  else:
    configs = list(dict.fromkeys(e['config'] for e in entries))
    layers = {e['config']: e['weight_layers'] for e in entries}
    by_depth = len(set(layers.values())) == len(configs) > 1
    positions = ({c: layers[c] for c in configs} if by_depth
                 else {c: i for i, c in enumerate(configs)})
    series = list(dict.fromkeys(_series_key(e) for e in entries))
    for metric, ax in zip(('top1', 'top5'), axes):
      for i, key in enumerate(series):
        chosen = [e for e in entries if _series_key(e) == key]
        # A small offset per series keeps overlapping error bars apart.
        offset = (i - (len(series) - 1) / 2) * (0.08 if by_depth else 0.05)
        ax.errorbar([positions[e['config']] + offset for e in chosen],
                    [100 * e[metric] for e in chosen],
                    yerr=[100 * (e[f'{metric}_std'] or 0) for e in chosen],
                    marker='o', capsize=3, linestyle='-' if by_depth else 'none', label=key)
      ax.set_xticks([positions[c] for c in configs])
      ax.set_xticklabels([f'{c}\n({layers[c]} layers)' if by_depth else c for c in configs],
                         fontsize=8)
      ax.set_xlabel('weight layers' if by_depth else 'configuration')
  for metric, ax in zip(('top-1', 'top-5'), axes):
    ax.set_ylabel(f'{metric} error (%)')
  fig.suptitle(f'{sweep}: mean ± std over seeds')
  save_figure(fig, axes, path)


def save_figure(fig, axes, path: str, legend_axes=None) -> None:
  """Grid on every axis and a legend on each of `legend_axes` (default: every
  axis), then the PNG written atomically (a reader never sees half a file)."""
  for ax in axes:
    ax.grid(alpha=0.3)
  for ax in axes if legend_axes is None else legend_axes:
    ax.legend(fontsize=7)
  fig.tight_layout()
  with run_files.atomic_file(path, binary=True) as f:
    fig.savefig(f, format='png', dpi=110)
  import matplotlib.pyplot as plt
  plt.close(fig)


def plot_curves(sweep: str, rows: Sequence[dict], path: str) -> None:
  """Test top-1 error against epoch, one line per configuration, mean over seeds."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  series: 'OrderedDict[tuple, dict[float, list[float]]]' = OrderedDict()
  for row in sorted(rows, key=lambda r: (r['order'], r['epoch'])):
    key = (row['config'], row['train_scale'])
    series.setdefault(key, {}).setdefault(round(row['epoch'], 6), []).append(row['top1_error'])
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for (config, train_scale), by_epoch in series.items():
    epochs = sorted(by_epoch)
    seeds = max(len(v) for v in by_epoch.values())
    ax.plot(epochs, [100 * sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], marker='.',
            label=f'{config}, S={train_scale} ({seeds} seed{"s" * (seeds > 1)})')
  ax.set_xlabel('epoch')
  ax.set_ylabel('test top-1 error (%), centre crop')
  ax.set_title(f'{sweep}: test error during training, mean over seeds')
  save_figure(fig, [ax], path)


def render(rows: Sequence[dict], out_dir: str, curves: Sequence[dict] = ()) -> str:
  """report.md and the PNGs from CSV rows; returns the report's path."""
  sweeps = aggregate(rows)
  plots, curve_plots = {}, {}
  for sweep, entries in sweeps.items():
    file = f'{sweep}.png'
    plot_sweep(sweep, entries, os.path.join(out_dir, file))
    plots[sweep] = file
    sweep_curves = [r for r in curves if r['sweep'] == sweep]
    if sweep_curves:
      curve_plots[sweep] = f'{sweep}_curves.png'
      plot_curves(sweep, sweep_curves, os.path.join(out_dir, curve_plots[sweep]))
  path = os.path.join(out_dir, REPORT_FILE)
  run_files.write_text_atomic(path, markdown(sweeps, plots, claims.decide_all(rows),
                                             curve_plots, compute_time(rows),
                                             point_times(rows)))
  return path


def make_report(directory: str, out_dir: Optional[str] = None, from_csv: bool = False) -> str:
  out_dir = out_dir or directory
  csv_path = os.path.join(out_dir, CSV_FILE)
  if not from_csv:
    if not os.path.isdir(directory):
      raise FileNotFoundError(f'{directory} does not exist')
    rows = scan(directory)
    if not rows:
      raise ValueError(f'no evaluated runs under {directory}: expected <run>/config.json and '
                       '<run>/eval/*.json (python -m experiments.sweep leaves them)')
    os.makedirs(out_dir, exist_ok=True)
    write_csv(rows, csv_path)
    write_csv(scan_curves(directory), os.path.join(out_dir, CURVES_FILE), CURVE_COLUMNS)
  # Always from the CSVs, so a regenerated report is the same report.
  curves_path = os.path.join(out_dir, CURVES_FILE)
  curves = read_csv(curves_path, CURVE_NUMERIC) if os.path.isfile(curves_path) else []
  return render(read_csv(csv_path), out_dir, curves)


def _define_flags() -> types.SimpleNamespace:
  """The command line's flags, as holders; only `python -m experiments.report`
  defines them, so importing this module defines none."""
  return types.SimpleNamespace(
      out=flags.DEFINE_string('out', None, 'Where results.csv, report.md and the plots go '
                              '(default: DIR).'),
      from_csv=flags.DEFINE_bool('from_csv', False, 'Regenerate report.md and the plots '
                                 'from DIR/results.csv without reading any run.'))


def main(argv, command: types.SimpleNamespace):
  """`argv` is [program, DIR] (`cli.flags_parser` refuses any other)."""
  try:
    path = make_report(argv[1], command.out.value, command.from_csv.value)
  except errors.USER_ERRORS as e:
    sys.exit(f'experiments.report: error: {e}')
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(functools.partial(main, command=_define_flags()),
          flags_parser=cli.flags_parser('experiments.report', usage='DIR'))
