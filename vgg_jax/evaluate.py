"""Evaluates a training run under the paper's test protocols (§3.2, §4).

    python -m vgg_jax.evaluate --workdir=DIR [--step=N] [--split=SPLIT]
        [--protocol=single|dense|multicrop|dense+multicrop]
        [--scales=auto|Q1,Q2,...] [--flip|--noflip] [--batch_size=B]

Everything about the run (model, dataset, crop size, training scales, mean
RGB) comes from DIR/config.json, which `vgg_jax.train` writes. The checkpoint
(the newest unless --step) is restored as host arrays and replicated on this
process's devices, so a run trained on 8 devices evaluates on 1 and vice
versa. The result goes to DIR/eval/<protocol>_<scales>.json, e.g.
`dense+multicrop_32-48-64.json`; the name grows a suffix for each choice that
changes the measurement from the default, so results never overwrite one
another: `_flip` / `_noflip` (flip differs from the protocol's paper default),
`_<split>` (not the run's eval_split) and `_step<N>` (not the newest
checkpoint). A one-row table in the paper's format is printed.

Scales: --scales=auto applies the paper's rule to the run's training scale:
{S_min, (S_min + S_max) / 2, S_max} for jittered S, {S - d, S, S + d} for a
fixed S, with d = round(32 * crop / 224) (the paper's 32 at its 224 crop; 5 at
this project's 32 crop). Without --scales, Q is the run's data.test_scale.

Flip: by default 'dense' (and the dense part of 'dense+multicrop') averages
each image with its mirror, as in the paper; 'single' does not; 'multicrop'
always takes 25 crops x 2 flips. --flip / --noflip override the default.

Errors (no such workdir, checkpoint or step, unknown protocol, a scale below
the crop, a damaged checkpoint, checkpoints of another model than config.json
describes) are one line on stderr with exit status 1, and nothing is written.
"""

from __future__ import annotations

if __name__ == '__main__':  # first: a restart would repeat every import below
  from vgg_jax import malloc_tunables
  malloc_tunables.restart_with_tunables()

import functools
import os
import re
import sys
import types
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from vgg_jax import checkpoints, cli, config_schema, console, errors, evaluation, parallel
from vgg_jax.data import transforms
from vgg_jax import workdir as run_files
from vgg_jax.model import VGG, num_classes_of


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run saved in its workdir."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir} does not exist: pass the --workdir of '
                            'a training run')
  path = os.path.join(workdir, run_files.CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: {workdir} is not the workdir of a '
                            'vgg_jax.train run (it writes config.json on start)')
  return ml_collections.ConfigDict(config_schema.complete(run_files.read_json(path)))


def restore(workdir: str, step: Optional[int] = None) -> tuple[dict, int, list[int]]:
  """(variables as numpy, their step, all steps) of the newest checkpoint or `step`.

  Host arrays carry no sharding, so they fit any device count; evaluation
  replicates them on its own mesh. A damaged checkpoint raises
  `errors.CheckpointError` (its checksums are verified).
  """
  steps = checkpoints.available_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'no complete checkpoint in {checkpoints.checkpoint_dir(workdir)}: '
                            'evaluate a run once it has written its first checkpoint, or '
                            'check --workdir')
  if step is not None and step not in steps:
    raise ValueError(f'no checkpoint at step {step} in {workdir}: available steps are '
                     f'{", ".join(map(str, steps))}')
  step = max(steps) if step is None else step
  return checkpoints.restore_variables(workdir, step), step, steps


def check_fits(model, variables: dict, config, workdir: str, step: int) -> None:
  """Raises errors.CheckpointError if the checkpoint's arrays are not the model's.

  config.json describes the run that wrote the checkpoints; a workdir whose
  checkpoints were copied from, or overwritten by, another run would
  otherwise fail deep inside the model with a shape error.
  """
  size = int(config.data.image_size)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, size, size, 3), jnp.float32)))
  differences = checkpoints.shape_differences(
      variables, {c: expected[c] for c in variables if c in expected})
  if differences:
    more = '; ...' if len(differences) > 3 else ''
    config_file = run_files.CONFIG_FILE
    raise errors.CheckpointError(
        f'the checkpoint at step {step} in {workdir} does not fit the model of its '
        f'{config_file} (variant {config.model.variant}: {"; ".join(differences[:3])}{more}): '
        f'{config_file} and the checkpoints come from different runs; evaluate the workdir '
        'of the run that wrote them')


