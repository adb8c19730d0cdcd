"""Throughput of training, evaluation and the input pipeline, as JSON.

    python -m vgg_jax.benchmark --variant=A --image_size=32 --batch_size=64 --compare=torch
    python -m vgg_jax.benchmark --variant=D --image_size=224 --batch_size=256 \\
        --dtype=bfloat16 --width=1 --fc_width=4096 --num_classes=1000   # one GPU
    python -m vgg_jax.benchmark --variant=D --batch_norm --width=0.5 --fc_width=128 \\
        --batch_size=512 --dtype=bfloat16 --kernels=muon --muon_dtype=bfloat16 \
        --measure=train                                    # cifar10.py:D,amx,muon's step

Every rate is measured after compilation, which is never inside a timed region:
each compiled function is built with `.lower().compile()` and called once
before its clock starts. A rate is the median of `--windows` timed windows of
`--steps` calls each, after one untimed window of each contender (steady
state: XLA's first dozen steps on the CPU are up to 2.5 times slower while
malloc's heap settles); with `--compare=torch` the vgg_jax and PyTorch training
windows take turns, so both see the same background load.

* train: the real training step (`train.compile_train_step`: SGD with momentum
  and weight decay, or Muon for the conv kernels with `--kernels=muon`, the
  state donated on accelerators, the batch split across
  `--devices`) on a batch already on the devices. FLOP/s two ways: XLA's cost analysis of the
  compiled step, and the model's own count (3 x the forward pass's 2 x MACs,
  from `summary.train_flops_per_image`), which is what MFU uses.
* peak: a square matmul in the compute dtype on one device, measured in the same
  run; on a GPU it is multiplied by the number of devices, on the CPU not
  (host devices share the same cores). MFU = model FLOP/s / peak.
* eval: the single-crop forward pass at the same size and batch.
* pipeline: the training input pipeline at 224 with scale jitter S in
  [256, 512] from JPEG files (`--pipeline_folder`, or synthetic photo-sized
  JPEGs), with one thread (img/s per core) and with all threads.
* end_to_end: real training, as `vgg_jax.train` runs it: the input pipeline
  reading `--data_folder` (or the built-in dataset) from disk, the copy to the
  devices and the step, in windows taken in turns with the step alone's, in
  epoch `--end_to_end_epoch` (from the second on, small images are not decoded);
  `fraction_of_step_alone` is how much of the step's rate it keeps (medians;
  `_paired`: the median of each window's ratio to the step-alone window before it).
* --compare=torch: the same network, optimizer and batch in PyTorch (an
  optional dependency), contiguous and channels-last, and the ratio vgg_jax /
  PyTorch in the better of the two (`side_by_side`: of the medians, of
  back-to-back windows, of the best windows). PyTorch runs with glibc's malloc
  as the user has it (`torch`: how it runs by default) and, where this process
  restarted with `malloc_tunables`, also with the same tunables
  (`torch.same_malloc`: like for like).
"""

from __future__ import annotations

if __name__ == '__main__':  # first: a restart would repeat every import below
  from vgg_jax import malloc_tunables
  malloc_tunables.restart_with_tunables()

import contextlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from vgg_jax import (cli, config_schema, console, cpu_ops, data, machine, malloc_tunables,
                     onednn, optim, parallel, pooling, summary, train)
from vgg_jax import workdir as run_files
from vgg_jax.data import resample
from vgg_jax.model import VGG

PIPELINE_SIZE, PIPELINE_SCALE = 224, (256, 512)


# --------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------


def timed_rate(run_window: Callable[[], None], items_per_window: int, windows: int) -> dict:
  """Items per second: the median over `windows` calls of `run_window`."""
  return timed_rates({'only': (run_window, items_per_window)}, windows)['only']


