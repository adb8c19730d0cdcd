"""Training: `python -m vgg_jax.train --config=configs/default.py --workdir=DIR`.

The same command resumes a stopped run from its newest checkpoint (SIGTERM or
a Ctrl-C checkpoints the step reached first); one run at a time holds a workdir.
Config fields are overridden on the command line (`--config.model.variant=D`)
and checked before anything is read or written (`validate`).

The step is data-parallel with `pmap` semantics, written as `jax.jit` over a
one-axis device mesh (see `vgg_jax.parallel`). Everything the loop does besides
compiled steps (reading data, logging, evaluating, checkpointing) happens at the
edges, and nothing inside the loop waits for the device except the periodic
logging, evaluation and checkpointing.
"""

from __future__ import annotations

if __name__ == '__main__':  # first: a restart would repeat every import below
  from vgg_jax import malloc_tunables
  malloc_tunables.restart_with_tunables()

import functools
import json
import os
import signal
import socket
import sys
import time
import types
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from clu import parameter_overview
from optax import contrib
from ml_collections import config_flags
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import record_writer

from vgg_jax import (checkpoints, cli, config_schema, console, cpu_ops, data, errors,
                     evaluation, faults, optim, parallel, resume, summary, warm_start,
                     whitening)
from vgg_jax import workdir as run_files
from vgg_jax.model import VGG, num_classes_of

# --------------------------------------------------------------------------
# Model, state and steps.
# --------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  plateau: contrib.ReduceLROnPlateauState  # the plateau rule's (optim.plateau_rule)


