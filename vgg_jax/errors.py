"""The errors a user causes and fixes, in one place.

The command lines (`vgg_jax.train`, `vgg_jax.evaluate`, `experiments.*`) end
with one line on stderr and exit status 1 for every exception in
`USER_ERRORS`: a message that names the problem and the fix, not a traceback.
Everything else is a bug and keeps its traceback. The project's own
exceptions below are ValueErrors where they are such mistakes, so that one
`except USER_ERRORS` catches them; `Preempted` is no error at all, and its
command lines exit with `faults.PREEMPTED_EXIT_CODE` instead.
"""

from __future__ import annotations

# Bad config values and arguments, missing runs or files, a workdir inside a
# file, one that cannot be written, the file system or the network failing (a
# full disk, a lost mount).
USER_ERRORS = (ValueError, OSError)


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: damaged, or not of this model."""


class NonFiniteError(ValueError):
  """The loss or the training state stopped being finite: the run diverged."""


class WorkdirInUse(ValueError):
  """Another run is training in the workdir (`vgg_jax.workdir.exclusive`)."""


class Preempted(Exception):
  """The run stopped on a preemption notice after checkpointing `step`."""

  def __init__(self, step: int, signal_name: str = 'SIGTERM'):
    super().__init__(f'preempted ({signal_name}) at step {step}: saved a checkpoint at '
                     f'step {step}; rerun the same command to continue from it')
    self.step = step
    self.signal_name = signal_name
