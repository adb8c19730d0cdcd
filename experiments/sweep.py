"""Runs a sweep: every point trained, then evaluated, each in its own workdir.

    python -m experiments.sweep --sweep=configs/sweeps/depth.py[:ARG] --workdir=DIR
        [--sweep.FIELD=VALUE ...] [--only=REGEX] [--dry_run]
        [--launcher=local [--parallel=N] [--gpus_per_point=G]]
        [--launcher=slurm --slurm_gpus_per_node=8 --slurm_nodes=1 --slurm_partition=P ...]

A sweep file is a config file with one more function (sweeps as data):

    def get_config(arg=None):  # the base config, as for vgg_jax.train
    def get_sweep(arg=None):   # [{'model.variant': 'B', 'seed': 0}, ...]

Each point is the base config with its overrides. It lives in DIR/<name>/,
the name made of its overrides (`variant=B,seed=0`: the field's last
component, the value), and runs (`experiments.point`)
`vgg_jax.train.train_and_evaluate`, then `vgg_jax.evaluate.evaluate_run` for
each entry of the config's `evals` ('protocol[:scales]', e.g. 'single',
'dense:auto'; `vgg_jax.train` ignores the field), writing
DIR/<name>/eval/<protocol>_<scales>.json for `experiments.report`.

What is already done is never done again. DIR/<name>/train_result.json marks
a finished training, DIR/<name>/evals.json the finished evaluations; a point
with both is skipped without starting anything, a point stopped half way
resumes from its newest checkpoint, a trained point only runs its missing
evaluations. DIR/<name>/point.json freezes the point's config when it is first
launched: launching it again with another config (an edited sweep file, other
--sweep.* flags) is an error rather than a silent mix. Sweeps may share a DIR:
a point with the same name and config (D at seed 0 in the depth, 1x1 and
scale sweeps) is trained once and evaluated with every sweep's evals.

Warm starts inside a sweep: `'init_from': '@variant=A,seed=0'` names another
point of the sweep; it becomes that point's workdir, and the point waits for
it (locally: starts after it; on SLURM: `--dependency=afterok`).

Launchers:
  local  each point in its own process (`python -m experiments.point
         DIR/<name>`, output in DIR/<name>/log.txt), --parallel at a time;
         --gpus_per_point=G gives each a slot of G GPUs through
         CUDA_VISIBLE_DEVICES.
  slurm  one submitit job per point (`experiments.point.PointJob`, run from
         the directory the sweep was launched in): --slurm_nodes nodes with
         --slurm_gpus_per_node GPUs and one task per GPU. Each task is one JAX
         process that `jax.distributed.initialize()` configures from SLURM's
         variables (`vgg_jax.parallel.initialize_distributed`), which give
         process i the GPU of its SLURM_LOCALID. A job that hits its time limit
         is requeued and resumes from its checkpoint. Submission logs and
         pickles are in DIR/<name>/slurm/.
--dry_run prints what would run (commands, or each job's sbatch script as
submitit would write it) and writes nothing; no SLURM is needed for it.

Every point's config is checked (`vgg_jax.train.validate`), and locally each
dataset opened once (`open_datasets`), before anything runs or is written.
SIGTERM or Ctrl-C to the local launcher stops its running points (each
checkpoints the step it reached), starts no more and exits with status 143;
the same command continues. A point never outlives its launcher.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from vgg_jax import cli, config_schema, console, data, errors, evaluation, faults, train
from vgg_jax import workdir as run_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_JOB_FILE = 'slurm_job.json'
SWEEPS_DIR = 'sweeps'
DEFAULT_EVALS = (evaluation.TRAINING_PROTOCOL,)
# Name order: the variant first, the seed last, other fields sorted between.
_FIRST, _LAST = ('model.variant',), ('seed',)
# SLURM states of a job that still runs or will: do not submit the point again.
_ACTIVE_SLURM_STATES = ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING',
                        'RESIZING', 'SUSPENDED', 'REQUEUE_HOLD', 'REQUEUE_FED')


# --------------------------------------------------------------------------
# Sweep files: points, names and configs.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
  name: str
  overrides: dict
  config: dict                 # the training config as JSON data, init_from resolved
  evals: tuple[str, ...]       # 'protocol[:scales]'
  depends_on: tuple[str, ...]  # points of the sweep this one starts from


def load_sweep_module(path_and_arg: str):
  """(module, arg) of `--sweep=FILE[:ARG]`, split as config_flags splits it."""
  path, _, arg = path_and_arg.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'sweep file {path} not found')
  module = config_schema.load_config_module(path)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} has no get_sweep(): a sweep file returns its points from '
                     "get_sweep(arg), e.g. [{'model.variant': 'B', 'seed': 0}, ...]")
  return module, arg or None


def _render(value) -> str:
  if isinstance(value, (tuple, list)):
    return '-'.join(_render(v) for v in value)
  return re.sub(r'[^A-Za-z0-9.+-]', '_', str(value))


def point_name(overrides: dict) -> str:
  """`variant=B,depths=1-1-1-1-1,kernel_size=5,seed=0`: a point's overrides.

  Keys are shortened to their last component (unless two would collide);
  `evals` does not name a point (it says what to measure, not what to train),
  and a warm start from point X shows as `from=X` with X's commas as '+'.
  """
  keys = [k for k in overrides if k != 'evals']
  order = sorted(keys, key=lambda k: (k not in _FIRST, k in _LAST, k))
  leaves = [k.rsplit('.', 1)[-1] for k in order]
  parts = []
  for key in order:
    value = overrides[key]
    if key == 'init_from' and isinstance(value, str) and value.startswith('@'):
      parts.append('from=' + value[1:].replace(',', '+'))
      continue
    short = key.rsplit('.', 1)[-1]
    label = short if leaves.count(short) == 1 else key
    parts.append(f'{label}={_render(value)}')
  return ','.join(parts) or 'base'


def set_field(config, key: str, value) -> None:
  """config[a][b][c] = value for key 'a.b.c'; unknown fields are an error.

  Walked here rather than with ml_collections' `update_from_flattened_dict`,
  which adds a misspelt field to an unlocked config instead of refusing it.
  """
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    if part not in node:
      raise ValueError(f'sweep override {key!r}: the config has no field {part!r}')
    node = node[part]
  if leaf not in node:
    raise ValueError(f'sweep override {key!r}: the config has no field {leaf!r} (fields '
                     f'there: {", ".join(sorted(node.keys()))})')
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(f'sweep override {key}={value!r}: {e}') from None


def make_points(base, overrides_list: Sequence[dict], workdir: str) -> list[Point]:
  """The sweep's points: base config + overrides, names checked unique and
  warm-start references resolved to workdirs."""
  points, names = [], {}
  for overrides in overrides_list:
    overrides = dict(overrides)
    name = point_name(overrides)
    if name in names:
      raise ValueError(f'two points of the sweep are both named {name!r}: {names[name]} '
                       f'and {overrides}')
    names[name] = overrides
    config = copy.deepcopy(base)
    depends_on = ()
    for key, value in overrides.items():
      if key == 'init_from' and isinstance(value, str) and value.startswith('@'):
        depends_on = (value[1:],)
        value = os.path.join(workdir, value[1:])
      set_field(config, key, value)
    try:  # a bad value fails at launch, not when its point's turn comes
      train.validate(config)
    except ValueError as e:
      raise ValueError(f'point {name}: {e}') from e
    data = config_schema.to_json(config)
    evals = tuple(data.pop('evals', None) or DEFAULT_EVALS)
    for spec in evals:  # a typo fails at launch, not after training
      evaluation.parse_eval_spec(spec)
    points.append(Point(name, overrides, data, evals, depends_on))
  for point in points:
    for dep in point.depends_on:
      if dep not in names and not is_finished(os.path.join(workdir, dep), ()):
        raise ValueError(f'point {point.name} starts from @{dep}, which is neither a point '
                         f'of this sweep ({", ".join(names)}) nor a trained run in {workdir}')
  return points


# --------------------------------------------------------------------------
# What a point has done: the files its worker leaves.
# --------------------------------------------------------------------------


def missing_evals(point_dir: str, evals: Sequence[str]) -> list[str]:
  done = run_files.read_json(os.path.join(point_dir, run_files.EVALS_FILE), {})
  return [spec for spec in evals if spec not in done or not os.path.isfile(
      os.path.join(point_dir, run_files.EVAL_DIR, done[spec]))]


def is_finished(point_dir: str, evals: Sequence[str]) -> bool:
  return run_files.is_trained(point_dir) and not missing_evals(point_dir, evals)


def status(point_dir: str, evals: Sequence[str]) -> str:
  """'done', 'evaluate' (trained, evaluations missing), 'resume' or 'new'."""
  if run_files.is_trained(point_dir):
    return 'evaluate' if missing_evals(point_dir, evals) else 'done'
  return 'resume' if run_files.has_checkpoints(point_dir) else 'new'


def _config_diff(old: dict, new: dict) -> list[str]:
  """'field: old -> new' lines, a field one side lacks shown as None."""
  return [f'{key}: {_shown(a)} -> {_shown(b)}'
          for key, a, b in run_files.config_changes(old, new)]


def _shown(value) -> str:
  return repr(None if value is run_files.UNSET else value)


def check_unchanged(point: Point, workdir: str) -> Optional[dict]:
  """The point's point.json, if any; an error if it holds another config."""
  point_dir = os.path.join(workdir, point.name)
  existing = run_files.read_point(point_dir)
  if existing is not None and existing['config'] != point.config:
    diff = '; '.join(_config_diff(existing['config'], point.config)[:5])
    raise ValueError(f'point {point.name} in {workdir} was launched with another config '
                     f'({diff}): use another --workdir, or delete {point_dir} to retrain it')
  return existing


