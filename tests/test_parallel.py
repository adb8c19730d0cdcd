"""Data parallelism: a step's result does not depend on the number of devices."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgg_jax import checkpoints, config_schema, optim, parallel, train
from vgg_jax.model import VGG

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import command_env  # pylint: disable=wrong-import-position

OPTIMIZER = config_schema.base_config().optimizer
OPTIMIZER.update(learning_rate=0.05, schedule='cosine')


MUON = config_schema.base_config().optimizer
MUON.update(learning_rate=0.05, schedule='cosine', kernels='muon')
MUON_BFLOAT16 = MUON.copy_and_resolve_references()
MUON_BFLOAT16.muon_dtype = 'bfloat16'


def _run_steps(devices, batch_norm, steps=3, batch_size=16, old_states=None,
               optimizer=OPTIMIZER):
  mesh = parallel.make_mesh(devices)
  # One conv per stage: what is under test is the split of the batch (batch
  # norm's statistics, the gradients' sum), not depth; fewer layers compile faster.
  model = VGG(variant='A', depths=(1, 1, 1, 1, 1), image_size=32, width=1 / 16, fc_width=32,
              num_classes=5, batch_norm=batch_norm, dropout_rate=0.5)
  tx = optim.create_optimizer(optimizer, num_steps=10, steps_per_epoch=5)
  lr_fn = optim.learning_rate_fn(optimizer, 10, 5)
  state = train.create_train_state(model, tx, jax.random.key(0), 32, mesh)
  step = train.compile_train_step(model, tx, lr_fn, jax.random.key(1), mesh)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    batch = {'image': rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
             'offset': rng.normal(size=(batch_size, 3)).astype(np.float32),
             'label': rng.integers(0, 5, batch_size).astype(np.int32)}
    if old_states is not None:
      old_states.append(state)
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    losses.append(float(metrics['train/loss']))
  return jax.device_get(state), losses


@pytest.mark.parametrize('batch_norm,optimizer', [(False, 'sgd'), (True, 'sgd'), (True, 'muon'),
                                                 (True, 'muon_bfloat16')])
def test_one_step_on_eight_devices_equals_one_step_on_one(batch_norm, optimizer):
  """Per step, the device count changes only the order of float32 sums.

  Over many steps runs are equal in distribution only (README, "Many devices
  and many hosts"): rounding differences flip ReLUs and pool choices at
  near-ties, and training amplifies them.
  """
  assert jax.device_count() == 8, 'tests/conftest.py sets eight CPU devices'
  optimizer = {'sgd': OPTIMIZER, 'muon': MUON, 'muon_bfloat16': MUON_BFLOAT16}[optimizer]
  one, losses_one = _run_steps(jax.devices()[:1], batch_norm, steps=1, optimizer=optimizer)
  eight, losses_eight = _run_steps(jax.devices(), batch_norm, steps=1, optimizer=optimizer)
  np.testing.assert_allclose(losses_one, losses_eight, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(eight)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    # Measured: at most 3e-6 of the array's largest value (1 step, 2 cores). Muon's
    # bfloat16 products round where float32 sums differ in their last bits, and a
    # flipped rounding moves a kernel by one of bfloat16's steps (0.4 % of its
    # largest value, measured, in one kernel of nine).
    bfloat16_kernel = optimizer.get('muon_dtype') == 'bfloat16' and a.ndim == 4
    assert np.max(np.abs(a - b)) <= (1e-2 if bfloat16_kernel else 1e-5) * max(
        np.max(np.abs(a)), 1e-30)
  assert int(one.step) == 1


def test_the_cpu_step_leaves_the_old_state_alone():
  # On the CPU the state is not donated (train.compile_train_step says why):
  # the step's inputs outlive it, and XLA copies no kernel to update it in place.
  old_states = []
  _run_steps(jax.devices()[:1], batch_norm=False, steps=1, old_states=old_states)
  leaves = jax.tree_util.tree_leaves(old_states[0])
  assert leaves and not any(leaf.is_deleted() for leaf in leaves)


def test_global_batch_splits_rows_over_devices():
  mesh = parallel.make_mesh()
  batch = parallel.global_batch({'x': np.arange(16, dtype=np.float32)}, mesh)
  assert batch['x'].shape == (16,)
  shards = sorted(batch['x'].addressable_shards, key=lambda s: s.index[0].start)
  assert [s.data.tolist() for s in shards] == [[2 * i, 2 * i + 1] for i in range(8)]


def test_prefetch_keeps_order_and_runs_ahead_by_its_size():
  mesh = parallel.make_mesh()
  pulled = []

  def local_batches():
    for i in range(5):
      pulled.append(i)
      yield {'x': np.full((8, 2), i, np.float32)}

  stream = parallel.prefetch_to_device(local_batches(), mesh, size=3)
  first = next(stream)
  assert len(pulled) == 3  # batches 1 and 2 are already on their way
  assert first['x'].sharding == parallel.batch_sharded(mesh)
  rest = [int(b['x'][0, 0]) for b in stream]
  assert [int(first['x'][0, 0])] + rest == [0, 1, 2, 3, 4]
  # Nothing ahead (size 0) still yields every batch, each pulled when asked for.
  pulled.clear()
  stream = parallel.prefetch_to_device(local_batches(), mesh, size=0)
  assert int(next(stream)['x'][0, 0]) == 0 and pulled == [0]
  assert [int(b['x'][0, 0]) for b in stream] == [1, 2, 3, 4]


@pytest.mark.slow  # starts a command
def test_compilation_cache_stores_compiled_programs(tmp_path):
  code = ('from vgg_jax import parallel; import jax, jax.numpy as jnp; '
          f'parallel.enable_compilation_cache({str(tmp_path / "cache")!r}, 0.0); '
          'jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()')
  subprocess.run([sys.executable, '-c', code], check=True, env={**os.environ, 'XLA_FLAGS': ''})
  cache = tmp_path / 'cache' / f'vgg_jax-{parallel.source_fingerprint()}'
  assert [name for name in os.listdir(cache) if name.startswith('jit__lambda')], os.listdir(cache)


@pytest.mark.slow  # starts two processes
def test_a_step_with_onednn_convolutions_compiles_once_for_two_processes(tmp_path):
  # The convolutions' custom partitioning puts a per-process address into the
  # program: with it in the cache key, every process compiled the step anew.
  code = '\n'.join([
      'import sys, jax, jax.numpy as jnp, numpy as np',
      'from jax.sharding import Mesh, NamedSharding, PartitionSpec as P',
      'from vgg_jax import onednn, parallel',
      f'parallel.enable_compilation_cache({str(tmp_path / "cache")!r}, 0.0)',
      'mesh = Mesh(np.array(jax.devices()), ("data",))',
      'x = jax.device_put(np.ones((4, 6, 6, 3), np.float32), NamedSharding(mesh, P("data")))',
      'conv = onednn.conv if onednn.available() else lambda x, w, pads: (',
      '    jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")))',
      'grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w, ((1, 1), (1, 1)))), 1))',
      'print(float(grad(x, jnp.ones((3, 3, 3, 5))).sum()))',
      'print(jax.config.jax_compilation_cache_dir, file=sys.stderr)'])
  env = command_env(devices=2)
  env.pop('JAX_REMOVE_CUSTOM_PARTITIONING_PTR_FROM_CACHE_KEY', None)  # conftest's
  runs = [subprocess.run([sys.executable, '-c', code], check=True, env=env,
                         capture_output=True, text=True) for _ in range(2)]
  # Each (kernel tap, channel pair) sums the inputs it meets: 36 for the
  # centre tap, 30 per edge, 25 per corner on a 6x6 map; 4 images, 3 x 5 channels.
  assert [run.stdout for run in runs] == [f'{(36 + 4 * 30 + 4 * 25) * 4 * 3 * 5:.1f}\n'] * 2
  cache = runs[1].stderr.strip().splitlines()[-1]
  assert cache == str(tmp_path / 'cache' / f'vgg_jax-{parallel.source_fingerprint()}')
  programs = [name.rsplit('-', 2)[0] for name in os.listdir(cache) if name.startswith('jit_')]
  assert 'jit__lambda' in programs, programs
  assert len(programs) == len(set(programs)), sorted(programs)  # none stored twice


def test_batch_not_divisible_by_devices_is_a_clear_error():
  with pytest.raises(ValueError, match='batch_size=12 is not divisible by the 8 devices'):
    parallel.check_batch_size(12, parallel.make_mesh())


def test_plateau_divides_the_rate_after_patience_evaluations_at_most_max_times():
  config = config_schema.base_config().optimizer
  config.update(plateau_patience=2, plateau_factor=0.1, plateau_max_reductions=3)
  rule = optim.plateau_rule(config)
  update = jax.jit(functools.partial(optim.after_evaluation, rule))
  state = optim.initial_plateau_state({'w': jnp.zeros(3)})
  accuracies = [0.5, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
  scales = []
  for accuracy in accuracies:
    state = update(state, 1.0 - accuracy)  # the rule is fed the top-1 error
    scales.append(np.float32(state.scale))
  f32 = np.float32
  third = f32(f32(f32(0.1) * f32(0.1)) * f32(0.1))
  # Two evaluations without improvement divide the rate; within 1e-4 is none.
  assert scales[:7] == [1, 1, 1, f32(0.1), f32(0.1), f32(0.1), f32(0.1) * f32(0.1)]
  assert scales[7] == f32(0.1) * f32(0.1) and scales[8] == third  # the third reduction...
  assert scales[9:] == [third] * 4  # ...is the last: exactly that scale from then on
  assert optim.lowest_scale(0.1, 3) == third and optim.lowest_scale(0.1, 0) == 1.0
  config.plateau_patience = 0
  with pytest.raises(ValueError, match='plateau_patience=0 must be at least 1'):
    optim.plateau_rule(config)


def test_profile_window_traces_whole_steps_after_warm_up(tmp_path):
  config = config_schema.base_config()
  assert train.profile_window(config, str(tmp_path), 0, 9).directory is None  # off by default
  config.update(profile=True, profile_skip_steps=2, profile_num_steps=3)
  window = train.profile_window(config, str(tmp_path), start_step=10, num_steps=100)
  assert (window.first, window.last) == (13, 15)
  assert train.profile_window(config, str(tmp_path), 98, 100).last == 100
  f = jax.jit(lambda x: x * 2)
  x = jnp.ones(4)
  for step in range(11, 17):
    window.before(step)
    x = f(x)
    window.after(step, x)
  assert list(tmp_path.glob('profile/process_0/**/*.xplane.pb'))


def test_step_compiler_options_by_backend(monkeypatch):
  # The CPU's own options (YNNPACK fusions off), whatever `deterministic` says.
  assert parallel.step_compiler_options() == parallel.step_compiler_options(True)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert parallel.step_compiler_options(deterministic=True) == {
      'xla_gpu_enable_latency_hiding_scheduler': True,  # the 8 test devices
      'xla_gpu_deterministic_ops': True}
  assert parallel.step_compiler_options() == {'xla_gpu_enable_latency_hiding_scheduler': True}
  # XLA knows the names on any backend: a typo would fail here, not on a GPU.
  options = parallel.step_compiler_options(deterministic=True)
  monkeypatch.undo()
  jax.block_until_ready(jax.jit(lambda x: x + 1, compiler_options=options)(np.ones(2)))


def test_a_checkpoint_of_a_replicated_state_is_written_from_one_replica(tmp_path):
  """On CPUs, orbax's replica-parallel saving would slice every array into one
  piece per device, each piece a program compiled at the first save (16 here)."""
  mesh = parallel.make_mesh()
  state = jax.device_put({'w': jnp.arange(64.0).reshape(16, 4), 'b': jnp.ones(8)},
                         parallel.replicated(mesh))
  mngr = checkpoints.manager(str(tmp_path), keep=1)
  compiles = []

  def count(name, *_, **__):
    if name == '/jax/core/compile/backend_compile_duration':
      compiles.append(name)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    checkpoints.save(mngr, state, 1)
    mngr.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert len(compiles) <= 1  # the checksums' program (unless cached), nothing per device
  restored = checkpoints.restore(mngr, checkpoints.abstract_like(state))
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, state)


def test_a_compilation_cache_that_cannot_be_a_directory_is_named(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(OSError, match=r'a_file cannot be a directory \(File exists\): pass '
                     r'--compilation_cache=DIR'):
    parallel.enable_compilation_cache(str(blocker))  # raises before touching jax's config
