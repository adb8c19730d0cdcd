"""Orbax checkpoints of a run: save, resume and restore for evaluation.

A run's checkpoints live in `WORKDIR/checkpoints/<step>/`. Orbax writes each one
to a temporary directory and renames it when complete, so a run killed while
writing leaves no half checkpoint that `latest_step` would pick up. Saving is
asynchronous: the arrays are copied to host memory, then written while training
goes on.

The data position is the step itself: the input pipeline yields the batches of
step t as a pure function of (seed, t), so the step stored here is all a
resumed run needs to see exactly the examples the uninterrupted run would.

Integrity. Beside the state, each checkpoint holds a checksum of every array
(a `checksums` JSON item, committed in the same rename), computed on the
device from the arrays' bits. Restoring recomputes them, so a checkpoint that
was damaged after it was written (a truncated or corrupted file, which
TensorStore may otherwise read back as wrong numbers without an error) is
detected. `restore_newest_good` resumes from the newest checkpoint that
restores and verifies, moves damaged newer ones aside to
`WORKDIR/checkpoints_damaged/` (never deleting anything) and raises
`errors.CheckpointError` if none is good. `save` refuses a state with NaN or Inf.
"""

from __future__ import annotations

import contextlib
import gc
import logging as std_logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
# The store orbax's default array handler keeps its metadata in (not exported).
from orbax.checkpoint._src.metadata import array_metadata_store

from vgg_jax import errors, faults
from vgg_jax import workdir as run_files

STATE = 'state'
CHECKSUMS = 'checksums'


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), run_files.CHECKPOINT_DIR)


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's handler for the state, writing a replicated array from one replica
  on CPUs.

  Off GPUs orbax splits each replicated array into one slice per device, each
  written by its replica: a separately compiled and dispatched op per slice.
  CPU devices share one host memory, so the slices gain nothing and cost most
  of a save (on 8 devices, 3.8 s of compiling and 0.5 s per save, a third of a
  short run's time: cProfile of tests/test_train.py's 48-step run). Elsewhere
  orbax's default stands; the files are the same.
  """
  if jax.default_backend() != 'cpu':
    return ocp.PyTreeCheckpointHandler()
  arrays = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False, array_metadata_store=array_metadata_store.Store())
  scalars = ocp.type_handlers.ScalarHandler()
  handlers = [(int, scalars), (float, scalars), (bytes, scalars), (np.number, scalars),
              (np.ndarray, ocp.type_handlers.NumpyHandler()), (jax.Array, arrays),
              (str, ocp.type_handlers.StringHandler())]  # orbax's defaults, but for arrays
  return ocp.PyTreeCheckpointHandler(
      type_handler_registry=ocp.type_handlers.create_type_handler_registry(*handlers))


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, leaving JAX's preemption sync point to the training loop.

  JAX's sync manager takes the step of its latest caller as the process's
  position, and orbax asks it too, from its finalizing thread, with the older
  step it is writing. A notice landing just then made two processes agree on
  a step one of them had passed: the other stopped there, and the first waited
  in its next step's all-reduce for ever (tests/test_reliability.py, once in
  CI). The loop saves at the agreed step itself (`faults.PreemptionWatch`).
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


def manager(workdir: str, keep: Optional[int] = None,
            asynchronous: bool = True) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the newest `keep` checkpoints."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous)
  return _Manager(checkpoint_dir(workdir), options=options,
                  item_handlers={STATE: _state_handler(),
                                 CHECKSUMS: ocp.JsonCheckpointHandler()})


# --------------------------------------------------------------------------
# Checksums: the bits of every array, reduced on the device.
# --------------------------------------------------------------------------


def leaf_name(path) -> str:
  """'params/conv1_1/kernel' for a pytree path of dict keys, attributes or indices.

  The same name for a `TrainState` field, the dict orbax restores it as and
  its metadata, so checksums and shapes compare across all three.
  """
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return '/'.join(parts)


def named_leaves(tree: Any) -> dict[str, Any]:
  return {leaf_name(path): x for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words, narrower types widened."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _summaries(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Per array: a checksum of its bits, and whether its values are all finite.

  The checksum is sum_i word_i * (2i + 1) mod 2^32. Integer arithmetic makes
  it the same on every device, sharding and reduction order; a change of any
  one word changes it (odd factors are invertible mod 2^32), as does moving
  words around.
  """
  sums, finite = [], []
  for x in leaves:
    words = _words(x).ravel()
    odd = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
    sums.append(jnp.sum(words * odd, dtype=jnp.uint32))
    finite.append(jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                  else jnp.bool_(True))
  return jnp.stack(sums), jnp.stack(finite)


