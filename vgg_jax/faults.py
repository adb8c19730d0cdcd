"""What the training loop does about faults: preemption and divergence.

Preemption. SLURM (at a time limit or on preemption) and cloud schedulers send
SIGTERM, then SIGKILL some seconds later. `PreemptionWatch` turns SIGTERM into
a flag that the loop reads once per step; the loop then saves a checkpoint at
the step it reached, waits until it is written, and raises `errors.Preempted`, which
`vgg_jax.train` reports on stderr before exiting with `PREEMPTED_EXIT_CODE`.
Rerunning the same command continues from that step exactly.

Other notices can be watched as well: submitit, which runs the SLURM sweeps,
sends SIGUSR2 ahead of a time limit (`PreemptionWatch(signals=(SIGTERM,
SIGUSR2))`, see experiments/point.py), and `vgg_jax.train` takes a Ctrl-C
(SIGINT) as a notice too, so that stopping a run by hand keeps the step it
reached; a second Ctrl-C interrupts at once, checkpoint or not.

With several processes the step must be the same everywhere, or the
collective save would hang. JAX's preemption service (started by
`jax.distributed.initialize`) owns SIGTERM then: any process that receives it
tells the others, and `multihost_utils.reached_preemption_sync_point` agrees
on a step that every process reaches. It takes its latest caller's step as
the process's, so the loop must be its only caller (`checkpoints.manager`
keeps orbax from asking). A Python handler would replace JAX's, so
none is installed for SIGTERM in that case; the other signals are passed on to
JAX's service as a SIGTERM to the process itself.

Divergence. `LossCheck` keeps the loss of every step since it last looked and
looks where the loop waits for the device anyway (logging, checkpoints), so a
NaN or Inf stops the run naming the exact step, without a per-step sync.
`vgg_jax.checkpoints.save` also refuses a state with non-finite values, so no
checkpoint holds them.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vgg_jax import errors

# 128 + SIGTERM: what a shell reports for a process that SIGTERM ended, so job
# scripts that already requeue on "terminated" keep working; distinct from 0
# (finished) and 1 (error).
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class SignalNote:
  """While entered, the first of `signals` to arrive is noted in `received`
  instead of acted on, for the program to stop in order where it can (a
  training loop at its next step, a sweep's launcher by stopping its points);
  leaving restores the previous handlers. With `on_ctrl_c`, a first Ctrl-C
  (SIGINT) logs it and a second one interrupts at once, checkpoint or not.
  No JAX here: the sweeps' launchers use it without starting a backend.
  """

  def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,),
               on_ctrl_c: Optional[str] = None):
    self.signals = tuple(signals)
    self.on_ctrl_c = on_ctrl_c
    self.received: Optional[str] = None
    self._previous: dict = {}

  def __enter__(self):
    # Signal handlers can only be set from the main thread.
    if threading.current_thread() is threading.main_thread():
      for signum in self.signals:
        self._previous[signum] = signal.signal(signum, self._take_note)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _take_note(self, signum, frame) -> None:
    del frame
    self.received = self.received or signal.Signals(signum).name
    if signum == signal.SIGINT and self.on_ctrl_c:  # a second one is impatience: obey it
      signal.signal(signal.SIGINT, signal.default_int_handler)
      logging.warning(self.on_ctrl_c)


class PreemptionWatch(SignalNote):
  """Whether every process has seen a preemption notice, asked once per step.

  Use as a context manager around training: entering installs handlers for
  `signals` (SIGTERM by default) and leaving restores the previous ones. Not
  entered, a single process never reports preemption. `received` names the
  first signal that arrived; the loop acts on it at the next step boundary,
  where the state is whole and nothing else is being written.
  """

  def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)):
    super().__init__(signals, on_ctrl_c='Ctrl-C: checkpointing at the next step, then '
                     'stopping; Ctrl-C again stops at once')

  def __enter__(self) -> 'PreemptionWatch':
    if jax.process_count() == 1:
      return super().__enter__()
    if threading.current_thread() is threading.main_thread():
      for signum in self.signals:
        if signum != signal.SIGTERM:  # JAX's own SIGTERM handler must stay
          self._previous[signum] = signal.signal(signum, _pass_on_as_sigterm)
    return self

  def reached(self, step: int) -> bool:
    """True at the step where the run should checkpoint and stop."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None


def _pass_on_as_sigterm(signum, frame) -> None:
  """Hands a notice to JAX's preemption service, which listens for SIGTERM."""
  del signum, frame
  os.kill(os.getpid(), signal.SIGTERM)


class LossCheck:
  """Raises `errors.NonFiniteError` naming the first step whose loss is NaN or Inf.

  `add` is called every step with the step's loss, still on the device; the
  values are fetched only by `check`, and by `add` at multiples of `every`
  (the logging interval, where the loop waits for the device anyway), so the
  loop keeps dispatching ahead of the device in between. `last_checkpoint`
  returns the newest saved step once written, for the message.

  """

  def __init__(self, every: int, last_checkpoint: Callable[[], Optional[int]]):
    self.every = max(1, every)
    self.last_checkpoint = last_checkpoint
    self._steps: list[int] = []
    self._losses: list[jax.Array] = []

  def add(self, step: int, loss: jax.Array) -> None:
    self._steps.append(step)
    self._losses.append(loss)
    if step % self.every == 0:
      self.check()

  def check(self) -> None:
    if not self._steps:
      return
    steps, losses = self._steps, np.asarray(jax.device_get(self._losses), np.float64)
    self._steps, self._losses = [], []
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      raise diverged(f'the training loss is {losses[bad[0]]} at step {steps[bad[0]]}',
                     self.last_checkpoint())


def diverged(what: str, last_checkpoint: Optional[int]) -> errors.NonFiniteError:
  """The error for a diverged run: what happened, what is kept, what to do."""
  kept = (f'the newest checkpoint, step {last_checkpoint}, is kept' if last_checkpoint
          is not None else 'there is no checkpoint yet')
  return errors.NonFiniteError(
      f'{what}: the run diverged. No checkpoint holds non-finite values; {kept}. '
      'Lower --config.optimizer.learning_rate or raise --config.optimizer.warmup_epochs '
      'and rerun with --allow_config_change (or in a new --workdir)')