def prepare(point: Point, workdir: str, sweep_name: str) -> None:
  """Writes (or extends) DIR/<name>/point.json; a changed config is an error."""
  point_dir = os.path.join(workdir, point.name)
  path = os.path.join(point_dir, run_files.POINT_FILE)
  old = check_unchanged(point, workdir) or {}
  os.makedirs(point_dir, exist_ok=True)
  run_files.write_json(path, {
      'name': point.name,
      'overrides': point.overrides,
      'config': point.config,
      # Sweeps sharing the point each add their evaluations.
      'evals': list(dict.fromkeys([*old.get('evals', []), *point.evals])),
      'sweeps': list(dict.fromkeys([*old.get('sweeps', []), sweep_name])),
  })


def name_pattern(only: str) -> re.Pattern:
  """The regex of an `--only` flag, which selects points by name."""
  try:
    return re.compile(only)
  except re.error as e:
    raise ValueError(f'--only={only!r} is not a regular expression ({e})') from None


def open_datasets(points: Sequence[Point]) -> None:
  """Opens each distinct dataset of `points` once, in the launcher: a TFDS dataset
  is downloaded and prepared before any point starts, not by every point (or by
  several at once), and one that cannot be read fails the sweep at once instead
  of every point in turn (offline, each after minutes of TFDS's retries)."""
  opened = set()
  for point in points:
    cfg = ml_collections.ConfigDict(point.config['data'])
    where = (cfg.name, cfg.builder_config, cfg.data_dir, cfg.folder)
    if where not in opened:
      data.dataset_info(cfg)
      opened.add(where)


