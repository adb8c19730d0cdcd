"""Starting a run from another run's weights: the paper's "initialise from A" (§3.1).

The paper trains configuration A from random weights, then starts each deeper
net with A's first four conv layers and its three FC layers, the other layers
random. Positions match by name: conv1_1, conv2_1, conv3_1 and conv3_2 have
the same shapes in every configuration of Table 1 (stages 1-2 of A have one
conv, of B-E two; stage 3 of every net starts with two), and so do the FC
layers. A run of the same architecture (S = 384 from the S = 256 model, the
jittered model from S = 384) copies everything.

`copy_layers` is the pure part: (fresh variables, source variables, both
architectures) -> (variables, names copied). `apply_init_from` is the training
loop's one call: it reads `config.init_from`'s newest checkpoint and
config.json and places the copied arrays where the fresh ones were.
Batch-norm layers travel with their conv (bn3_2 with conv3_2), parameters and
running statistics alike, since a conv's weights are only meaningful with the
normalisation they were trained with.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import logging

from vgg_jax import checkpoints, config_schema
from vgg_jax import workdir as run_files
from vgg_jax.model import LayerSpec, config_layers

# §3.1: the layers a deeper net takes from a trained A.
PAPER_CONV_LAYERS = ('conv1_1', 'conv2_1', 'conv3_1', 'conv3_2')
FC_LAYERS = ('fc1', 'fc2', 'fc3')
# Fields of config.model that decide parameter shapes besides the conv layers.
SHAPE_FIELDS = ('batch_norm', 'fc_width', 'head')


def _norm_of(conv_name: str) -> str:
  return conv_name.replace('conv', 'bn')


def layers_to_copy(source_layers: Sequence[LayerSpec],
                   target_layers: Sequence[LayerSpec]) -> Optional[tuple[str, ...]]:
  """Conv/FC layer names to copy, or None for everything (same architecture)."""
  if list(source_layers) == list(target_layers):
    return None
  target_names = {spec.name for spec in target_layers}
  source_names = {spec.name for spec in source_layers}
  wanted = [name for name in PAPER_CONV_LAYERS if name in target_names]
  missing = [name for name in wanted if name not in source_names]
  if missing:
    raise ValueError(f'the source network has no {", ".join(missing)}: warm start copies '
                     f'{", ".join(PAPER_CONV_LAYERS)} and the FC layers by position')
  return (*wanted, *FC_LAYERS)


def network_order(layers: Sequence[LayerSpec]):
  """A sort key putting names in forward order: conv1_1, bn1_1, ..., fc3."""
  order = [n for spec in layers for n in (spec.name, _norm_of(spec.name))] + list(FC_LAYERS)
  return lambda name: (order.index(name) if name in order else len(order), name)


def _shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def copy_layers(fresh: dict, source: dict, source_layers: Sequence[LayerSpec],
                target_layers: Sequence[LayerSpec]) -> tuple[dict, list[str]]:
  """`fresh` with the warm-start layers taken from `source`; pure.

  Args:
    fresh: one variable collection of the new model ({'conv1_1': {...}, ...},
      e.g. its params or batch_stats).
    source: the same collection of the trained model.
    source_layers, target_layers: the two conv architectures
      (`vgg_jax.model.resolve_layers`).

  Returns:
    (a new dict: source's arrays for the copied layers, fresh's otherwise;
    the names of the copied top-level entries, in fresh's order).

  Raises:
    ValueError: a copied layer is missing from the source or has another
      shape there (another width, kernel size, head or number of classes).
  """
  names = layers_to_copy(source_layers, target_layers)
  if names is None:
    keys = list(fresh)
  else:
    wanted = set(names) | {_norm_of(n) for n in names if n.startswith('conv')}
    keys = [k for k in fresh if k in wanted]
  keys.sort(key=network_order(target_layers))
  absent = [key for key in keys if key not in source]
  if absent:
    raise ValueError(f'layer {absent[0]} is not in the source run (it has '
                     f'{", ".join(sorted(source))})')
  # Weight layers first in the message: their shapes say what differs.
  differ = sorted((key for key in keys if _shapes(fresh[key]) != _shapes(source[key])),
                  key=lambda key: key.startswith('bn'))
  if differ:
    key = differ[0]
    want, have = _shapes(fresh[key]), _shapes(source[key])
    detail = '; '.join(f'{key}{p}: {have.get(p, "missing")} in the source, {s} here'
                       for p, s in want.items() if have.get(p) != s)
    raise ValueError(f'layer shapes differ: {detail or key}'
                     + (f' (and {len(differ) - 1} more layers)' if len(differ) > 1 else ''))
  result = dict(fresh)
  result.update({key: source[key] for key in keys})
  return result, list(keys)


def load_source(workdir: str) -> tuple[dict, Any, int]:
  """(variables as numpy, model config, step) of a run's newest checkpoint."""
  saved = run_files.read_json(os.path.join(workdir, run_files.CONFIG_FILE))
  if saved is None:
    raise FileNotFoundError(f'config.init_from={workdir}: no config.json there; pass the '
                            'workdir of a finished vgg_jax.train run')
  model_cfg = config_schema.complete(saved)['model']
  steps = checkpoints.available_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'config.init_from={workdir}: the run has no complete '
                            'checkpoint yet')
  return checkpoints.restore_variables(workdir, max(steps)), model_cfg, max(steps)