def timed_rates(runs: dict, windows: int) -> dict:
  """Rates of several {name: (run_window, items_per_window)}, their windows interleaved.

  Taking turns window by window exposes every contender to the same
  background load, so a side-by-side ratio stays fair on a shared machine.
  One untimed window each comes first: the rates are steady-state ones.
  """
  for run_window, _ in runs.values():
    run_window()
  rates = {name: [] for name in runs}
  for _ in range(windows):
    for name, (run_window, items) in runs.items():
      start = time.perf_counter()
      run_window()
      rates[name].append(items / (time.perf_counter() - start))
  return {name: {'img_per_sec': statistics.median(r), 'windows': r} for name, r in rates.items()}


def side_by_side(ours: list, theirs: list) -> dict:
  """vgg_jax / PyTorch, three ways, since a shared machine's load drifts.

  ratio: median rate over median rate. ratio_paired: the median of the
  ratios of windows run back to back, which a slow drift in the background
  load barely moves. ratio_best: best window over best window, what each
  reaches when the machine leaves it alone.
  """
  return {'ratio': statistics.median(ours) / statistics.median(theirs),
          'ratio_paired': statistics.median(a / b for a, b in zip(ours, theirs)),
          'ratio_best': max(ours) / max(theirs)}


def matmul_peak(dtype, device, size: Optional[int] = None, steps: int = 5) -> dict:
  """FLOP/s of a square matmul on one device: the denominator of MFU."""
  size = size or (2048 if device.platform == 'cpu' else 8192)
  # Random operands: constant ones or zeros can run faster than real data (GPUs
  # switch fewer bits); scaled by 1/sqrt(size) so the chain's values stay near 1.
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32) / np.sqrt(size)
  a = jax.device_put(a.astype(dtype), device)
  # A chain of dependent matmuls, so one call is long enough to time well.
  chain = jax.jit(lambda a: jax.lax.fori_loop(0, steps, lambda _, x: x @ a, a))
  compiled = chain.lower(a).compile()
  jax.block_until_ready(compiled(a))
  # The best window: a peak is what the hardware can do, not what it did under load.
  rate = max(timed_rate(lambda: jax.block_until_ready(compiled(a)), 1, 5)['windows'])
  return {'matmul_size': size, 'flops_per_sec': 2 * size**3 * steps * rate}


def xla_flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


# --------------------------------------------------------------------------
# What is measured.
# --------------------------------------------------------------------------


def build_model(f) -> VGG:
  """The benchmarked network from the flags `f`: dropout 0.5 as in the paper."""
  plain = f.ops == 'plain'
  return VGG(variant=f.variant, num_classes=f.num_classes, image_size=f.image_size,
             width=f.width, fc_width=f.fc_width, head=f.head, batch_norm=f.batch_norm,
             dropout_rate=0.5, weight_init='glorot', dtype=jnp.dtype(f.dtype),
             conv_fn=jax.lax.conv_general_dilated if plain else None,
             pool_fn=pooling.window_max_pool_2x2 if plain else None)


def convolutions(f) -> dict:
  """Whose convolutions the benchmarked step runs ('onednn' or 'xla'), and for
  oneDNN the kernels it picks on this CPU (for a 3x3 conv of 16 channels on 8x8
  maps: the instruction set shows). XLA's FLOP count (`xla_flops_per_step`)
  leaves out the convolutions it does not compile itself."""
  if f.ops == 'plain' or not cpu_ops.convolution_library(f.dtype).startswith('oneDNN'):
    return {'convolutions': 'xla'}
  return {'convolutions': 'onednn',
          'onednn_kernels': onednn.implementations(8, 8, 16, 16, jnp.dtype(f.dtype))}


def synthetic_batch(batch: int, size: int, num_classes: int, mesh) -> dict:
  """A training batch as `data.train_batches` makes them: uint8 pixels, offsets, labels."""
  rng = np.random.default_rng(0)
  local = {'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
           'offset': np.full((batch, 3), -120.0, np.float32),
           'label': rng.integers(0, num_classes, batch).astype(np.int32)}
  return jax.device_put(local, parallel.batch_sharded(mesh))