def write_manifest(workdir: str, sweep_name: str, sweep_arg: str, points: Sequence[Point]):
  """DIR/sweeps/<sweep>.json: the sweep's points in order, for the report."""
  os.makedirs(os.path.join(workdir, SWEEPS_DIR), exist_ok=True)
  run_files.write_json(os.path.join(workdir, SWEEPS_DIR, f'{sweep_name}.json'), {
      'sweep': sweep_name, 'arg': sweep_arg,
      'points': [{'name': p.name, 'overrides': p.overrides, 'evals': list(p.evals)}
                 for p in points]})


# --------------------------------------------------------------------------
# Launchers.
# --------------------------------------------------------------------------


def worker_command(point_dir: str) -> list[str]:
  return [sys.executable, '-m', 'experiments.point', point_dir]


def _summary(point_dir: str) -> str:
  done = run_files.read_json(os.path.join(point_dir, run_files.EVALS_FILE), {})
  parts = []
  for spec, file in done.items():
    report = run_files.read_json(os.path.join(point_dir, run_files.EVAL_DIR, file), {})
    if 'top1_error' in report:
      parts.append(f'{spec} {100 * report["top1_error"]:.1f}/{100 * report["top5_error"]:.1f}')
  return 'top-1/top-5 error %: ' + ', '.join(parts) if parts else 'no evaluations'


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f'{minutes}m{seconds:02d}s'


