"""One point of a sweep, run in this process: what experiments.sweep launches.

    python -m experiments.point DIR/<point>

The point's directory holds point.json (its config and evaluations, written
by experiments.sweep). The point trains with `vgg_jax.train.train_and_evaluate`
(resuming from its newest checkpoint), records the training loop's final
evaluation as the 'single' protocol, then runs each evaluation of point.json
it has not made yet with `vgg_jax.evaluate.evaluate_run`. train_result.json
marks the training done, evals.json the evaluations. A point stopped and
resumed trains in segments, one per process, each with its steps, wall time and
machine (`vgg_jax.machine`: a 2-core CPU with AVX-512 BF16 trains the bfloat16
sizes nearly three times as fast as one with AVX2 only): train_segments.json holds
the stopped ones', train_result.json all of them and their sum, `wall_seconds`.
The local launcher runs this command, one process per point; the SLURM
launcher pickles `PointJob`, which does the same in every task of the job.
"""

from __future__ import annotations

if __name__ == '__main__':  # first: a restart would repeat every import below
  from vgg_jax import malloc_tunables
  malloc_tunables.restart_with_tunables()

import os
import signal
import sys
import time
from typing import Optional

import jax
import ml_collections
import submitit
from absl import app, logging
from jax.experimental import multihost_utils

from vgg_jax import (checkpoints, cli, console, errors, evaluate, evaluation, faults,
                     machine, parallel, train)
from vgg_jax import workdir as run_files


def run_point(point_dir: str, signals=(signal.SIGTERM,)) -> dict:
  """Trains the point in `point_dir` (resuming), then runs its missing evaluations.

  Every process of a multi-process job calls this; only process 0 writes.
  Any of `signals` makes training checkpoint the step it reached and raise
  `errors.Preempted`.
  """
  spec = run_files.read_point(point_dir)
  if spec is None:
    raise FileNotFoundError(f'{point_dir} has no {run_files.POINT_FILE}: launch points '
                            'through `python -m experiments.sweep --sweep=...`')
  primary = jax.process_index() == 0
  trained = run_files.is_trained(point_dir)
  # What is done is read once, before anything is written: every process of
  # a multi-process job must take the same branches (collectives inside).
  recorded = run_files.read_json(os.path.join(point_dir, run_files.EVALS_FILE), {})
  done = {key: file for key, file in recorded.items()
          if os.path.isfile(os.path.join(point_dir, run_files.EVAL_DIR, file))}
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'sweep point {spec["name"]} status read')

  def record(eval_spec: str, report: Optional[dict] = None, file: Optional[str] = None):
    if primary and report is not None:
      file = os.path.basename(evaluate.write_report(point_dir, report))
    done[eval_spec] = file or report['file']
    if primary:
      run_files.write_json(os.path.join(point_dir, run_files.EVALS_FILE), done)

  config = ml_collections.ConfigDict(spec['config'])
  if not trained:
    start, start_step = time.time(), newest_step(point_dir)
    segments = earlier_segments(point_dir, start_step)
    # SIGTERM (a stopped sweep, a preempted job), or submitit's time-out
    # notice: checkpoint at the step reached and raise errors.Preempted; the
    # point resumes from there.
    try:
      with faults.PreemptionWatch(signals) as preemption:
        result = train.train_and_evaluate(config, point_dir, preemption=preemption)
    except errors.Preempted as stopped:
      if primary:
        run_files.write_json(os.path.join(point_dir, run_files.TRAIN_SEGMENTS_FILE),
                             [*segments, segment(start_step, stopped.step, start)])
      raise
    end_step = newest_step(point_dir)
    segments.append(segment(start_step, end_step, start))
    record(evaluation.TRAINING_PROTOCOL,
           training_eval_report(result, config, end_step))
    if primary:
      run_files.write_json(os.path.join(point_dir, run_files.TRAIN_RESULT_FILE),
                           {**result, 'wall_seconds': sum(s['seconds'] for s in segments),
                            'segments': segments})
  # What is still to measure, by result file ('single' at Q = 37 and
  # 'single:37' are one measurement), then grouped so that protocols at the
  # same scales and flip share one pass over the split (Table 5's three).
  passes: dict[tuple, dict[str, list]] = {}
  for eval_spec in spec['evals']:
    if eval_spec in done:
      continue
    protocol, scales = evaluation.parse_eval_spec(eval_spec)
    scales = evaluation.parse_scales(scales, config.data)
    flip = evaluation.resolve_flip(protocol)
    file = evaluate.result_name(protocol, scales, flip=flip, split=config.data.eval_split,
                                eval_split=config.data.eval_split, step=0, newest=0)
    if file in done.values():
      record(eval_spec, file=file)
      continue
    passes.setdefault((scales, flip), {}).setdefault(protocol, []).append(eval_spec)
  for (scales, _), by_protocol in passes.items():
    reports = evaluate.evaluate_run_protocols(point_dir, protocols=tuple(by_protocol),
                                              scales=scales)
    for report, eval_specs in zip(reports, by_protocol.values()):
      for i, eval_spec in enumerate(eval_specs):
        record(eval_spec, report if i == 0 else None, file=None if i == 0 else report['file'])
      logging.info('%s %s: top-1 error %.4f, top-5 error %.4f (%.0f s)', spec['name'],
                   ', '.join(eval_specs), report['top1_error'], report['top5_error'],
                   report['seconds'])
  return done