def optimizer_config(kernels: str = 'sgd', muon_ns_steps: int = 3,
                     muon_dtype: str = 'float32') -> ml_collections.ConfigDict:
  """What the timed steps train with: SGD (momentum 0.9, weight decay 5e-4) at a
  constant rate, the conv kernels by `kernels` ('muon': Newton-Schulz iterations
  whose cost grows with the kernels, not the batch, their products in `muon_dtype`)."""
  opt_cfg = config_schema.base_config().optimizer
  opt_cfg.update(learning_rate=0.01, schedule='constant', kernels=kernels,
                 muon_ns_steps=muon_ns_steps, muon_dtype=muon_dtype)
  optim.kernel_optimizer(opt_cfg)  # a clear error for an unknown name
  optim.muon_dtype(opt_cfg)
  return opt_cfg


def compiled_train_step(model: VGG, mesh, batch: dict, compiled=None, opt_cfg=None):
  """(a fresh train state, the compiled step) for batches shaped like `batch`:
  `compiled` where given (the same program, not compiled twice); `opt_cfg` from
  `optimizer_config` (default: SGD)."""
  opt_cfg = opt_cfg or optimizer_config()
  tx = optim.create_optimizer(opt_cfg, num_steps=1000, steps_per_epoch=100)
  lr_fn = optim.learning_rate_fn(opt_cfg, 1000, 100)
  init_key, dropout_key = jax.random.split(jax.random.key(0))
  state = train.create_train_state(model, tx, init_key, model.image_size, mesh)
  if compiled is None:
    step = train.compile_train_step(model, tx, lr_fn, dropout_key, mesh)
    compiled = step.lower(state, batch).compile()
  state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  return state, compiled


def step_windows(state, compiled, next_batch: Callable[[], dict], steps: int):
  """A timed window of `steps` training steps on the batches `next_batch` gives."""

  def window():
    nonlocal state
    for _ in range(steps):
      state, _ = compiled(state, next_batch())  # no host synchronisation inside
    jax.block_until_ready(state)

  return window


def prepare_train(model: VGG, mesh, batch_size: int, steps: int, opt_cfg=None):
  """Steps alone, on one batch already on the devices; and the compiled step."""
  batch = synthetic_batch(batch_size, model.image_size, model.num_classes, mesh)
  state, compiled = compiled_train_step(model, mesh, batch, opt_cfg=opt_cfg)
  return step_windows(state, compiled, lambda: batch, steps), compiled


def trace_train_steps(window: Callable[[], None], directory: str) -> None:
  """A `jax.profiler` trace of one timed window's steps (after the timing)."""
  jax.profiler.start_trace(directory)
  try:
    window()
  finally:
    jax.profiler.stop_trace()


def folder_kind(folder: str) -> str:
  """'image_store' for a store written by `vgg_jax.data.store`, else 'image_folder'."""
  is_store = os.path.isfile(os.path.join(folder, data.sources.STORE_MANIFEST))
  return data.sources.IMAGE_STORE if is_store else data.sources.IMAGE_FOLDER


def end_to_end_config(model: VGG, folder: Optional[str]) -> ml_collections.ConfigDict:
  """The data of the end-to-end run: an image folder or store, else the built-in dataset,
  at the paper's S = 256/224 of the crop (37 for a 32 crop)."""
  cfg = config_schema.base_config().data
  scale = int(round(model.image_size * 256 / 224))
  cfg.update(image_size=model.image_size, train_scale=(scale, scale), test_scale=scale)
  if folder:
    cfg.update(name=folder_kind(folder), folder=folder, eval_split='test')
  else:
    cfg.update(name='vgg_shapes', eval_split='test')
  return cfg


