"""The config schema: every field with its default, the configs' argument parser, and loading.

`base_config()` is the one schema: each config file (configs/*.py) starts from
it and sets only what differs, so every config takes the same `--config.*`
overrides and the code reads every field as `config.group.field`, with no
default of its own. A config saved by an older version lacks the fields added
since; `complete` gives them their defaults, which is what that version used.

Configs are code and take one string, as in big_vision:
`--config=configs/imagenet.py:D,S=384` calls `get_config('D,S=384')`. The
string is a comma-separated list of

  VALUE      the first positional field (the VGG variant: A, A-LRN, B, C, D, E);
  KEY=VALUE  a named field, converted to the type of its default;
  KEY        a boolean field switched on (`jitter`, `runlocal`).

Unknown keys fail with the list of known ones, so a typo never silently
trains the wrong model.

Config files are loaded by path, never installed (only `vgg_jax` is): a file
that builds on another loads it with `load_config_module`, relative to its
own `__file__`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import types
from typing import Any

import ml_collections
from flax import traverse_util
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  """Every field `vgg_jax.train` reads, set to the paper's ImageNet protocol (§3.1).

  VGG-D at full width, no batch norm, 4096-wide FC layers with dropout 0.5 and
  the paper's initialisation; 224 crops of images rescaled to S = 256; batch
  256, SGD with momentum 0.9 and weight decay 5e-4 from 1e-2, divided by 10
  when the validation error stops improving, for 74 epochs.
  """
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      variant='D',
      depths=config_dict.placeholder(tuple),  # None: the variant's own
      kernel_size=3,
      conv1x1=config_dict.placeholder(bool),  # None: the variant's own (C has them)
      lrn=config_dict.placeholder(bool),  # None: the variant's own (A-LRN has it)
      batch_norm=False,
      width=1.0,
      fc_width=4096,
      head='fc',
      dropout_rate=0.5,
      weight_init='paper',
      dtype='float32',
  ))
  config.data = ml_collections.ConfigDict(dict(
      name='imagenet2012',
      builder_config=config_dict.placeholder(str),
      folder=config_dict.placeholder(str),
      data_dir=config_dict.placeholder(str),
      train_split='train',
      eval_split='validation',
      image_size=224,
      train_scale=(256, 256),
      test_scale=256,
      color_shift=0.1,
      # 'random': each crop flipped with probability 1/2 (the paper's);
      # 'alternating': each example's first epoch at random, then the opposite of
      # its previous epoch, so that every two epochs show it both ways (airbench's:
      # short runs waste fewer epochs on views they have seen).
      flip='random',
      mean_rgb=(123.68, 116.779, 103.939),
      # A fresh permutation of the training examples every epoch; False reads
      # them in split order.
      shuffle=True,
      # Threads decoding and augmenting images; 0: one per CPU.
      num_threads=0,
      # grain worker processes that build whole training batches, for large
      # JPEG datasets whose decoding threads cannot keep up with (the GIL);
      # 0: none; -1: CPUs - 2 when the step runs on an accelerator (the host
      # only feeds it), none on the CPU (the step needs the cores).
      num_workers=-1,
      # Training batches prepared ahead of the step that takes them.
      prefetch_batches=2,
      # Linux niceness of the pipeline's threads and workers; 19 also puts them in
      # the SCHED_IDLE policy (they run only on cores nothing else wants). On the
      # CPU the step's oneDNN convolutions split their work in fixed shares over
      # OpenMP threads: a decoding thread that preempts one stalls the rest at the
      # barrier, so decoding yields to the step and runs on the cores it leaves.
      # -1: 19 when the step runs on the CPU, 0 (the step's own) on an accelerator.
      niceness=-1,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-2,
      momentum=0.9,
      nesterov=False,  # the paper's momentum is the classical one
      weight_decay=5e-4,
      schedule='plateau',
      warmup_epochs=0.0,
      step_epochs=(),
      # The paper says "when the validation accuracy stopped improving"; the
      # patience (in evaluations, one an epoch) is not stated.
      plateau_patience=2,
      plateau_factor=0.1,
      plateau_max_reductions=3,
      # 'muon' trains the conv kernels with Muon (vgg_jax/optim.py) at its own
      # peak rate (radians a step) and momentum; the rest keeps the SGD above.
      kernels='sgd',
      muon_learning_rate=0.02,
      muon_momentum=0.9,
      # Newton-Schulz iterations a step: optax's 5; airbench trains with 3.
      muon_ns_steps=5,
      # The dtype of Newton-Schulz's products (float32 sums): 'float32' or
      # 'bfloat16', cheaper on CPUs that multiply bfloat16 (vgg_jax/optim.py).
      muon_dtype='float32',
      # 'trained' (the paper's conv1_1), or 'whitened': set to a patch-whitening
      # filter bank of the training images and never trained (vgg_jax/whitening.py).
      first_conv='trained',
  ))
  config.batch_size = 256
  # Cross-entropy against (1 - e) one-hot + e / classes; the paper's is 0.
  config.label_smoothing = 0.0
  config.num_epochs = 74.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.seed = 0
  config.log_every_steps = 100
  config.eval_every_steps = -1  # -1: once an epoch
  config.checkpoint_every_steps = -1  # -1: once an epoch
  config.keep_checkpoints = 3
  # Batches copied to the devices ahead of the step that needs them.
  config.prefetch_to_device = 2
  # GPUs only: XLA's deterministic ops, so that a resumed run ends bit for bit
  # where an uninterrupted one does (XLA's GPU reductions and convolution
  # algorithms otherwise vary from run to run), at some cost in speed. The
  # CPU is deterministic either way.
  config.deterministic = False
  # A jax.profiler trace of a few steps into WORKDIR/profile (TensorBoard / xprof).
  config.profile = False
  config.profile_skip_steps = 5
  config.profile_num_steps = 5
  # Workdir of a trained run to copy layers from when starting fresh
  # (vgg_jax/warm_start.py); '' starts from random weights.
  config.init_from = ''
  # True where the config's learning rate only suits fine-tuning a trained run
  # (the paper's S = 384 and jittered models): training refuses to start
  # without init_from instead of silently training from scratch at that rate.
  config.requires_init_from = False
  # Evaluations after training, 'protocol[:scales]', run by experiments.sweep
  # (`vgg_jax.evaluate`); `vgg_jax.train` itself ignores the field. 'single' is
  # the centre crop; the paper's single-scale Table 3 is 'dense' at Q = S.
  config.evals = ('single', 'dense')
  return config


def to_json(config) -> dict:
  """A config as the JSON data `vgg_jax.train` saves in config.json (tuples as lists)."""
  return json.loads(config.to_json_best_effort())


def complete(saved: dict) -> dict:
  """A config in JSON form (e.g. an older run's config.json) with every field it
  lacks set to the schema's default: the value a run made before the field
  existed used. Fields the schema does not know stay as they are."""
  flat = traverse_util.flatten_dict(to_json(base_config()))
  flat.update(traverse_util.flatten_dict(saved))
  return traverse_util.unflatten_dict(flat)


def load_config_module(path: str) -> types.ModuleType:
  """The config file at `path` as a module, executed (configs are trusted code)."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _convert(key: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    lowered = text.strip().lower()
    if lowered in ('1', 'true', 'yes', 'on'):
      return True
    if lowered in ('0', 'false', 'no', 'off'):
      return False
    raise ValueError(f'config argument {key}={text!r} must be true or false')
  if default is None or isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f'config argument {key}={text!r} must be of type '
                     f'{type(default).__name__}') from None