def _describe(model_cfg) -> str:
  return ', '.join(f'{k}={model_cfg[k]}' for k in
                   ('variant', 'depths', 'kernel_size', 'width', *SHAPE_FIELDS))


def _place_like(value: np.ndarray, like: jax.Array) -> jax.Array:
  """A host array as a global array with `like`'s sharding, dtype and shape;
  every process reads the same checkpoint, so each fills its own shards."""
  value = np.asarray(value, dtype=like.dtype)
  return jax.make_array_from_callback(like.shape, like.sharding, lambda index: value[index])


def apply_init_from(config, state, model):
  """`state` with layers copied from the run in `config.init_from` (if set).

  Called on fresh states only: a resumed run continues from its own
  checkpoint. The fresh state's arrays stay where nothing is copied.
  """
  source_dir = config.init_from
  if not source_dir:
    return state
  variables, source_model, step = load_source(source_dir)
  target_model = {k: getattr(model, k) for k in ('variant', 'depths', 'kernel_size',
                                                 'width', *SHAPE_FIELDS)}
  source_layers, target_layers = config_layers(source_model), model.layers()
  fresh = {'params': state.params, 'batch_stats': state.batch_stats}
  placed, copied = {}, []
  try:
    for collection, tree in fresh.items():
      merged, names = copy_layers(tree, variables.get(collection, {}), source_layers,
                                  target_layers)
      placed[collection] = {k: (jax.tree_util.tree_map(_place_like, v, tree[k])
                                if k in names else v) for k, v in merged.items()}
      copied += [n for n in names if n not in copied]
  except ValueError as e:
    raise ValueError(
        f'config.init_from={source_dir} cannot warm-start this model: {e}. The source '
        f'is ({_describe(source_model)}), this run ({_describe(target_model)}); warm '
        'start needs the same width, fc_width, kernel size, head, batch_norm and '
        'classes: train the source with this run\'s model settings') from None
  copied.sort(key=network_order(target_layers))
  fresh_names = sorted((k for k in state.params if k not in copied),
                       key=network_order(target_layers))
  logging.info('init_from %s (step %d, variant %s): copied %s; fresh: %s', source_dir, step,
               source_model['variant'], ', '.join(copied) or 'nothing',
               ', '.join(fresh_names) or 'nothing')
  return state.replace(params=placed['params'], batch_stats=placed['batch_stats'])