def prepare_end_to_end(model: VGG, mesh, batch_size: int, steps: int,
                       data_cfg: ml_collections.ConfigDict, epoch: int = 1, compiled=None,
                       opt_cfg=None):
  """Training as `vgg_jax.train` runs it: batches read from disk by the input
  pipeline, copied to the devices ahead of the step (`prefetch_to_device`), and
  the step; the pipeline's threads share the machine with the step. The windows
  fall in epoch `epoch`: from the second on, small images are no longer decoded
  (`data.pipeline.KeptDecodes`), and the pipeline runs through the epochs before
  it first, outside the clock. `compiled`: the step alone's program, where built
  (with the same `opt_cfg`)."""
  local = data.train_batches(data_cfg, global_batch_size=batch_size, seed=0)
  if epoch > 1:  # the split's size read only then: a folder's is a scan of its files
    num_examples = data.dataset_info(data_cfg).num_examples[data_cfg.train_split]
    for _ in range((epoch - 1) * math.ceil(num_examples / batch_size)):
      next(local)
  batches = parallel.prefetch_to_device(local, mesh,
                                        size=config_schema.base_config().prefetch_to_device)
  state, compiled = compiled_train_step(model, mesh, next(batches), compiled, opt_cfg)
  return step_windows(state, compiled, lambda: next(batches), steps)


def train_summary(rate: dict, compiled, model: VGG, mesh, batch_size: int) -> dict:
  """The train rate with step time and FLOP/s, by the model's count and XLA's."""
  result = dict(rate)
  steps_per_sec = result['img_per_sec'] / batch_size
  result['step_ms'] = 1e3 / steps_per_sec
  result['model_flops_per_step'] = summary.train_flops_per_image(model) * batch_size
  result['model_flops_per_sec'] = result['model_flops_per_step'] * steps_per_sec
  per_device = xla_flops(compiled)
  if per_device is not None:
    # The compiled program is one device's share of the step.
    result['xla_flops_per_step'] = per_device * mesh.devices.size
    result['xla_flops_per_sec'] = result['xla_flops_per_step'] * steps_per_sec
  return result


def measure_eval(model: VGG, mesh, batch_size: int, steps: int, windows: int) -> dict:
  batch = synthetic_batch(batch_size, model.image_size, model.num_classes, mesh)
  variables = jax.jit(model.init, out_shardings=parallel.replicated(mesh),
                      compiler_options={'xla_backend_optimization_level': 0})(
                          jax.random.key(0), batch['image'][:1])
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  compiled = forward.lower(variables, batch['image']).compile()
  jax.block_until_ready(compiled(variables, batch['image']))

  def window():
    outs = [compiled(variables, batch['image']) for _ in range(steps)]
    jax.block_until_ready(outs)

  return timed_rate(window, steps * batch_size, windows)