def parse_arg(arg: str | None, *, positional: str | None = None,
              **defaults) -> ml_collections.ConfigDict:
  """Parses 'D,S=384,jitter' into the fields of `defaults`, typed like them.

  Args:
    arg: the string after the config file's ':' (None or '' keeps defaults).
    positional: the field a bare value that is not a boolean field sets (None:
      bare values are an error).
    **defaults: every accepted field with its default value; booleans may be
      given as bare names.
  """
  fields = dict(defaults)
  seen_positional = False
  for token in (t.strip() for t in (arg or '').split(',')):
    if not token:
      continue
    key, sep, value = token.partition('=')
    key = key.strip()
    if not sep:
      if isinstance(defaults.get(key), bool):
        fields[key] = True
        continue
      if positional is None or seen_positional:
        raise ValueError(f'config argument {token!r} is not KEY=VALUE or a known '
                         f'switch; known fields: {", ".join(defaults)}')
      key, value, seen_positional = positional, token, True
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}: known fields are '
                       f'{", ".join(defaults)}')
    fields[key] = _convert(key, value, defaults[key])
  return ml_collections.ConfigDict(fields)


def split_arg(arg: str | None, **sweep_fields) -> tuple[ml_collections.ConfigDict, str]:
  """Splits a sweep file's argument: (its own fields, the rest for the base config).

  `split_arg('runlocal,seeds=1', seeds=3)` -> ({seeds: 1}, 'runlocal').
  """
  own, rest = [], []
  for token in (t.strip() for t in (arg or '').split(',')):
    if token:
      (own if token.partition('=')[0].strip() in sweep_fields else rest).append(token)
  return parse_arg(','.join(own), **sweep_fields), ','.join(rest)
