"""One device mesh, its shardings, global batches and multi-host start-up.

Data parallelism here has `jax.pmap`'s semantics (replicated state, each device
takes a slice of the batch, gradients averaged over the whole batch) but is
written as `jax.jit` over a one-axis mesh, since JAX keeps `pmap` in maintenance
mode only. The train state is replicated (`P()`), batches are split along their
leading axis (`P('data')`), and XLA inserts the all-reduce that `pmap` code
writes by hand as `lax.pmean`. Because arrays are global, a loss averaged in the
step is averaged over the global batch, so results do not depend on the number
of devices, batch norm statistics and dropout masks included.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import os
import pathlib
from typing import Any, Iterator, Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vgg_jax import cpu_ops

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Joins a multi-process job; a no-op for a plain single-process run.

  With explicit arguments any cluster works; without them JAX detects SLURM
  (and other managed clusters) from the environment, which is how
  `srun python -m vgg_jax.train ...` starts one process per task.
  """
  if coordinator_address is not None or num_processes is not None:
    if coordinator_address is None or num_processes is None or process_id is None:
      raise ValueError('multi-process runs need all of --coordinator_address, '
                       '--num_processes and --process_id (or none, under SLURM)')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d joined: %d local devices, %d in all',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def make_mesh(devices: Optional[list[Any]] = None) -> Mesh:
  """A one-axis mesh over every device of every process."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if global_batch_size <= 0:
    raise ValueError(f'batch_size={global_batch_size} must be positive')
  if global_batch_size % devices:
    raise ValueError(
        f'batch_size={global_batch_size} is not divisible by the {devices} '
        f'devices: use a multiple of {devices}, e.g. '
        f'--config.batch_size={max(devices, global_batch_size // devices * devices)}')


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into arrays split over all devices."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}


def prefetch_to_device(local_batches: Iterator[dict[str, np.ndarray]], mesh: Mesh,
                       size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Global batches already on their devices, `size` ahead of the consumer.

  Host-to-device copies are asynchronous, so while step t runs the copies of
  batches t+1 .. t+size are in flight and the step never waits for its input
  (the pattern of flax's `jax_utils.prefetch_to_device`, for global arrays).
  `size` 0 or 1: each batch is copied when the step before it has been issued.
  """
  queue = collections.deque()

  def enqueue(n: int) -> None:
    for local in itertools.islice(local_batches, n):
      queue.append(global_batch(local, mesh))

  enqueue(max(1, size))
  while queue:
    yield queue.popleft()
    enqueue(1)


# Where `vgg_jax.train` and sweep points keep compiled programs by default.
DEFAULT_COMPILATION_CACHE = '~/.cache/vgg_jax/xla'


def step_compiler_options(deterministic: bool = False) -> dict:
  """XLA options for compiling the training step on this backend.

  CPU: `cpu_ops.compiler_options` (YNNPACK for matmuls only). GPU: with several
  devices, XLA's latency-hiding scheduler, which overlaps the gradients'
  all-reduce with the backward pass; with `deterministic`, XLA's deterministic
  GPU ops (atomics-free reductions and convolution algorithms: the same
  result on every run, at some speed), without which a resumed GPU run is not
  bit-for-bit the uninterrupted one.
  """
  backend = jax.default_backend()
  if backend == 'cpu':
    return cpu_ops.compiler_options()
  options = {}
  if backend in ('gpu', 'cuda', 'rocm'):
    if jax.device_count() > 1:
      options['xla_gpu_enable_latency_hiding_scheduler'] = True
    if deterministic:
      options['xla_gpu_deterministic_ops'] = True
  return options


def compilation_cache_dir(requested: Optional[str] = None) -> str:
  """The cache a command enables: the one asked for, else none of its own where
  JAX_COMPILATION_CACHE_DIR already gives JAX one, else the default."""
  if requested is not None:
    return requested
  return '' if os.environ.get('JAX_COMPILATION_CACHE_DIR') else DEFAULT_COMPILATION_CACHE


def enable_compilation_cache(path: str, min_compile_secs: float = 1.0) -> None:
  """Keeps compiled programs in `path`, so a restarted or repeated run skips XLA.

  Only programs that took at least `min_compile_secs` to compile are stored:
  the train and evaluation steps, not the many small helpers. With `path` ''
  the cache is JAX_COMPILATION_CACHE_DIR's, if set. Either way the programs go
  to a subdirectory of this version of vgg_jax (`key_cache_by_source`).
  """
  if path:
    path = os.path.expanduser(path)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise OSError(f'the compilation cache {path} cannot be a directory ({e.strerror}): '
                    'pass --compilation_cache=DIR of a directory you can write to') from None
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', min_compile_secs)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  if jax.config.jax_compilation_cache_dir:
    key_cache_by_source(jax.config.jax_compilation_cache_dir)


def key_cache_by_source(directory: str) -> None:
  """Caches programs in `directory`/vgg_jax-<source_fingerprint()>, keyed without
  the pointers to Python partitioners that their IR holds.

  On several CPU devices the oneDNN convolutions are custom-partitioned ops,
  whose IR carries the address of their Python partitioner: a different number
  in every process, so JAX's key for the train and evaluation steps never
  matched a second time and every run compiled them again. Without the address
  the key no longer sees that Python code, hence one subdirectory per version of it.
  """
  name = f'vgg_jax-{source_fingerprint()}'
  if os.path.basename(os.path.normpath(directory)) != name:  # not twice
    jax.config.update('jax_compilation_cache_dir', os.path.join(directory, name))
  jax.config.update('jax_remove_custom_partitioning_ptr_from_cache_key', True)


@functools.cache
def source_fingerprint() -> str:
  """A hash of vgg_jax's source files and of the CPUs this process may use
  (which set the oneDNN convolutions' threads inside the compiled step)."""
  package = pathlib.Path(__file__).parent
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  digest = hashlib.sha256(str(cpus).encode())
  for path in sorted(package.rglob('*')):
    if path.suffix in ('.py', '.cc', '.h'):
      digest.update(str(path.relative_to(package)).encode() + b'\0' + path.read_bytes())
  return digest.hexdigest()[:16]
