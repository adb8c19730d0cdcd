"""Orbax checkpoints of a run: save, resume and restore for evaluation.

A run's checkpoints live in `WORKDIR/checkpoints/<step>/`. Orbax writes each one
to a temporary directory and renames it when complete, so a run killed while
writing leaves no half checkpoint that `latest_step` would pick up. Saving is
asynchronous: the arrays are copied to host memory, then written while training
goes on.

The data position is the step itself: the input pipeline yields the batches of
step t as a pure function of (seed, t), so the step stored here is all a
resumed run needs to see exactly the examples the uninterrupted run would.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
STATE = 'state'


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def manager(workdir: str, keep: Optional[int] = None,
            asynchronous: bool = True) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the newest `keep` checkpoints."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers={STATE: ocp.StandardCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, state: Any, step: int) -> None:
  mngr.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state)}))


def abstract_like(state: Any) -> Any:
  """Shapes, dtypes and shardings of `state`: the target restored into."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None) -> Any:
  """Restores onto the shardings in `abstract_state`: any device count works."""
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{STATE: ocp.args.StandardRestore(abstract_state)}))
  return restored[STATE]


def _reader(workdir: str) -> ocp.CheckpointManager:
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(
        f'no checkpoints in {workdir}: expected {checkpoint_dir(workdir)}; pass the '
        '--workdir of a training run')
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={STATE: ocp.PyTreeCheckpointHandler()})


def available_steps(workdir: str) -> list[int]:
  return sorted(_reader(workdir).all_steps())


def restore_variables(workdir: str, step: Optional[int] = None,
                      collections: tuple[str, ...] = ('params', 'batch_stats')) -> dict:
  """The model variables of a checkpoint as numpy pytrees (host memory).

  Only the named collections are read, not the optimizer state.
  """
  mngr = _reader(workdir)
  steps = mngr.all_steps()
  if not steps:
    raise FileNotFoundError(f'no complete checkpoint in {checkpoint_dir(workdir)}')
  step = max(steps) if step is None else step
  if step not in steps:
    raise ValueError(f'no checkpoint at step {step} in {workdir}: available '
                     f'steps are {sorted(steps)}')
  tree = mngr.item_metadata(step)[STATE].tree
  item = {c: tree[c] for c in collections if c in tree}
  restore_args = jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = mngr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True)}))
  return dict(restored[STATE])


def restore_params(workdir: str, step: Optional[int] = None) -> dict:
  """The parameters of a run's checkpoint (newest by default) as numpy arrays."""
  return restore_variables(workdir, step, collections=('params',))['params']