class StopRequest(faults.SignalNote):
  """SIGTERM or SIGINT (Ctrl-C) to the local launcher, noted in `received`: the
  launcher then passes SIGTERM on to its running points, which checkpoint the
  step they reached and exit, and waits for them (`launch_local`)."""

  def __init__(self):
    super().__init__((signal.SIGTERM, signal.SIGINT))


def end_with_parent() -> Optional[Callable[[], int]]:
  """A `preexec_fn` for a child process (a point, or a launcher): SIGTERM to it
  when its parent dies, however it dies (Linux's PR_SET_PDEATHSIG, kept across
  exec), so that no point trains on unwatched beside a rerun of the sweep.
  Resolved here, in the parent: the forked child only calls it."""
  if not sys.platform.startswith('linux'):
    return None
  prctl = ctypes.CDLL(None, use_errno=True).prctl
  return functools.partial(prctl, 1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def launch_local(points: Sequence[Point], workdir: str, *, parallel: int,
                 gpus_per_point: int, finished: set[str],
                 stop: Optional[StopRequest] = None) -> list[str]:
  """Runs `points` in child processes, `parallel` at a time, each after the
  points it starts from. Returns the names of the points that failed. Once
  `stop.received`, starts nothing more and stops the running points (each
  checkpoints; not a failure). Each point runs in a session of its own, so a
  Ctrl-C in the terminal reaches the launcher only, which stops them in order."""
  stop = stop or StopRequest()
  end_with_the_launcher = end_with_parent()
  pending, running, failed = list(points), {}, []
  free_slots = list(range(max(1, parallel)))
  stopping = False
  while pending or running:
    if stop.received and not stopping:
      stopping = True
      pending.clear()
      print(f'{stop.received}: stopping {len(running)} running point(s); each checkpoints '
            'the step it reached', flush=True)
      for proc, *_ in running.values():
        proc.send_signal(signal.SIGTERM)
    for point in list(pending):
      if len(running) >= max(1, parallel):
        break
      if any(dep in failed for dep in point.depends_on):
        print(f'skipped {point.name}: it starts from a point that failed', flush=True)
        failed.append(point.name)
        pending.remove(point)
        continue
      if not all(dep in finished for dep in point.depends_on):
        continue
      pending.remove(point)
      slot = free_slots.pop(0)
      point_dir = os.path.join(workdir, point.name)
      env = dict(os.environ)
      if gpus_per_point > 0:
        env['CUDA_VISIBLE_DEVICES'] = ','.join(
            str(slot * gpus_per_point + i) for i in range(gpus_per_point))
      log = open(os.path.join(point_dir, run_files.LOG_FILE), 'ab')
      proc = subprocess.Popen(worker_command(point_dir), cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              preexec_fn=end_with_the_launcher)
      running[point.name] = (proc, log, slot, time.time(), point_dir)
      print(f'started {point.name} ({status(point_dir, point.evals)}), log: '
            f'{os.path.join(point_dir, run_files.LOG_FILE)}', flush=True)
    if pending and not running:
      # Nothing runs and nothing can start: a dependency is missing.
      for point in pending:
        print(f'skipped {point.name}: waits for {", ".join(point.depends_on)}', flush=True)
        failed.append(point.name)
      break
    time.sleep(0.5)
    for name, (proc, log, slot, start, point_dir) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[name]
      free_slots.append(slot)
      if proc.returncode == 0:
        finished.add(name)
        print(f'finished {name} in {_duration(time.time() - start)}: {_summary(point_dir)}',
              flush=True)
      elif stopping:  # checkpointed in training; an evaluation restarts (its files are atomic)
        print(f'stopped {name} (exit status {proc.returncode}): a rerun continues it',
              flush=True)
      else:
        failed.append(name)
        with open(os.path.join(point_dir, run_files.LOG_FILE), errors='replace') as f:
          tail = ''.join(f.readlines()[-5:])
        print(f'FAILED {name} (exit status {proc.returncode}); last lines of '
              f'{os.path.join(point_dir, run_files.LOG_FILE)}:\n{tail}', flush=True)
  return failed


def _sbatch_memory(gigabytes: Optional[float]) -> Optional[str]:
  if gigabytes is None:
    return None
  return f'{int(gigabytes)}GB' if gigabytes == int(gigabytes) else f'{int(gigabytes * 1024)}MB'


def slurm_parameters(job_name: str, options) -> dict:
  """sbatch parameters of one point's job, in submitit's SlurmExecutor names."""
  gpus = options.slurm_gpus_per_node
  params = dict(job_name=job_name, nodes=options.slurm_nodes, time=options.slurm_time_min,
                # One task (= one JAX process) per GPU: jax.distributed's SLURM
                # detection gives each process the GPU of its SLURM_LOCALID.
                ntasks_per_node=max(1, gpus))
  if gpus:
    params['gpus_per_node'] = gpus
  optional = dict(partition=options.slurm_partition, account=options.slurm_account,
                  qos=options.slurm_qos, constraint=options.slurm_constraint,
                  cpus_per_task=options.slurm_cpus_per_task,
                  mem=_sbatch_memory(options.slurm_mem_gb),
                  setup=list(options.slurm_setup or []) or None)
  params.update({k: v for k, v in optional.items() if v is not None})
  return params


def _slurm_executor(folder: str, max_requeues: int, dry_run: bool):
  import submitit
  if not dry_run:
    return submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)

  class DryRunExecutor(submitit.SlurmExecutor):
    """Renders the sbatch script without a cluster (no `srun` check)."""

    @classmethod
    def affinity(cls) -> int:
      return 1

  return DryRunExecutor(folder=folder, max_num_timeout=max_requeues)