def create_train_state(model: VGG, tx: optax.GradientTransformation, rng: jax.Array,
                       image_size: int, mesh) -> TrainState:
  """A fresh state, created already replicated on the mesh (no host copy)."""

  def init(rng):
    variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32))
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}),
                      opt_state=tx.init(params), plateau=optim.initial_plateau_state(params))

  # Init runs once, so its code need not be fast; XLA's CPU backend spends
  # 10x longer optimising the unrolled random-number code than running it.
  return jax.jit(init, out_shardings=parallel.replicated(mesh),
                 compiler_options={'xla_backend_optimization_level': 0})(rng)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy against one-hot labels, or, with `label_smoothing` = e,
  against (1 - e) one-hot + e / classes (Szegedy et al., 2016)."""
  if not label_smoothing:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def network_input(batch: dict) -> jax.Array:
  """A training batch's float32 images: the uint8 pixels plus each image's offset
  (its colour shift minus the mean), computed on the device so that the host
  ships uint8 and does no float work (`data.train_batches`)."""
  return batch['image'].astype(jnp.float32) + batch['offset'][:, None, None, :]


def train_step(state: TrainState, batch: dict, *, model: VGG, tx: optax.GradientTransformation,
               lr_fn: Callable, dropout_key: jax.Array,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
  """One SGD step on the global batch; pure, so it is compiled once."""
  # Dropout masks depend on the step only: a resumed run draws the same masks.
  rng = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    logits, new_model_state = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, network_input(batch),
        train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label'], label_smoothing)
    return loss, (logits, new_model_state)

  (loss, (logits, new_model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree_util.tree_map(lambda u: u * state.plateau.scale, updates)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      'train/loss': loss,
      'train/top1_error': jnp.mean(jnp.argmax(logits, -1) != batch['label']),
      'lr': lr_fn(state.step) * state.plateau.scale,
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            batch_stats=new_model_state.get('batch_stats', state.batch_stats))
  return new_state, metrics


def compile_train_step(model: VGG, tx: optax.GradientTransformation, lr_fn: Callable,
                       dropout_key: jax.Array, mesh, *, deterministic: bool = False,
                       label_smoothing: float = 0.0) -> Callable:
  """`train_step` jitted over the mesh: state replicated, batch split on its rows.

  On accelerators the old state's buffers are donated to the new one, so a step
  holds one copy of the parameters and optimizer state, not two. Not on the CPU:
  there XLA copied every kernel that a backward convolution reads before
  updating it in place (eleven of VGG-A's, 4.7 ms a step, beside the first
  convolutions), and without donation VGG-A's step ran 1-4 % faster in four
  alternations of four (experiments/PERFORMANCE.md), for one more copy of the
  momentum in host memory.
  """
  replicated = parallel.replicated(mesh)
  return jax.jit(
      lambda s, b: train_step(s, b, model=model, tx=tx, lr_fn=lr_fn, dropout_key=dropout_key,
                              label_smoothing=label_smoothing),
      in_shardings=(replicated, parallel.batch_sharded(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=() if cpu_ops.on_cpu() else 0,
      compiler_options=parallel.step_compiler_options(deterministic))


def compile_plateau_update(opt_cfg, mesh) -> Callable:
  """`optim.after_evaluation` on the replicated train state's plateau state:
  (state, top-1 error) -> state, compiled once for every evaluation."""
  rule = optim.plateau_rule(opt_cfg)
  return jax.jit(functools.partial(optim.after_evaluation, rule),
                 out_shardings=parallel.replicated(mesh))


# --------------------------------------------------------------------------
# Schedules of the loop: steps, logging, evaluation, checkpoints.
# --------------------------------------------------------------------------


def steps_per_epoch(config, num_train_examples: int) -> int:
  return max(1, num_train_examples // config.batch_size)


def total_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps and config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(round(config.num_epochs * steps_per_epoch(config, num_train_examples)))


def every(n: int, default: int) -> int:
  """An interval in steps; -1 (or 0) stands for the default, e.g. one epoch."""
  return n if n and n > 0 else default


# Numeric fields and the values they may take: (field, test, what it must be).
_RANGES = (
    ('batch_size', lambda v: v > 0, 'positive'),
    ('label_smoothing', lambda v: 0 <= v < 1,
     'in [0, 1): the weight moved from the true class to all classes'),
    ('optimizer.learning_rate', lambda v: v >= 0, 'non-negative'),
    ('optimizer.momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('optimizer.weight_decay', lambda v: v >= 0, 'non-negative'),
    ('optimizer.warmup_epochs', lambda v: v >= 0, 'non-negative'),
    ('optimizer.muon_learning_rate', lambda v: v >= 0, 'non-negative: radians a step'),
    ('optimizer.muon_momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('optimizer.muon_ns_steps', lambda v: v >= 1, 'at least 1'),
    ('data.color_shift', lambda v: v >= 0, 'non-negative: the std of the PCA colour shift'),
    # orbax's max_to_keep=0 deletes every checkpoint, the newest too.
    ('keep_checkpoints', lambda v: v >= 1, 'at least 1: 0 would delete every checkpoint'),
    ('prefetch_to_device', lambda v: v >= 0, 'non-negative'),
)


def validate(config) -> None:
  """Config errors found before anything touches the disk or the network."""
  image_size = config.data.image_size
  model = VGG.from_config(config.model, num_classes=1, image_size=image_size)
  model.check_input(image_size, image_size)
  data.check_scales(config.data)
  data.check_flip(config.data)
  for field, valid, what in _RANGES:
    value = functools.reduce(getattr, field.split('.'), config)
    if not valid(value):
      raise ValueError(f'{field}={value} must be {what}')
  if len(config.data.mean_rgb) != 3:
    raise ValueError(f'data.mean_rgb={tuple(config.data.mean_rgb)} must hold 3 values: the '
                     'training set\'s mean red, green and blue')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError(f'num_epochs={config.num_epochs} trains no step: set a positive '
                     '--config.num_epochs (or --config.num_train_steps)')
  if config.optimizer.schedule not in optim.SCHEDULES:
    raise ValueError(f'unknown optimizer.schedule {config.optimizer.schedule!r}: choose '
                     f'one of {", ".join(optim.SCHEDULES)}')
  if config.optimizer.schedule == 'plateau':
    optim.plateau_rule(config.optimizer)  # bad plateau settings fail here
  optim.muon_dtype(config.optimizer)  # an unknown dtype fails here
  optim.first_conv(config.optimizer)
  if optim.kernel_optimizer(config.optimizer) == 'muon' and not config.model.batch_norm:
    raise ValueError("optimizer.kernels='muon' holds every conv kernel at a fixed norm, "
                     'which only batch norm after the conv makes harmless: set '
                     "model.batch_norm=True or optimizer.kernels='sgd'")
  if config.requires_init_from and not config.init_from:
    raise ValueError(
        f'this config fine-tunes a trained run (learning rate '
        f'{config.optimizer.learning_rate:g}, as the paper does for S = 384 and jittered S) '
        'but no run to start from is given: pass --config.init_from=WORKDIR of that run, '
        "or add 'scratch' to the config string (e.g. configs/imagenet.py:D,S=384,scratch) "
        'to train from random weights')


class MetricsLog:
  """`metrics.jsonl` (one JSON object per logged step) and TensorBoard events,
  written by the first process.

  The events are TensorBoard's records, written with its own record writer to
  a local file: clu's writers, and TensorBoard's event writer (through
  tf.io.gfile), import TensorFlow, seconds of every run's start for nothing else.
  """

  def __init__(self, workdir: str, start_step: int):
    self.primary = jax.process_index() == 0
    self.path = os.path.join(workdir, run_files.METRICS_FILE)
    self.events = None
    if self.primary:
      self._truncate_after(start_step)
      name = (f'{run_files.EVENTS_PREFIX}{int(time.time()):010d}.{socket.gethostname()}.'
              f'{os.getpid()}')
      self.events = record_writer.RecordWriter(open(os.path.join(workdir, name), 'wb'))
      self._add_event(event_pb2.Event(file_version='brain.Event:2'))

  def _add_event(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self.events.write(event.SerializeToString())
    self.events.flush()

  def _truncate_after(self, step: int) -> None:
    # A killed run may have logged past its last checkpoint; the resumed run
    # logs those steps again, so drop them to keep one line per step.
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line.rstrip('\n') + '\n' for line in f if run_files.logged_step(line) <= step]
    run_files.write_text_atomic(self.path, ''.join(kept))

  def write(self, step: int, scalars: dict) -> None:
    if not self.primary:
      return
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=values)))
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')

  def close(self) -> None:
    if self.events:
      self.events.close()


def log_evaluation(step: int, result: dict) -> None:
  logging.info('step %d  eval top-1 error %.4f  top-5 error %.4f  NLL %.4f  (%d examples)',
               step, result['top1_error'], result['top5_error'], result['nll'],
               result['num_examples'])


def save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    run_files.write_json(os.path.join(workdir, run_files.CONFIG_FILE),
                         config_schema.to_json(config))


class ProfileWindow:
  """A `jax.profiler` trace of steps [first, last], written to `directory`.

  Open it with TensorBoard's profile plugin or xprof. The trace stops after the
  last step's results are ready, so it holds whole steps.
  """

  def __init__(self, directory: Optional[str] = None, first: int = 0, last: int = -1):
    self.directory, self.first, self.last = directory, first, last

  def before(self, step: int) -> None:
    if self.directory and step == self.first:
      jax.profiler.start_trace(self.directory)

  def after(self, step: int, state) -> None:
    if self.directory and step == self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      logging.info('profile of steps %d..%d written to %s', self.first, self.last,
                   self.directory)


def profile_window(config, workdir: str, start_step: int, num_steps: int) -> ProfileWindow:
  """`config.profile`: trace `profile_num_steps` steps, `profile_skip_steps` after the start.

  The first steps of a run (or a resumed run) compile and warm up, so they are skipped.
  """
  if not config.profile:
    return ProfileWindow()
  first = min(num_steps, start_step + 1 + config.profile_skip_steps)
  last = min(num_steps, first + config.profile_num_steps - 1)
  directory = os.path.join(workdir, run_files.PROFILE_DIR, f'process_{jax.process_index()}')
  return ProfileWindow(directory, first, last)


# --------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------


def _shapes(tree) -> dict[str, tuple]:
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree, sep='/').items()}


def start_run_from(variables: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes a new `workdir` as a run at step 0 that holds `variables` (imported
  weights, `vgg_jax.convert`): `vgg_jax.evaluate` evaluates it with the paper's
  protocols, `config.init_from` warm-starts from it, and `vgg_jax.train` in the
  same workdir fine-tunes it from step 0 (momentum and the schedule start
  afresh). The variables must have the shapes of `config.model` at
  `config.data.image_size`, the classes being their classifier's."""
  validate(config)
  resume.check_writable(workdir)
  resume.check_own(workdir)
  if os.path.isfile(os.path.join(workdir, run_files.CONFIG_FILE)):
    raise ValueError(f'--workdir={workdir} holds a run already: choose a new workdir')
  image_size = config.data.image_size
  model = VGG.from_config(
      config.model, num_classes_of(variables['params'], config.model.head), image_size)
  given = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  # Against the model's shapes, before a state is made: a misfit costs no initialisation.
  expected = summary.abstract_variables(model)
  have, want = _shapes(given), _shapes(expected)
  differ = sorted((k for k in have.keys() | want.keys() if have.get(k) != want.get(k)),
                  key=lambda k: (not k.startswith('params'), k))  # the parameters first
  if differ:
    raise ValueError(f'the weights do not fit the config\'s model (variant '
                     f'{config.model.variant}, batch_norm={config.model.batch_norm}, image_size '
                     f'{image_size}): {", ".join(differ[:3])}{", ..." if len(differ) > 3 else ""} '
                     'differ; set the config to the network the weights come from')
  mesh = parallel.make_mesh()
  tx = optim.create_optimizer(config.optimizer, num_steps=1, steps_per_epoch=1)
  state = create_train_state(model, tx, jax.random.key(config.seed), image_size, mesh)
  given = jax.device_put(jax.tree.map(lambda x: np.asarray(x, np.float32), given),
                         parallel.replicated(mesh))
  state = state.replace(params=given['params'], batch_stats=given['batch_stats'])
  os.makedirs(workdir, exist_ok=True)
  with run_files.exclusive(workdir, primary=jax.process_index() == 0):
    mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    checkpoints.save(mngr, state, 0)
    mngr.wait_until_finished()
    mngr.close()
    save_config(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False,
                       preemption: Optional[faults.PreemptionWatch] = None) -> dict:
  """Trains (or resumes) a run in `workdir`; returns the final evaluation.

  Resuming with a config that changes the experiment raises unless
  `allow_config_change`. With `preemption` entered (`vgg_jax.train` does),
  SIGTERM makes the run checkpoint the step it reached and raise
  `errors.Preempted`; a NaN or Inf loss raises `errors.NonFiniteError`.
  """
  validate(config)
  resume.check_writable(workdir)
  resume.check_own(workdir)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  info = data.dataset_info(config.data)
  image_size = config.data.image_size
  model = VGG.from_config(config.model, info.num_classes, image_size)
  for change in resume.check_config(workdir, config, allow_config_change):
    logging.warning('config changed since the last run in %s: %s', workdir, change)

  num_train = info.num_examples[config.data.train_split]
  epoch_steps = steps_per_epoch(config, num_train)
  num_steps = total_steps(config, num_train)
  lr_fn = optim.learning_rate_fn(config.optimizer, num_steps, epoch_steps)
  tx = optim.create_optimizer(config.optimizer, num_steps, epoch_steps)

  logging.info('dataset %s: %d training images, %d classes; evaluating on %s',
               config.data.name, num_train, info.num_classes, config.data.eval_split)
  root = jax.random.key(config.seed)
  init_key, dropout_key = jax.random.split(root)
  state = create_train_state(model, tx, init_key, image_size, mesh)
  logging.info('model VGG-%s at width %g: %s parameters', config.model.variant,
               config.model.width, f'{summary.count_params(state.params):,}')

  os.makedirs(workdir, exist_ok=True)
  with run_files.exclusive(workdir, primary=jax.process_index() == 0):
    mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    if mngr.latest_step() is not None:
      state = checkpoints.restore_newest_good(mngr, checkpoints.abstract_like(state))
      logging.info('resumed from the checkpoint at step %d', int(state.step))
    else:
      state = warm_start.apply_init_from(config, state, model)  # config.init_from, if set
      if optim.first_conv(config.optimizer) == 'whitened' and not config.init_from:
        state = whitening.whiten_first_conv(config, state)  # a warm start keeps its own
      parameter_overview.log_parameter_overview(state.params)  # shown with --v=1
    start_step = int(state.step)
    if start_step > num_steps:
      raise ValueError(
          f'{workdir} holds a run trained to step {start_step}, past the last step of this '
          f'config\'s schedule ({num_steps}): a schedule cannot end before its run\'s '
          f'step; evaluate the run (python -m vgg_jax.evaluate --workdir={workdir}), or '
          'train the shorter schedule in a new --workdir')
    save_config(config, workdir)

    step_fn = compile_train_step(model, tx, lr_fn, dropout_key, mesh,
                                 deterministic=config.deterministic,
                                 label_smoothing=config.label_smoothing)
    update_plateau = (compile_plateau_update(config.optimizer, mesh)
                      if config.optimizer.schedule == 'plateau' else None)
    def run_eval():
      # The paper's single-scale protocol, through the same machinery as
      # `vgg_jax.evaluate`; each process evaluates its share on its own devices.
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      return evaluation.evaluate_protocol(
          model, variables, config.data, split=config.data.eval_split,
          protocol=evaluation.TRAINING_PROTOCOL,
          batch_size=config.batch_size // jax.process_count())

    log = MetricsLog(workdir, start_step)
    log_every = every(config.log_every_steps, 50)
    eval_every = every(config.eval_every_steps, epoch_steps)
    checkpoint_every = every(config.checkpoint_every_steps, epoch_steps)
    # Losses are looked at where logging waits for the device anyway.
    losses = faults.LossCheck(log_every, last_checkpoint=lambda: checkpoints.newest_finished(mngr))
    preemption = preemption or faults.PreemptionWatch()
    batches = parallel.prefetch_to_device(
        data.train_batches(config.data, global_batch_size=config.batch_size,
                           seed=config.seed, start_step=start_step,
                           process_index=jax.process_index(),
                           process_count=jax.process_count()),
        mesh, size=config.prefetch_to_device)
    profile = profile_window(config, workdir, start_step, num_steps)
    logging.info('training steps %d..%d (%d per epoch) on %d devices, global batch %d, '
                 'convolutions by %s', start_step, num_steps, epoch_steps, jax.device_count(),
                 config.batch_size, cpu_ops.convolution_library(jnp.dtype(config.model.dtype)))

    pending, result = [], None
    timer_step, timer = start_step, time.perf_counter()
    for step in range(start_step + 1, num_steps + 1):
      profile.before(step)
      state, metrics = step_fn(state, next(batches))
      profile.after(step, state)
      losses.add(step, metrics['train/loss'])
      pending.append(metrics)
      scalars = {}
      if step % log_every == 0 or step == num_steps:
        scalars.update({k: float(np.mean(v)) for k, v in
                        jax.device_get(jax.tree_util.tree_map(
                            lambda *xs: jnp.stack(xs), *pending)).items()})
        pending = []
        now = time.perf_counter()
        rate = (step - timer_step) * config.batch_size / (now - timer)
        timer_step, timer = step, now
        scalars['img_per_sec'] = rate
        eta = (num_steps - step) * config.batch_size / max(rate, 1e-9)
        logging.info('step %d/%d  loss %.4f  top-1 error %.4f  %.0f img/s  ETA %s', step,
                     num_steps, scalars['train/loss'], scalars['train/top1_error'], rate,
                     time.strftime('%H:%M:%S', time.gmtime(eta)))
      if step % eval_every == 0 or step == num_steps:
        # Steps run asynchronously, dozens behind this loop: without the wait, the
        # time set aside as evaluation's would hold the queued steps' training.
        jax.block_until_ready(state)
        eval_start = time.perf_counter()
        result = run_eval()
        scalars.update({f'eval/{k}': result[k] for k in ('top1_error', 'top5_error', 'nll')})
        if update_plateau is not None:
          state = state.replace(plateau=update_plateau(state.plateau, result['top1_error']))
        log_evaluation(step, result)
        scalars['eval/seconds'] = time.perf_counter() - eval_start
        timer += scalars['eval/seconds']  # evaluation is not training time
      if scalars:
        log.write(step, scalars)
      preempted = preemption.reached(step) and step < num_steps
      if step % checkpoint_every == 0 or step == num_steps or preempted:
        losses.check()  # no checkpoint after a non-finite loss
        checkpoints.save(mngr, state, step)
        logging.info('checkpoint at step %d (written in the background)', step)
      if preempted:
        mngr.wait_until_finished()
        mngr.close()  # no background thread left to print at exit, after the last line
        log.close()
        raise errors.Preempted(step, preemption.received or 'SIGTERM')

    if result is None:  # resumed after the last step: evaluate what is there
      result = run_eval()
      log_evaluation(num_steps, result)
    mngr.wait_until_finished()
    mngr.close()
    log.close()
    logging.info('final test accuracy %.2f%% (top-1 error %.4f) at step %d',
                 100 * (1 - result['top1_error']), result['top1_error'], num_steps)
    return result


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def _define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  """The command line's flags, as holders; only `python -m vgg_jax.train` defines
  them, so importing this module (as evaluation, sweeps and tests do) defines none."""
  command = types.SimpleNamespace(
      config=config_flags.DEFINE_config_file(
          'config', None, 'Training configuration file.', flag_values=flag_values,
          lock_config=True),
      workdir=flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.',
                                  flag_values=flag_values),
      compilation_cache=flags.DEFINE_string(
          'compilation_cache', None, 'Directory where compiled steps are kept for the '
          'next run or restart, in a subdirectory per version of vgg_jax (\'\': none '
          'but $JAX_COMPILATION_CACHE_DIR\'s; default: '
          f'$JAX_COMPILATION_CACHE_DIR if set, else {parallel.DEFAULT_COMPILATION_CACHE}).',
          flag_values=flag_values),
      allow_config_change=flags.DEFINE_bool(
          'allow_config_change', False, 'Resume a workdir even if --config changes the '
          'model, data or optimizer of the run in it (longer schedules and logging need '
          'no flag).', flag_values=flag_values),
      **vars(cli.define_process_flags(flag_values)))
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)
  return command