def default_batch_size(config, devices: int) -> int:
  """The run's batch size, rounded up to a multiple of this machine's devices."""
  return -(-int(config.batch_size) // devices) * devices


def result_name(protocol: str, scales, *, flip: bool, split: str, eval_split: str,
                step: int, newest: int) -> str:
  """File name of a result: the protocol and scales, plus what differs from default."""
  name = f'{protocol}_{"-".join(str(q) for q in scales)}'
  if flip != evaluation.resolve_flip(protocol):
    name += '_flip' if flip else '_noflip'
  if split != eval_split:
    name += '_' + re.sub(r'[^A-Za-z0-9.-]+', '-', split).strip('-')
  if step != newest:
    name += f'_step{step}'
  return name + '.json'


def train_scale_label(train_scale) -> str:
  lo, hi = transforms.scale_bounds(train_scale)
  return str(lo) if lo == hi else f'[{lo},{hi}]'


def paper_table(report: dict) -> str:
  """A one-row table in the layout of the paper's Tables 3-5 (errors in %)."""
  return '\n'.join([
      '| config | train S | test Q | top-1 err | top-5 err |',
      '|---|---|---|---|---|',
      f'| {report["config"]} | {report["train_scale"]} | '
      f'{",".join(str(q) for q in report["scales"])} | {100 * report["top1_error"]:.1f} | '
      f'{100 * report["top5_error"]:.1f} |',
  ])


def evaluate_run(workdir: str, *, protocol: str = 'single', **kwargs) -> dict:
  """Evaluates a run's checkpoint; returns the report (written by `write_report`).

  Every argument is checked before anything is read from the dataset, and
  nothing is written here.
  """
  return evaluate_run_protocols(workdir, protocols=(protocol,), **kwargs)[0]


def evaluate_run_protocols(workdir: str, *, protocols: Sequence[str],
                           step: Optional[int] = None, split: Optional[str] = None,
                           scales=None, flip: Optional[bool] = None,
                           batch_size: Optional[int] = None) -> list[dict]:
  """`evaluate_run` for several protocols at the same scales in one pass over
  the split (`evaluation.evaluate_protocols`): one report each."""
  for protocol in protocols:  # an unknown protocol fails first
    evaluation.protocol_parts(protocol)
  config = load_run_config(workdir)
  data_cfg = config.data
  scales = evaluation.parse_scales(scales, data_cfg)
  flips = [evaluation.resolve_flip(protocol, flip) for protocol in protocols]
  devices = jax.local_device_count()
  batch_size = default_batch_size(config, devices) if batch_size is None else batch_size
  variables, step, steps = restore(workdir, step)
  try:
    num_classes = num_classes_of(variables['params'], config.model.head)
  except KeyError:  # not this head's layers: check_fits says what differs
    num_classes = 1
  model = VGG.from_config(config.model, num_classes, int(data_cfg.image_size))
  check_fits(model, variables, config, workdir, step)
  split = split or data_cfg.eval_split
  results = evaluation.evaluate_protocols(
      model, variables, data_cfg, split=split, protocols=protocols, scales=scales,
      flip=flip, batch_size=batch_size)
  return [{
      **result,
      'protocol': protocol, 'scales': list(scales), 'flip': protocol_flip, 'step': step,
      'split': split, 'batch_size': batch_size, 'devices': jax.device_count(),
      'config': config.model.variant, 'train_scale': train_scale_label(data_cfg.train_scale),
      'file': result_name(protocol, scales, flip=protocol_flip, split=split,
                          eval_split=data_cfg.eval_split, step=step, newest=max(steps)),
  } for protocol, protocol_flip, result in zip(protocols, flips, results)]


def write_report(workdir: str, report: dict) -> str:
  """Writes DIR/eval/<name>.json atomically (a reader never sees half a file)."""
  directory = os.path.join(workdir, run_files.EVAL_DIR)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, report['file'])
  run_files.write_json(path, {k: v for k, v in report.items() if k != 'file'})
  return path


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def _define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """The command line's flags, as holders; only `python -m vgg_jax.evaluate`
  defines them, so importing this module defines none."""
  return types.SimpleNamespace(
      workdir=flags.DEFINE_string('workdir', None, 'Workdir of the training run to evaluate.',
                                  flag_values=flag_values),
      step=flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: newest).',
                                flag_values=flag_values),
      split=flags.DEFINE_string('split', None, "Split to evaluate (default: the run's "
                                'data.eval_split); TFDS slices like test[:1000] work.',
                                flag_values=flag_values),
      protocol=flags.DEFINE_string('protocol', 'single',
                                   'One of ' + ', '.join(evaluation.PROTOCOLS) + '.',
                                   flag_values=flag_values),
      scales=flags.DEFINE_string('scales', None, "Test scales Q, e.g. 256,384,512, or 'auto' "
                                 "(the paper's rule); default: the run's data.test_scale.",
                                 flag_values=flag_values),
      flip=flags.DEFINE_bool('flip', None, 'Average each view with its mirror image '
                             '(default: on for dense, off for single; multicrop always).',
                             flag_values=flag_values),
      batch_size=flags.DEFINE_integer('batch_size', None, 'Views per step, a multiple of the '
                                      "local device count (default: the run's batch size).",
                                      flag_values=flag_values),
      **vars(cli.define_process_flags(flag_values)))


def main(argv, command: types.SimpleNamespace):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  console.quiet_libraries()
  cli.keep_tensorflow_off_gpus()
  workdir = command.workdir.value
  try:
    if not workdir:
      raise ValueError('--workdir is required: the directory of a training run')
    parallel.initialize_distributed(command.coordinator_address.value,
                                    command.num_processes.value, command.process_id.value)
    report = evaluate_run(workdir, step=command.step.value, split=command.split.value,
                          protocol=command.protocol.value, scales=command.scales.value,
                          flip=command.flip.value, batch_size=command.batch_size.value)
    path = write_report(workdir, report) if jax.process_index() == 0 else None
  except errors.USER_ERRORS as e:
    sys.exit(cli.error_line('vgg_jax.evaluate', e))
  if path:
    print(paper_table(report))
    print(f'{report["protocol"]}{" with flips" if report["flip"] else ""}, step '
          f'{report["step"]}, split {report["split"]}: {report["num_examples"]} images x '
          f'{report["views_per_image"]} view{"s" * (report["views_per_image"] != 1)}, NLL {report["nll"]:.4f}, '
          f'{report["images_per_sec"]:.1f} img/s on {report["devices"]} device(s) '
          f'({report["compile_seconds"]:.1f} s compiling excluded) -> {path}')


if __name__ == '__main__':
  _COMMAND = _define_flags()
  jax.config.config_with_absl()
  app.run(functools.partial(main, command=_COMMAND),
          flags_parser=cli.flags_parser('vgg_jax.evaluate'))