def _active_slurm_job(point_dir: str) -> Optional[str]:
  """The job id recorded for the point if SLURM still runs (or will run) it."""
  import submitit
  record = run_files.read_json(os.path.join(point_dir, SLURM_JOB_FILE))
  if not record:
    return None
  try:
    state = submitit.SlurmJob(folder=record['folder'], job_id=record['job_id']).state.upper()
  except Exception as e:  # pylint: disable=broad-except
    state, error = 'UNKNOWN', e
  else:
    error = 'sacct does not know it'
  if state == 'UNKNOWN':
    # Submitting again could put two trainers in one workdir: ask instead.
    raise ValueError(f'{point_dir} records SLURM job {record["job_id"]}, whose state cannot '
                     f'be read ({error}); delete {SLURM_JOB_FILE} there to submit it again')
  return record['job_id'] if state in _ACTIVE_SLURM_STATES else None


def launch_slurm(points: Sequence[Point], workdir: str, sweep_name: str, options, *,
                 dry_run: bool, finished: set[str]) -> list[str]:
  """Submits one job per point (dependent points after their sources).
  Returns the submitted job ids; with `dry_run` prints the sbatch scripts."""
  job_ids, submitted = {}, []
  for point in points:
    point_dir = os.path.join(workdir, point.name)
    active = None if dry_run else _active_slurm_job(point_dir)
    if active:
      print(f'queued already: {point.name} is SLURM job {active}', flush=True)
      job_ids[point.name] = active
      continue
    folder = os.path.join(point_dir, run_files.SLURM_DIR)
    executor = _slurm_executor(folder, options.slurm_max_requeues, dry_run)
    params = slurm_parameters(f'{sweep_name}.{point.name}', options)
    waits = [d for d in point.depends_on if d not in finished]
    if waits:
      if dry_run:
        params['dependency'] = 'afterok:' + ':'.join(f'<job of {d}>' for d in waits)
      else:
        missing = [d for d in waits if d not in job_ids]
        if missing:
          raise ValueError(f'point {point.name} starts from {", ".join(missing)}, which is '
                           'neither finished nor submitted: select it too (--only)')
        params['dependency'] = 'afterok:' + ':'.join(job_ids[d] for d in waits)
    executor.update_parameters(**params)
    if dry_run:
      print(f'### sbatch script of point {point.name} '
            f'({status(point_dir, point.evals)}): runs '
            f'experiments.point.PointJob()({point_dir!r})')
      # What SlurmExecutor.submit would write to its submission file (submitit
      # is pinned; the two private names are its own way of making it).
      # pylint: disable=protected-access
      print(executor._make_submission_file_text(executor._submitit_command_str,
                                                uid='dry-run'), flush=True)
      # pylint: enable=protected-access
      continue
    from experiments import point as point_worker  # the job's code, imported on the nodes
    job = executor.submit(point_worker.PointJob(), point_dir)
    job_ids[point.name] = job.job_id
    submitted.append(job.job_id)
    run_files.write_json(os.path.join(point_dir, SLURM_JOB_FILE),
                         {'job_id': job.job_id, 'folder': folder})
    print(f'submitted {point.name} as SLURM job {job.job_id}'
          + (f' (after {params["dependency"]})' if 'dependency' in params else ''), flush=True)
  return submitted


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------