def main(argv, command: types.SimpleNamespace):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  console.quiet_libraries()
  cli.keep_tensorflow_off_gpus()
  try:
    parallel.enable_compilation_cache(parallel.compilation_cache_dir(
        command.compilation_cache.value))
    parallel.initialize_distributed(command.coordinator_address.value,
                                    command.num_processes.value, command.process_id.value)
    logging.info('JAX process %d/%d, local devices %s', jax.process_index(),
                 jax.process_count(), jax.local_devices())
    with faults.PreemptionWatch((signal.SIGTERM, signal.SIGINT)) as preemption:
      result = train_and_evaluate(command.config.value, command.workdir.value,
                                  preemption=preemption,
                                  allow_config_change=command.allow_config_change.value)
  except errors.Preempted as e:
    print(f'vgg_jax.train: {e}', file=sys.stderr)
    sys.exit(faults.PREEMPTED_EXIT_CODE)
  except errors.USER_ERRORS as e:
    sys.exit(cli.error_line('vgg_jax.train', e))
  print(f'final test accuracy: {100 * (1 - result["top1_error"]):.2f}% '
        f'({result["num_examples"]} examples)')


if __name__ == '__main__':
  _COMMAND = _define_flags()
  jax.config.config_with_absl()
  app.run(functools.partial(main, command=_COMMAND),
          flags_parser=cli.flags_parser('vgg_jax.train', _COMMAND.config))