def checksums(tree: Any) -> tuple[dict[str, int], list[str]]:
  """{leaf name: checksum}, and the names of the leaves holding NaN or Inf."""
  named = named_leaves(tree)
  if not named:
    return {}, []
  sums, finite = jax.device_get(_summaries(list(named.values())))
  return ({name: int(value) for name, value in zip(named, sums)},
          [name for name, ok in zip(named, finite) if not ok])


def newest_finished(mngr: ocp.CheckpointManager) -> Optional[int]:
  """The newest step once every pending write has finished."""
  mngr.wait_until_finished()
  return mngr.latest_step()


def save(mngr: ocp.CheckpointManager, state: Any, step: int) -> None:
  """Starts writing `state` as the checkpoint of `step`, with its checksums.

  A state with NaN or Inf is not written: `errors.NonFiniteError` instead.
  Checking waits for the device, as orbax's copy to host memory would anyway.
  """
  sums, non_finite = checksums(state)
  if non_finite:
    more = ', ...' if len(non_finite) > 3 else ''
    raise faults.diverged(f'the training state has non-finite values after step {step} '
                          f'({", ".join(non_finite[:3])}{more})', newest_finished(mngr))
  mngr.save(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeSave(state),
                                             CHECKSUMS: ocp.args.JsonSave(sums)}))


def abstract_like(state: Any) -> Any:
  """Shapes, dtypes and shardings of `state`: the target restored into."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _has_checksums(mngr: ocp.CheckpointManager, step: int) -> bool:
  # Checkpoints written before checksums existed restore unverified.
  return os.path.isdir(os.path.join(os.fspath(mngr.directory), str(step), CHECKSUMS))


def _verify(tree: Any, saved: Optional[dict[str, int]]) -> None:
  """Raises ValueError if `tree`'s arrays differ from the ones written."""
  if saved is None:
    return
  sums, _ = checksums(tree)
  wrong = [name for name, value in sums.items() if saved.get(name) != value]
  if wrong:
    more = ', ...' if len(wrong) > 3 else ''
    raise ValueError(f'checksums differ for {", ".join(wrong[:3])}{more}')


def restore(mngr: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None) -> Any:
  """Restores onto the shardings in `abstract_state`: any device count works.

  Verifies the checksums; a checkpoint that fails to read or verify raises.
  """
  step = mngr.latest_step() if step is None else step
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
  items = {STATE: ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args)}
  if _has_checksums(mngr, step):
    items[CHECKSUMS] = ocp.args.JsonRestore()
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  _verify(restored[STATE], restored[CHECKSUMS] if CHECKSUMS in items else None)
  return restored[STATE]


# Errors of the program, not of the files: they propagate instead of marking a good
# checkpoint damaged (orbax and TensorStore report damage as ValueError, KeyError,
# OSError or plain Exception, so damage cannot be named by type, only these excluded).
PROGRAM_ERRORS = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError,
                  ImportError, MemoryError, RecursionError)


def _damage(error: BaseException) -> str:
  """`_reason(error)` if `error` says the files are damaged; re-raises it otherwise."""
  if isinstance(error, PROGRAM_ERRORS):
    raise error
  return _reason(error)