def write_synthetic_jpegs(root: str, count: int) -> None:
  """Photo-sized JPEGs (500x375, ~ImageNet's average) with smooth and fine detail."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (('train', count), ('test', 2)):
    for i in range(n):
      folder = os.path.join(root, split, f'class{i % 2}')
      os.makedirs(folder, exist_ok=True)
      coarse = rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)
      image = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC),
                         np.float32)
      image += rng.normal(0, 12, image.shape)
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
          os.path.join(folder, f'{i:05d}.jpg'), quality=90)


def pipeline_config(folder: str, threads: int, workers: int = 0) -> ml_collections.ConfigDict:
  cfg = config_schema.base_config().data  # the paper's colour shift and mean RGB
  cfg.update(name=folder_kind(folder), folder=folder, eval_split='test', image_size=PIPELINE_SIZE,
             train_scale=PIPELINE_SCALE, test_scale=PIPELINE_SCALE[0], num_threads=threads,
             num_workers=workers)
  return cfg


def pipeline_settings(workers: int) -> list[tuple[str, int, int]]:
  """(name, threads, worker processes) of each pipeline measurement: one thread
  (the per-core rate), all threads, and, with `workers` (-1: CPUs - 2 where
  there are more than 2), whole batches built in that many processes."""
  cores = os.cpu_count() or 1
  settings = [('one_thread', 1, 0), ('all_threads', cores, 0)]
  if workers < 0:
    workers = cores - 2 if cores > 2 else 0
  if workers > 0:
    settings.append(('workers', 1, workers))
  return settings


def measure_pipeline(folder: Optional[str], images: int, windows: int,
                     workers: int = -1) -> dict:
  """Training batches at 224 with scale jitter, decoded from JPEG files."""
  with contextlib.ExitStack() as stack:
    if folder is None:
      folder = stack.enter_context(tempfile.TemporaryDirectory())
      write_synthetic_jpegs(folder, images)
    batch = 16
    result = {'image_size': PIPELINE_SIZE, 'train_scale': list(PIPELINE_SCALE),
              'cpu_cores': os.cpu_count()}
    for name, threads, processes in pipeline_settings(workers):
      batches = data.train_batches(pipeline_config(folder, threads, processes),
                                   global_batch_size=batch, seed=0)
      next(batches)  # start the workers outside the clock
      per_window = max(1, images // batch)
      rate = timed_rate(lambda: [next(batches) for _ in range(per_window)],
                        per_window * batch, windows)
      batches.close()  # its threads or processes stop before the next setting's start
      result[name] = {'threads': threads, 'workers': processes, **rate}
    result['img_per_sec_per_core'] = result['one_thread']['img_per_sec']
    return result


# --------------------------------------------------------------------------
# PyTorch, for the side-by-side comparison.
# --------------------------------------------------------------------------


def torch_model(model: VGG):
  """The same layers as `model` (its resolved architecture) as a torch Sequential."""
  import torch
  from torch import nn
  layers, channels, stage = [], 3, 1
  for spec in model.layers():
    if spec.stage != stage:
      layers.append(nn.MaxPool2d(2))
      stage = spec.stage
    layers.append(nn.Conv2d(channels, spec.features, spec.kernel_size,
                            padding=spec.kernel_size // 2, bias=not model.batch_norm))
    if model.batch_norm:
      layers.append(nn.BatchNorm2d(spec.features, momentum=0.1, eps=1e-5))
    layers.append(nn.ReLU(inplace=True))
    if model.use_lrn and spec.name == 'conv1_1':
      layers.append(nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
    channels = spec.features
  layers.append(nn.MaxPool2d(2))
  dropout = nn.Dropout(model.dropout_rate)
  if model.head == 'gap':
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, model.fc_width),
               nn.ReLU(inplace=True), dropout, nn.Linear(model.fc_width, model.num_classes)]
  else:
    w = model.fc1_window
    layers += [nn.Flatten(), nn.Linear(channels * w * w, model.fc_width), nn.ReLU(inplace=True),
               dropout, nn.Linear(model.fc_width, model.fc_width), nn.ReLU(inplace=True),
               nn.Dropout(model.dropout_rate), nn.Linear(model.fc_width, model.num_classes)]
  return torch.nn.Sequential(*layers)


# PyTorch's two layouts for images and conv weights: oneDNN is fastest in
# channels-last on thin nets (1.3x at width 1/4, experiments/PERFORMANCE.md), so
# both are timed and the better one is the rate vgg_jax is compared with.
TORCH_MEMORY_FORMATS = ('contiguous', 'channels_last')
# glibc's malloc for PyTorch's processes: the user's (PyTorch as it runs by
# default), and this process's tunables ('same'), from which PyTorch gains as
# much as vgg_jax, 13-35 % on the thin nets (experiments/PERFORMANCE.md,
# 2026-12-06, evening).
TORCH_MALLOC_SUFFIXES = {'users': '', 'same': '_same_malloc'}


def torch_run_name(memory_format: str, malloc: str = 'users') -> str:
  """The name of a PyTorch process's windows among the timed runs."""
  return f'torch_{memory_format}{TORCH_MALLOC_SUFFIXES[malloc]}'


def torch_mallocs() -> tuple[str, ...]:
  """'users', and 'same' where this process runs with other tunables than the user's."""
  ours = os.environ.get(malloc_tunables.TUNABLES_ENV) or None
  return ('users',) if ours == malloc_tunables.users_tunables() else ('users', 'same')


