"""Checks before a run starts or resumes in a workdir, made before it writes anything.

`check_writable`: the workdir (or the directory it would be created in) must
be writable, so that a week-long job does not fail at its first checkpoint.

`check_own`: a workdir without a run of its own must hold nothing else (a
sweep point's files aside), so that a run started in a sweep's directory, a
dataset or a home directory does not mix its files into theirs.

`check_config`: a workdir with checkpoints belongs to the config in its
config.json. Resuming with different values of fields that define the
experiment (the model, the data and its order, the optimizer) would mix two
experiments in one run, so it is refused with the list of differences unless
`--allow_config_change` says it is meant, e.g. a lower learning rate after a
divergence. Fields that only say how long to train or how often to log,
evaluate and checkpoint, and where the data lives, may change freely: a
longer schedule is an ordinary continuation.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from vgg_jax import config_schema
from vgg_jax import workdir as run_files

# Fields whose change makes a different experiment: everything under these
# groups, and these top-level fields (the batches of step t depend on the first two,
# the loss on the third).
EXPERIMENT_GROUPS = ('model.', 'data.', 'optimizer.')
EXPERIMENT_FIELDS = ('batch_size', 'seed', 'label_smoothing')
# ... except where the data lives and how fast it is read.
FREE_DATA_FIELDS = ('data.data_dir', 'data.num_threads', 'data.num_workers',
                    'data.prefetch_batches', 'data.niceness')


def check_writable(workdir: str) -> None:
  """Raises (one line, with the fix) if the run could not write to `workdir`.

  Leaves nothing behind: it creates and removes a test directory, and does not
  create the workdir, so a run that fails later leaves no empty one.
  """
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise NotADirectoryError(
        f'--workdir={workdir} cannot be a directory: {existing} is a file; choose '
        'another --workdir')
  targets = [existing]
  if existing == path and os.path.isdir(os.path.join(path, run_files.CHECKPOINT_DIR)):
    targets.append(os.path.join(path, run_files.CHECKPOINT_DIR))
  for target in targets:
    # Try, rather than trust permission bits: root ignores them, read-only
    # and network file systems do not show in them.
    try:
      os.rmdir(tempfile.mkdtemp(prefix='.vgg_jax_write_test', dir=target))
    except OSError as e:
      raise PermissionError(
          f'cannot write to --workdir={workdir}: {target} refused a test directory '
          f'({e.strerror}); choose a --workdir you can write to, or fix its permissions'
      ) from e


def check_own(workdir: str) -> None:
  """Raises (one line, with the fix) if `workdir` holds other things and no run."""
  if not os.path.isdir(workdir) or os.path.isfile(os.path.join(workdir, run_files.CONFIG_FILE)):
    return
  others = run_files.foreign_entries(workdir)
  if others:
    shown = ', '.join(others[:3]) + (', ...' if len(others) > 3 else '')
    raise ValueError(
        f'--workdir={workdir} holds other things ({shown}) and no run: a run writes '
        'config.json, metrics.jsonl and checkpoints/ into its workdir; choose a new or empty '
        'directory')


def is_experiment_field(key: str) -> bool:
  if key in FREE_DATA_FIELDS:
    return False
  return key.startswith(EXPERIMENT_GROUPS) or key in EXPERIMENT_FIELDS


def _show(value: Any) -> str:
  return 'unset' if value is run_files.UNSET else json.dumps(value)


def check_config(workdir: str, config, allow_change: bool = False) -> list[str]:
  """Refuses to resume `workdir` with a config that changes the experiment.

  Returns the changes that are allowed (as 'field: old -> new'), for the log.
  Raises ValueError listing the refused ones otherwise. A workdir without a
  checkpoint has nothing to protect, and `allow_change` accepts everything.
  """
  path = os.path.join(workdir, run_files.CONFIG_FILE)
  if not run_files.has_checkpoints(workdir) or not os.path.isfile(path):
    return []
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    if allow_change:
      return [f'{run_files.CONFIG_FILE} unreadable ({e}); replaced']
    raise ValueError(f'cannot read {path} to compare configs ({e}): restore it, or pass '
                     '--allow_config_change to resume with this config') from e
  changes = run_files.config_changes(config_schema.complete(saved), config_schema.to_json(config))
  refused = [c for c in changes if is_experiment_field(c[0])]
  if refused and not allow_change:
    shown = '; '.join(f'{key}: {_show(old)} -> {_show(new)}' for key, old, new in refused[:6])
    more = f'; and {len(refused) - 6} more' if len(refused) > 6 else ''
    raise ValueError(
        f'{workdir} holds a run with a different config ({shown}{more}): resume it with '
        f'its own config ({path}), use a new --workdir, or pass --allow_config_change '
        'if the change is meant')
  return [f'{key}: {_show(old)} -> {_show(new)}' for key, old, new in changes]