def _define_flags() -> None:
  """The command line's flags, read through `flags.FLAGS` by `run_sweep`; only
  `python -m experiments.sweep` defines them, so importing this module defines none."""
  config_flags.DEFINE_config_file(
      'sweep', None, 'Sweep file: a config file with get_config(arg) and get_sweep(arg).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory of the sweep: one subdirectory per point.')
  flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'Where points run.')
  flags.DEFINE_integer('parallel', 1, 'local: points running at a time.', lower_bound=1)
  flags.DEFINE_integer('gpus_per_point', 0, 'local: GPUs per running point, as '
                       'CUDA_VISIBLE_DEVICES slots (0: every point sees every device).',
                       lower_bound=0)
  flags.DEFINE_bool('dry_run', False, 'Print what would run; write nothing.')
  flags.DEFINE_string('only', None, 'Only the points whose name matches this regex.')
  flags.DEFINE_string('slurm_partition', None, 'slurm: partition.')
  flags.DEFINE_string('slurm_account', None, 'slurm: account.')
  flags.DEFINE_string('slurm_qos', None, 'slurm: quality of service.')
  flags.DEFINE_string('slurm_constraint', None, 'slurm: node constraint.')
  flags.DEFINE_integer('slurm_nodes', 1, 'slurm: nodes per point.', lower_bound=1)
  flags.DEFINE_integer('slurm_gpus_per_node', 1, 'slurm: GPUs per node (one task each).',
                       lower_bound=0)
  flags.DEFINE_integer('slurm_cpus_per_task', None, 'slurm: CPUs per task.', lower_bound=1)
  flags.DEFINE_float('slurm_mem_gb', None, 'slurm: memory per node in GB.', lower_bound=0)
  flags.DEFINE_integer('slurm_time_min', 24 * 60, 'slurm: time limit per job in minutes '
                       '(0: none, as SLURM reads it).', lower_bound=0)
  flags.DEFINE_integer('slurm_max_requeues', 3, 'slurm: requeues after a time-out.',
                       lower_bound=0)
  flags.DEFINE_multi_string('slurm_setup', None, 'slurm: shell lines run before the job '
                            '(e.g. module load cuda).')