def start_torch(model: VGG, batch_size: int, steps: int, memory_format: str = 'contiguous',
                malloc: str = 'users') -> Callable[[], Callable[[], None]]:
  """Starts PyTorch's side in a process of its own (`vgg_jax.torch_windows` says
  why) and returns `ready`, which waits for it and returns a window of `steps`
  train steps of the same network and optimizer. The process starts (imports
  torch, builds the network, runs a first step) while this one compiles. Its
  malloc: the user's, or this process's tunables ('same')."""
  try:
    import torch  # pylint: disable=unused-import
  except ImportError:
    sys.exit('vgg_jax.benchmark: error: --compare=torch needs PyTorch: '
             'pip install torch --index-url https://download.pytorch.org/whl/cpu')
  from vgg_jax import torch_windows  # pylint: disable=g-import-not-at-top
  # spawn: forking a process that runs XLA's threads is unsafe.
  context = multiprocessing.get_context('spawn')
  conn, child_conn = context.Pipe()
  # PyTorch's OpenMP as in a script of its own; its malloc as asked.
  with (onednn.users_openmp_environment(),
        malloc_tunables.users_environment() if malloc == 'users' else contextlib.nullcontext()):
    context.Process(target=torch_windows.serve, daemon=True, args=(
        child_conn, torch_model(model), batch_size, model.image_size, model.num_classes,
        steps, memory_format, model.dtype == jnp.bfloat16)).start()

  def ready():
    if conn.recv() != torch_windows.READY:
      raise RuntimeError('the PyTorch process did not start')
    return window

  def window():
    conn.send(torch_windows.RUN)
    conn.recv()

  return ready


def torch_info() -> dict:
  import torch
  return {'threads': torch.get_num_threads(), 'version': torch.__version__}


def torch_summary(rates: dict, train: Optional[dict], malloc: str = 'users') -> dict:
  """PyTorch's rate in its better memory format (by median), both formats' rates,
  and the ratios of vgg_jax's training windows to the better format's, for
  PyTorch's processes with the given malloc."""
  by_format = {fmt: rates[torch_run_name(fmt, malloc)] for fmt in TORCH_MEMORY_FORMATS}
  best = max(by_format, key=lambda fmt: by_format[fmt]['img_per_sec'])
  result = {**by_format[best], 'memory_format': best,
            'rates': {fmt: rate['img_per_sec'] for fmt, rate in by_format.items()},
            **torch_info()}
  if train is not None:
    result.update(side_by_side(train['windows'], by_format[best]['windows']))
  return result


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


MEASUREMENTS = ('train', 'peak', 'eval', 'pipeline', 'end_to_end')