def newest_step(point_dir: str) -> int:
  """The step training starts from, or stopped at: its newest checkpoint's (0: none)."""
  if not run_files.has_checkpoints(point_dir):
    return 0
  return max(checkpoints.available_steps(point_dir), default=0)


def segment(first_step: int, last_step: int, start: float) -> dict:
  """One process's share of a point's training: its steps, wall time (compilation
  and the evaluations after each epoch included) and machine."""
  return {'steps': [first_step, last_step], 'seconds': time.time() - start,
          'machine': machine.describe()}


def earlier_segments(point_dir: str, start_step: int) -> list[dict]:
  """The stopped processes' segments that led to `start_step`, for the point's
  whole training time; none where training starts afresh (the checkpoints they
  ended at stayed on another machine, or were never written)."""
  recorded = run_files.read_json(os.path.join(point_dir, run_files.TRAIN_SEGMENTS_FILE), [])
  if start_step == 0 or not recorded or recorded[-1]['steps'][1] != start_step:
    return []
  return recorded


def training_eval_report(result: dict, config, step: int) -> dict:
  """The training loop's last evaluation as `vgg_jax.evaluate.evaluate_run`'s report.

  The loop ends with its protocol ('single') at Q = data.test_scale on the
  eval split, every example once: the measurement 'single' asks for, on the
  same weights, so the worker records it instead of making it again.
  """
  data_cfg = config.data
  protocol, scales = evaluation.TRAINING_PROTOCOL, [int(data_cfg.test_scale)]
  return {
      **result, 'protocol': protocol, 'scales': scales, 'flip': False, 'step': step,
      'split': data_cfg.eval_split, 'batch_size': config.batch_size // jax.process_count(),
      'devices': jax.device_count(), 'config': config.model.variant,
      'train_scale': evaluate.train_scale_label(data_cfg.train_scale),
      'file': evaluate.result_name(protocol, scales, flip=False, split=data_cfg.eval_split,
                                   eval_split=data_cfg.eval_split, step=step, newest=step),
  }


def start_worker() -> None:
  """What `vgg_jax.train.main` does before training, for a point's process."""
  console.quiet_libraries()
  cli.keep_tensorflow_off_gpus()
  # Points of a sweep share their train and evaluation steps' shapes: the
  # second one on a machine skips their compilation. JAX_COMPILATION_CACHE_DIR,
  # when set, is JAX's own choice and stays (programs go to a subdirectory of it
  # per version of vgg_jax, `parallel.key_cache_by_source`).
  parallel.enable_compilation_cache(parallel.compilation_cache_dir())
  # Under SLURM with several tasks, jax.distributed reads the job from the
  # environment; a single process does nothing.
  parallel.initialize_distributed()


def submitit_signal() -> signal.Signals:
  """The signal submitit sends ahead of a time limit or preemption (USR2 unless
  SUBMITIT_PREEMPT_SIGNAL names another)."""
  return getattr(signal, 'SIG' + os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2'))


class PointJob(submitit.helpers.Checkpointable):
  """A SLURM job running one point, requeued by submitit on a time-out.

  submitit's own handler of its notice (USR2) requeues the job and exits at
  once, wherever training is, losing the steps since the last checkpoint.
  The job takes the notice itself instead: training checkpoints the step it
  reached, then submitit's handler runs (it calls `checkpoint`, whose
  default resubmits the same call, and requeues). The rerun resumes from
  that step and skips finished evaluations.
  """

  def __call__(self, point_dir: str) -> dict:
    start_worker()
    notice = submitit_signal()
    requeue = signal.getsignal(notice)  # submitit's, installed before the job started
    try:
      return run_point(point_dir, signals=(signal.SIGTERM, notice))
    except errors.Preempted as e:
      logging.warning('%s', e)
      if callable(requeue):
        requeue(notice, None)
      raise


def main(argv):
  """`argv` is [program, DIR/<point>] (`cli.flags_parser` refuses any other)."""
  try:
    start_worker()
    run_point(argv[1])
  except errors.Preempted as e:
    print(f'experiments.point: {e}', file=sys.stderr)
    sys.exit(faults.PREEMPTED_EXIT_CODE)
  except errors.USER_ERRORS as e:
    sys.exit(cli.error_line('experiments.point', e))


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.flags_parser('experiments.point', usage='DIR/<point>'))