def _reason(error: BaseException) -> str:
  """An exception as a short single line, for messages about damage."""
  while error.__cause__ is not None:  # TensorStore's own error is the telling one
    error = error.__cause__
  text = ' '.join(str(error).split()) or type(error).__name__
  return text if len(text) <= 160 else text[:157] + '...'


def shape_differences(saved: Any, wanted: Any) -> list[str]:
  """How the arrays of pytree `saved` differ from `wanted`'s, by name and shape."""
  saved = {n: tuple(x.shape) for n, x in named_leaves(saved).items()}
  wanted = {n: tuple(x.shape) for n, x in named_leaves(wanted).items()}
  problems = [f'{n} is {saved[n]} there, {wanted[n]} here' for n in wanted
              if n in saved and saved[n] != wanted[n]]
  problems += [f'{n} is missing there' for n in wanted if n not in saved]
  problems += [f'{n} is not in this model' for n in saved if n not in wanted]
  return problems


def _misfit(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> list[str]:
  metadata = mngr.item_metadata(step)[STATE]
  if metadata is None:
    raise ValueError('its array metadata is missing')
  return shape_differences(metadata, abstract_state)


def restore_newest_good(mngr: ocp.CheckpointManager, abstract_state: Any) -> Any:
  """The state of the newest checkpoint that restores and verifies.

  Damaged newer checkpoints are moved to `WORKDIR/checkpoints_damaged/<step>`
  with a warning, so that the run can write those steps again. Raises
  `errors.CheckpointError`, changing nothing on disk, if the checkpoints hold another
  model or none of them is good.
  """
  directory = os.fspath(mngr.directory)
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      misfit = _misfit(mngr, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      damaged.append((step, _damage(e)))
      continue
    if misfit:
      more = '; ...' if len(misfit) > 3 else ''
      raise errors.CheckpointError(
          f'the checkpoints in {directory} hold another model ({"; ".join(misfit[:3])}{more}): '
          'resuming needs the model they were written with; train this one in a new '
          '--workdir (config.init_from copies layers from another run)')
    try:
      state = restore(mngr, abstract_state, step)
    except Exception as e:  # pylint: disable=broad-except
      damaged.append((step, _damage(e)))
      continue
    _move_aside(mngr, damaged, resumed_from=step)
    if damaged:
      _end_abandoned_reads()
    return state
  raise errors.CheckpointError(
      f'no good checkpoint in {directory}: '
      + '; '.join(f'step {step} is damaged ({reason})' for step, reason in damaged[:3])
      + ('; ...' if len(damaged) > 3 else '')
      + '. Nothing was changed: restore the checkpoints from a backup, or move the '
      'directory aside to train from scratch')


def _end_abandoned_reads() -> None:
  # orbax's abandoned reads of a damaged checkpoint end here, not at some later
  # collection (their exceptions go to `console`'s hook; printed, a page each).
  gc.collect()


def _move_aside(mngr: ocp.CheckpointManager, damaged: list[tuple[int, str]],
                resumed_from: int) -> None:
  directory = os.fspath(mngr.directory)
  if jax.process_count() > 1:
    # Every process comes here, damaged or not, and all must resume the same
    # step: one that failed to read a checkpoint the others read (a transient
    # error, a host that sees another file system) would otherwise resume
    # elsewhere or wait for ever at the barrier below.
    steps = sorted({int(s) for s in multihost_utils.process_allgather(np.int64(resumed_from))})
    if len(steps) > 1:
      raise errors.CheckpointError(
          f'the processes would resume from different checkpoints in {directory} (steps '
          f'{", ".join(map(str, steps))}): nothing was changed; check that every host reads '
          'the same files, then rerun')
  if damaged and jax.process_index() == 0:
    target = os.path.join(os.path.dirname(directory), run_files.DAMAGED_DIR)
    os.makedirs(target, exist_ok=True)
    for step, reason in damaged:
      dest, n = os.path.join(target, str(step)), 1
      while os.path.exists(dest):  # the same step damaged again in a later run
        dest, n = os.path.join(target, f'{step}.{n}'), n + 1
      os.replace(os.path.join(directory, str(step)), dest)
      logging.warning('the checkpoint at step %d is damaged (%s): moved it to %s and '
                      'resuming from step %d', step, reason, dest, resumed_from)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('vgg_jax: damaged checkpoints moved aside')
  if damaged:
    mngr.reload()


# --------------------------------------------------------------------------
# Reading a run's checkpoints outside training (evaluation, warm starts).
# --------------------------------------------------------------------------


class _DropReadOnlyNotice(std_logging.Filter):
  """Orbax warns that a read-only manager's directory is read-only."""

  def filter(self, record):
    return 'Given directory is read only' not in record.getMessage()


@contextlib.contextmanager
def _quiet_read_only_notice():
  logger, notice_filter = std_logging.getLogger('absl'), _DropReadOnlyNotice()
  logger.addFilter(notice_filter)
  try:
    yield
  finally:
    logger.removeFilter(notice_filter)


def _reader(workdir: str) -> ocp.CheckpointManager:
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(
        f'no checkpoints in {workdir}: expected {checkpoint_dir(workdir)}; pass the '
        '--workdir of a training run')
  # The options a read-only manager would otherwise reset, with a warning each.
  options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                         save_interval_steps=0)
  with _quiet_read_only_notice():
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options,
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(),
                       CHECKSUMS: ocp.JsonCheckpointHandler()})