def _define_flags():
  # Defined by the command line only: importing this module (tests do) defines no flags.
  flags.DEFINE_string('variant', 'A', 'Row of Table 1.')
  flags.DEFINE_integer('image_size', 32, 'Input side.')
  flags.DEFINE_integer('batch_size', 64, 'Global batch.')
  flags.DEFINE_float('width', 1.0, 'Channel multiplier.')
  flags.DEFINE_integer('fc_width', 512, 'Hidden FC width.')
  flags.DEFINE_integer('num_classes', 10, 'Classes.')
  flags.DEFINE_enum('head', 'fc', ['fc', 'gap'], 'Classifier head.')
  flags.DEFINE_bool('batch_norm', False, 'BatchNorm after every conv.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
      'Compute dtype; parameters and optimizer state stay float32.')
  flags.DEFINE_enum('kernels', 'sgd', list(optim.KERNEL_OPTIMIZERS),
      "What trains the conv kernels and fc1 ('muon' needs --batch_norm).")
  flags.DEFINE_integer('muon_ns_steps', 3, "Newton-Schulz iterations of --kernels=muon "
      "(3, as configs/cifar10.py's muon and amx,muon train).", lower_bound=1)
  flags.DEFINE_enum('muon_dtype', 'float32', list(optim.MUON_DTYPES),
      "The dtype of --kernels=muon's Newton-Schulz products (float32 sums).")
  flags.DEFINE_enum('ops', 'auto', ['auto', 'plain'],
      "'auto': the model's own convolution (vgg_jax.cpu_ops on the CPU) and "
      "pooling (vgg_jax.pooling); 'plain': lax.conv_general_dilated "
      'and nn.max_pool everywhere, as a plain Flax VGG has them.')
  flags.DEFINE_integer('steps', 10, 'Calls per timed window.')
  flags.DEFINE_integer('windows', 3, 'Timed windows; rates are their median.')
  flags.DEFINE_integer('devices', 0, 'Use the first N devices (0: all).')
  flags.DEFINE_list('measure', ['train', 'peak', 'eval', 'pipeline'],
      'What to measure: train, peak, eval, pipeline, end_to_end.')
  flags.DEFINE_enum('compare', None, ['torch'], 'Also time PyTorch.')
  flags.DEFINE_string(
      'pipeline_folder', None, 'Image folder (train/<class>/*.jpg) or image store '
      '(vgg_jax.data.store) for the pipeline; default: synthetic 500x375 JPEGs.')
  flags.DEFINE_integer('pipeline_images', 96, 'Images per pipeline window.')
  flags.DEFINE_integer('pipeline_workers', -1, 'Worker processes for the pipeline\'s '
      'third measurement (whole batches built in workers); -1: CPUs - 2 where there are '
      'more than 2, 0: none.')
  flags.DEFINE_string('profile_dir', None, 'After the timing, trace one more window '
      '(--steps training steps) with jax.profiler into this directory (TensorBoard, xprof).')
  flags.DEFINE_string(
      'data_folder', None, 'Image folder (train/<class>/*) or image store '
      '(vgg_jax.data.store) that end_to_end trains on; default: the built-in vgg_shapes '
      'dataset.')
  flags.DEFINE_integer(
      'end_to_end_epoch', 1, 'Epoch whose steps end_to_end times (the pipeline runs '
      'through the earlier ones first, untimed): 2 or more for the steady state of a long '
      'run, where small images are decoded no more.', lower_bound=1)
  flags.DEFINE_integer('peak_size', 0, 'Side of the peak matmul (0: 2048 on the '
      'CPU, 8192 on accelerators).')
  flags.DEFINE_string('output', None, 'Also write the JSON to this file.')


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  console.quiet_libraries()
  for name in ('steps', 'windows'):
    if f[name].value < 1:
      sys.exit(f'vgg_jax.benchmark: error: --{name}={f[name].value} must be at least 1')
  unknown = set(f.measure) - set(MEASUREMENTS)
  if unknown:
    sys.exit(f'vgg_jax.benchmark: error: unknown --measure entries {sorted(unknown)}: '
             f'choose from {", ".join(MEASUREMENTS)}')
  devices = jax.devices()
  if f.devices:
    if f.devices > len(devices):
      sys.exit(f'vgg_jax.benchmark: error: --devices={f.devices} but only '
               f'{len(devices)} are visible; on the CPU set XLA_FLAGS='
               f'--xla_force_host_platform_device_count={f.devices}')
    devices = devices[:f.devices]
  if f.kernels == 'muon' and not f.batch_norm:
    sys.exit('vgg_jax.benchmark: error: --kernels=muon holds the conv kernels at a fixed '
             'norm, which only batch norm makes harmless: add --batch_norm')
  if f.kernels == 'muon' and f.compare:
    sys.exit('vgg_jax.benchmark: error: --compare=torch times SGD steps: drop '
             '--kernels=muon to compare')
  mesh = parallel.make_mesh(devices)
  try:
    parallel.check_batch_size(f.batch_size, mesh)
    model = build_model(f)
    model.check_input(model.image_size, model.image_size)
  except ValueError as e:
    sys.exit(f'vgg_jax.benchmark: error: {e}')

  steps, windows = f.steps, f.windows
  report = {
      'setting': {name: f[name].value for name in (
          'variant', 'image_size', 'batch_size', 'width', 'fc_width', 'num_classes', 'head',
          'batch_norm', 'dtype', 'ops', 'kernels', 'muon_ns_steps', 'muon_dtype', 'steps',
          'windows')},
      'machine': {'backend': jax.default_backend(), 'device_kind': devices[0].device_kind,
                  'devices': len(devices), **machine.describe(),
                  'jax': jax.__version__, **convolutions(f),
                  # Whose resize makes the pipeline's crops: the compiled port or Pillow.
                  'resampling': ('compiled' if resample.available() else
                                 f'pillow ({resample.unavailable_reason()})'),
                  'glibc_tunables': os.environ.get(malloc_tunables.TUNABLES_ENV)},
  }
  measure = f.measure
  runs, items = {}, steps * f.batch_size
  mallocs = torch_mallocs() if f.compare == 'torch' else ()
  torch_ready = {torch_run_name(fmt, malloc): start_torch(model, f.batch_size, steps, fmt, malloc)
                 for malloc in mallocs for fmt in TORCH_MEMORY_FORMATS}
  compiled, opt_cfg = None, optimizer_config(f.kernels, f.muon_ns_steps, f.muon_dtype)
  if 'train' in measure:
    train_window, compiled = prepare_train(model, mesh, f.batch_size, steps, opt_cfg)
    runs['train'] = (train_window, items)
  if 'end_to_end' in measure:
    runs['end_to_end'] = (prepare_end_to_end(model, mesh, f.batch_size, steps,
                                             end_to_end_config(model, f.data_folder),
                                             f.end_to_end_epoch, compiled, opt_cfg), items)
  for name, ready in torch_ready.items():
    runs[name] = (ready(), items)
  rates = timed_rates(runs, windows)
  if f.profile_dir and 'train' in measure:
    trace_train_steps(runs['train'][0], f.profile_dir)
  if 'train' in measure:
    report['train'] = train_summary(rates['train'], compiled, model, mesh, f.batch_size)
  if 'end_to_end' in measure:
    report['end_to_end'] = {**rates['end_to_end'], 'data_folder': f.data_folder,
                            'epoch': f.end_to_end_epoch}
    if 'train' in report:
      # Windows taken in turns with the step alone's: the same background load.
      # Also paired, window with the step-alone window before it: the median of
      # those ratios, which a drift in the machine's load moves least.
      pairs = side_by_side(rates['end_to_end']['windows'], rates['train']['windows'])
      report['end_to_end'].update(fraction_of_step_alone=pairs['ratio'],
                                  fraction_of_step_alone_paired=pairs['ratio_paired'])
  if 'peak' in measure:
    peak = matmul_peak(model.dtype, devices[0], f.peak_size or None)
    if devices[0].platform != 'cpu':
      peak['flops_per_sec'] *= len(devices)
    report['peak'] = peak
    if 'train' in report:
      report['train']['mfu'] = report['train']['model_flops_per_sec'] / peak['flops_per_sec']
  if 'eval' in measure:
    report['eval'] = measure_eval(model, mesh, f.batch_size, steps, windows)
  if 'pipeline' in measure:
    report['pipeline'] = measure_pipeline(f.pipeline_folder, f.pipeline_images,
                                          windows, f.pipeline_workers)
  if f.compare == 'torch':
    report['torch'] = {**torch_summary(rates, report.get('train')),
                       'glibc_tunables': malloc_tunables.users_tunables()}
    if 'same' in mallocs:
      report['torch']['same_malloc'] = {
          **torch_summary(rates, report.get('train'), 'same'),
          'glibc_tunables': os.environ.get(malloc_tunables.TUNABLES_ENV)}
  text = json.dumps(report, indent=2)
  print(text)
  if f.output:
    os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
    run_files.write_text_atomic(f.output, text + '\n')


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.flags_parser('vgg_jax.benchmark'))
