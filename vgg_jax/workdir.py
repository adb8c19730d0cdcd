"""A run's directory: what lives where, and files written whole or not at all.

    WORKDIR/config.json           the resolved config (vgg_jax.train)
    WORKDIR/metrics.jsonl         one JSON object per logged step
    WORKDIR/checkpoints/<step>/   orbax checkpoints (vgg_jax.checkpoints)
    WORKDIR/checkpoints_damaged/  damaged ones, moved aside
    WORKDIR/eval/<name>.json      evaluations (vgg_jax.evaluate)
    WORKDIR/events.out.tfevents.* TensorBoard's events
    WORKDIR/profile/              a profiler trace (config.profile)

A point of a sweep (experiments.sweep launches it, experiments.point runs it)
adds point.json (its config and evaluations), log.txt (its console),
train_result.json (training done), evals.json (evaluations done) and, under
SLURM, slurm/ (submitit's files).

Every JSON file is written to a temporary file beside it and renamed over it,
so a reader, or a run killed while writing, never leaves or sees half a file.
Nothing here imports TensorFlow: sweeps' launcher and the report read run
directories without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from typing import IO, Any, Iterator, Optional

from flax import traverse_util

from vgg_jax import config_schema, errors

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'checkpoints_damaged'
EVAL_DIR = 'eval'
POINT_FILE = 'point.json'
TRAIN_RESULT_FILE = 'train_result.json'
TRAIN_SEGMENTS_FILE = 'train_segments.json'
EVALS_FILE = 'evals.json'
LOG_FILE = 'log.txt'
PROFILE_DIR = 'profile'
SLURM_DIR = 'slurm'
EVENTS_PREFIX = 'events.out.tfevents.'
RUN_ENTRIES = frozenset((CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR, DAMAGED_DIR, EVAL_DIR,
                         PROFILE_DIR, POINT_FILE, LOG_FILE, TRAIN_RESULT_FILE,
                         TRAIN_SEGMENTS_FILE, EVALS_FILE, SLURM_DIR))

# A field one side of a config comparison lacks.
UNSET = object()


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir` holds a committed checkpoint (a step directory)."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def foreign_entries(workdir: str) -> list[str]:
  """What `workdir` holds besides a run's and a sweep point's own files (this
  module's layout; hidden files aside), sorted."""
  return sorted(name for name in os.listdir(workdir) if not name.startswith('.')
                and name not in RUN_ENTRIES and not name.startswith(EVENTS_PREFIX))


def is_trained(point_dir: str) -> bool:
  """Whether a sweep point's training has finished."""
  return os.path.isfile(os.path.join(point_dir, TRAIN_RESULT_FILE))


def read_point(point_dir: str) -> Optional[dict]:
  """A sweep point's point.json (None if there is none), its config completed
  with the fields that joined the schema since it was written. The config has
  no `evals`: a point's evaluations are point.json's own 'evals'."""
  spec = read_json(os.path.join(point_dir, POINT_FILE))
  if spec is None:
    return None
  config = config_schema.complete(spec['config'])
  del config['evals']
  return {**spec, 'config': config}


def read_json(path: str, default: Any = None) -> Any:
  """The JSON data in `path`, or `default` if there is no such file; a ValueError
  naming the file if it is not JSON (this module writes files whole, but a
  copy, an editor or another program may not)."""
  if not os.path.isfile(path):
    return default
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is damaged (not JSON: {e}): restore it from a backup, or '
                       'move it aside') from None


def _record(line: str) -> Optional[dict]:
  """A metrics.jsonl line's record; None for a line cut off by a kill."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) and 'step' in record else None


def logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; +inf for a line cut off by a kill."""
  record = _record(line)
  return float('inf') if record is None else record['step']


def read_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl's records, [] if there is none. Appending is not atomic: a run
  killed mid-line leaves its last line cut off (dropped when it resumes), so that
  line is skipped; any other unreadable line is an error."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for number, line in enumerate(lines, 1):
    record = _record(line)
    if record is None:
      if number == len(lines):
        break
      raise ValueError(f'{path}, line {number}, is not a metrics record: the file is damaged; '
                       'restore it from a backup, or move it aside to read the run without it')
    records.append(record)
  return records


@contextlib.contextmanager
def exclusive(workdir: str, primary: bool = True) -> Iterator[None]:
  """Holds a lock on the workdir while the block runs, so that a second run in
  the same workdir (the command started twice, a sweep rerun beside a point
  still training) stops at once with `errors.WorkdirInUse` instead of writing
  the same checkpoints. The lock is the kernel's (flock on the directory
  itself): nothing is written, and a killed run leaves none behind. Only the
  `primary` process of a multi-process run takes it; a file system without
  locks (some NFS mounts) runs unguarded.
  """
  if not primary:
    yield
    return
  fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _flock_holder(os.fstat(fd))
      raise errors.WorkdirInUse(
          f'--workdir={workdir} is in use by another run'
          + (f' (process {holder})' if holder else '')
          + ': wait for it to end or stop it, or choose another --workdir') from None
    except OSError:  # a file system without locks
      pass
    yield
  finally:
    os.close(fd)  # releases the lock


def _flock_holder(stat: os.stat_result) -> Optional[str]:
  """The pid holding a flock on the file of `stat`, from /proc/locks (Linux)."""
  file = f'{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}'
  with contextlib.suppress(OSError):
    with open('/proc/locks') as f:
      for line in f:
        fields = line.split()  # '1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF'
        if len(fields) > 5 and fields[1] == 'FLOCK' and fields[5] == file:
          return fields[4]
  return None


@contextlib.contextmanager
def atomic_file(path: str, binary: bool = False) -> Iterator[IO]:
  """A file to write that replaces `path` in one rename when the block ends
  without an error: readers see the old file or the new one, never a part.

  The temporary file is hidden and ends in '.tmp' (a kill can leave it behind),
  so a listing of `*.json` or `*.jsonl` never takes it for the real one. It is
  synced before the rename, so not even a crash of the machine leaves the
  name pointing to an empty file.
  """
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f'.{name}.{uuid.uuid4().hex}.tmp')
  try:
    with open(tmp, 'xb' if binary else 'x') as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
  """Replaces `path` by `text` in one rename (`atomic_file`)."""
  with atomic_file(path) as f:
    f.write(text)


def write_json(path: str, data: Any) -> None:
  """Writes `data` as indented JSON atomically; an unchanged file is not touched,
  so that rerunning finished work changes no file."""
  text = json.dumps(data, indent=2, sort_keys=True) + '\n'
  if os.path.isfile(path):
    with open(path) as f:
      if f.read() == text:
        return
  write_text_atomic(path, text)


def config_changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """('group.field', old value, new value) for every field that differs, sorted.

  Both configs are JSON data (`config_schema.to_json`), so tuples and lists
  compare equal; a field only one side has is `UNSET` on the other.
  """
  old, new = (traverse_util.flatten_dict(c, sep='.') for c in (old, new))
  pairs = ((key, old.get(key, UNSET), new.get(key, UNSET)) for key in sorted({*old, *new}))
  return [(key, a, b) for key, a, b in pairs if a != b]