def available_steps(workdir: str) -> list[int]:
  with contextlib.closing(_reader(workdir)) as mngr:
    return sorted(mngr.all_steps())


def restore_variables(workdir: str, step: Optional[int] = None,
                      collections: tuple[str, ...] = ('params', 'batch_stats')) -> dict:
  """The model variables of a checkpoint as numpy pytrees (host memory).

  Only the named collections are read, not the optimizer state. They are
  verified against the checkpoint's checksums; a damaged checkpoint raises
  `errors.CheckpointError` naming the older ones.
  """
  # Closed when done: a manager left to the garbage collector stops its event loop
  # under pending callbacks ("Event loop is closed" at exit).
  with contextlib.closing(_reader(workdir)) as mngr:
    return _restore_variables(mngr, workdir, step, collections)


def _restore_variables(mngr: ocp.CheckpointManager, workdir: str, step: Optional[int],
                       collections: tuple[str, ...]) -> dict:
  steps = mngr.all_steps()
  if not steps:
    raise FileNotFoundError(f'no complete checkpoint in {checkpoint_dir(workdir)}: a run has '
                            'one once it has written its first checkpoint; check the workdir')
  step = max(steps) if step is None else step
  if step not in steps:
    raise ValueError(f'no checkpoint at step {step} in {workdir}: available '
                     f'steps are {sorted(steps)}')
  try:
    metadata = mngr.item_metadata(step)[STATE]
    if metadata is None:
      raise ValueError('its array metadata is missing')
    tree = metadata.tree
    item = {c: tree[c] for c in collections if c in tree}
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    items = {STATE: ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                           partial_restore=True)}
    if _has_checksums(mngr, step):
      items[CHECKSUMS] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    variables = dict(restored[STATE])
    _verify(variables, restored[CHECKSUMS] if CHECKSUMS in items else None)
  except Exception as e:  # pylint: disable=broad-except
    _end_abandoned_reads()
    reason = _damage(e)
    older = sorted(s for s in steps if s < step)
    hint = (f'use an older one, e.g. --step={older[-1]}' if older else
            'there is no older one')
    raise errors.CheckpointError(f'the checkpoint at step {step} in {checkpoint_dir(workdir)} is '
                          f'damaged ({reason}): {hint}') from e
  return variables


def restore_params(workdir: str, step: Optional[int] = None) -> dict:
  """The parameters of a run's checkpoint (newest by default) as numpy arrays."""
  return restore_variables(workdir, step, collections=('params',))['params']