def run_sweep(options) -> int:
  sweep_flag = options['sweep']
  path_and_arg = config_flags.get_config_filename(sweep_flag)
  module, arg = load_sweep_module(path_and_arg)
  sweep_name = os.path.splitext(os.path.basename(path_and_arg.partition(':')[0]))[0]
  workdir = os.path.abspath(options.workdir)
  points = make_points(sweep_flag.value, module.get_sweep(arg), workdir)
  if options.only:
    pattern = name_pattern(options.only)
    selected = [p for p in points if pattern.search(p.name)]
    if not selected:
      raise ValueError(f'--only={options.only!r} matches none of '
                       f'{", ".join(p.name for p in points)}')
  else:
    selected = points
  for point in points:  # before anything runs or is written
    check_unchanged(point, workdir)
  states = {p.name: status(os.path.join(workdir, p.name), p.evals) for p in selected}
  finished = {p.name for p in points if is_finished(os.path.join(workdir, p.name), ())}
  todo = [p for p in selected if states[p.name] != 'done']
  print(f'sweep {sweep_name}: {len(selected)} points in {workdir}, '
        f'{len(selected) - len(todo)} done, {len(todo)} to run', flush=True)
  if options.dry_run:
    for point in selected:
      if states[point.name] == 'done':
        print(f'[done] {point.name}')
    if options.launcher == 'local':
      for point in todo:
        print(f'[{states[point.name]}] {point.name}: '
              f'{shlex.join(worker_command(os.path.join(workdir, point.name)))}')
    else:
      launch_slurm(todo, workdir, sweep_name, options, dry_run=True, finished=finished)
    return 0
  if options.launcher == 'local':  # a SLURM job's nodes may see other paths than this one
    open_datasets(todo)
  for point in points:  # every point, so the manifest's points all have point.json
    prepare(point, workdir, sweep_name)
  write_manifest(workdir, sweep_name, arg, points)
  for point in selected:
    if states[point.name] == 'done':
      print(f'done already: {point.name}', flush=True)
  if options.launcher == 'slurm':
    launch_slurm(todo, workdir, sweep_name, options, dry_run=False, finished=finished)
    return 0
  with StopRequest() as stop:
    failed = launch_local(todo, workdir, parallel=options.parallel,
                          gpus_per_point=options.gpus_per_point, finished=finished, stop=stop)
  if stop.received:
    print(f'sweep {sweep_name}: stopped by {stop.received}; rerun the same command to '
          'continue', flush=True)
    return faults.PREEMPTED_EXIT_CODE
  print(f'sweep {sweep_name}: {len(todo) - len(failed)} run, {len(failed)} failed'
        + (f' ({", ".join(failed)})' if failed else ''), flush=True)
  return 1 if failed else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  console.quiet_libraries()
  options = flags.FLAGS
  try:
    if not options['sweep'].present or not options.workdir:
      raise ValueError('--sweep=FILE and --workdir=DIR are required')
    sys.exit(run_sweep(options))
  except errors.USER_ERRORS as e:
    sys.exit(f'experiments.sweep: error: {e}')


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.flags_parser('experiments.sweep'))
