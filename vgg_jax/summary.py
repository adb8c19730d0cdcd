"""Reports on a `VGG`: a Keras-style summary, Table 2, and a picture of the architecture.

Kept apart from `vgg_jax.model` so that the library holds only the modules: this
file prints, counts and draws (matplotlib is imported only when drawing), and
importing it has no side effects. `python -m vgg_jax.model` is its command line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

from vgg_jax import workdir as run_files
from vgg_jax.model import CONFIGS, VGG


def count_params(params) -> int:
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))


def abstract_variables(model: VGG, image_size: Optional[int] = None):
  """Variables' shapes without allocating them (eval_shape of init)."""
  size = image_size or model.image_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))


def _forward_order(model: VGG) -> list[str]:
  """Names of the layers with an output worth a row, in forward order."""
  order = []
  for spec in model.layers():
    order += [spec.name, spec.name.replace('conv', 'bn')]
    if spec.name == 'conv1_1':
      order.append('lrn')
  return order + ['fc1', 'fc2', 'fc3']


def layer_table(model: VGG, image_size: Optional[int] = None):
  """Rows (name, output shape, params, MACs) for one image, in forward order."""
  size = image_size or model.image_size
  variables = abstract_variables(model, size)
  params = variables['params']
  order = _forward_order(model)

  # Layers are picked by name: the rows are the layers `_forward_order` names.
  def capture(mdl, _):
    return mdl.name in order

  _, state = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1, size, size, 3)),
                            capture_intermediates=capture, mutable=['intermediates']),
      variables)
  rows = []
  for name in sorted(state['intermediates'], key=order.index):
    out = state['intermediates'][name]
    shape = tuple(out['__call__'][0].shape[1:])
    p = params.get(name, {})
    n_params = count_params(p)
    if 'kernel' in p:
      kernel = p['kernel'].shape
      positions = math.prod(shape[:-1]) if len(shape) > 1 else 1
      macs = positions * math.prod(kernel)
    else:
      macs = 0
    rows.append((name, shape, n_params, macs))
  return rows


def train_flops_per_image(model: VGG, image_size: Optional[int] = None) -> int:
  """A training step's FLOPs for one image by the layer table: the forward pass's
  2 x MACs, three times (the backward pass costs twice the forward)."""
  return 3 * 2 * sum(row[3] for row in layer_table(model, image_size))


def summary(model: VGG, image_size: Optional[int] = None) -> str:
  """A Keras-style `model.summary()`: per-layer output shape and parameters."""
  rows = layer_table(model, image_size)
  lines = [f'VGG-{model.variant}  (input {image_size or model.image_size}x'
           f'{image_size or model.image_size}x3, {model.num_classes} classes)',
           f'{"layer":<12}{"output shape":<22}{"params":>14}{"MMACs":>12}',
           '-' * 60]
  for name, shape, n_params, macs in rows:
    lines.append(f'{name:<12}{str(shape):<22}{n_params:>14,}{macs / 1e6:>12,.1f}')
  total = sum(r[2] for r in rows)
  macs = sum(r[3] for r in rows)
  lines += ['-' * 60, f'{"total":<34}{total:>14,}{macs / 1e6:>12,.1f}',
            f'forward cost: {macs / 1e9:.2f} GMACs per image']
  return '\n'.join(lines)


def table2(num_classes: int = 1000, image_size: int = 224) -> str:
  """Table 2 of the paper with exact counts, plus forward GMACs per image."""
  lines = [f'{"config":<8}{"weight layers":>14}{"params":>16}{"GMACs":>8}']
  for variant in CONFIGS:
    model = VGG(variant=variant, num_classes=num_classes, image_size=image_size)
    rows = layer_table(model)
    weight_layers = sum(1 for r in rows if r[0].startswith(('conv', 'fc')))
    lines.append(f'{variant:<8}{weight_layers:>14}{sum(r[2] for r in rows):>16,}'
                 f'{sum(r[3] for r in rows) / 1e9:>8.2f}')
  return '\n'.join(lines)


# --------------------------------------------------------------------------
# The architecture picture.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
  """One row of the picture: a layer in the paper's notation and its output map.

  kind: 'input', 'conv', 'lrn', 'maxpool', 'gap', 'fc' or 'softmax'.
  side: the output map's side (1 for vectors); channels: its depth.
  """
  label: str
  kind: str
  side: int
  channels: int
  kernel_size: int = 0


def architecture(model: VGG, image_size: Optional[int] = None) -> list[Block]:
  """The layers as Table 1 of the paper lists them, pools and soft-max included.

  Convs read `conv<kernel>-<channels>` (so C's 1x1 convs are `conv1-256`), which
  is what tells the configurations apart; ReLUs are left out as in the paper,
  and so is batch norm (not in the paper: `plot` marks it on the conv boxes).
  """
  side = image_size or model.image_size
  blocks = [Block(f'input ({side}x{side} RGB image)', 'input', side, 3)]
  stage = 1
  for spec in model.layers():
    if spec.stage != stage:
      side //= 2
      blocks.append(Block('maxpool', 'maxpool', side, blocks[-1].channels))
      stage = spec.stage
    blocks.append(Block(f'conv{spec.kernel_size}-{spec.features}', 'conv', side,
                        spec.features, spec.kernel_size))
    if model.use_lrn and spec.name == 'conv1_1':
      blocks.append(Block('LRN', 'lrn', side, spec.features))
  side //= 2
  blocks.append(Block('maxpool', 'maxpool', side, blocks[-1].channels))
  if model.head == 'gap':
    blocks.append(Block('global avgpool', 'gap', 1, blocks[-1].channels))
    widths = [model.fc_width, model.num_classes]
  else:
    widths = [model.fc_width, model.fc_width, model.num_classes]
  blocks += [Block(f'FC-{w}', 'fc', 1, w) for w in widths]
  return blocks + [Block('soft-max', 'softmax', 1, model.num_classes)]


def architecture_labels(model: VGG, image_size: Optional[int] = None) -> list[str]:
  """The picture's labels in paper order, e.g. ['input (...)', 'conv3-64', ...]."""
  return [block.label for block in architecture(model, image_size)]


# Colours by what differs between configs: kernel size first.
_COLOURS = {'conv3': '#4C72B0', 'conv1': '#DD8452', 'conv5': '#2A4A7F',
            'conv7': '#1B2F52', 'lrn': '#C44E52', 'maxpool': '#A0A0A0',
            'gap': '#C8C8C8', 'fc': '#55A868', 'softmax': '#8C8C8C',
            'input': '#DDDDDD', 'bn': '#B9A9E0'}
_MAX_WIDTH = 3.6   # inches: the input's side
_MIN_WIDTH = 0.12  # inches: a 1x1 map stays visible
_GAP = 0.07        # inches between rows


def _colour(block: Block) -> str:
  return _COLOURS[f'conv{block.kernel_size}' if block.kind == 'conv' else block.kind]


def _box_width(block: Block, image_side: int) -> float:
  """Width in inches, proportional to the map's side: the maps visibly shrink."""
  return max(_MIN_WIDTH, _MAX_WIDTH * block.side / image_side)


def _box_height(block: Block) -> float:
  """Height in inches, growing with log2(channels): depth doubling reads as a step."""
  if block.kind in ('maxpool', 'gap'):
    return 0.16
  if block.kind in ('lrn', 'softmax'):
    return 0.14
  return 0.05 + 0.03 * math.log2(max(block.channels, 2))


def _shape_text(block: Block) -> str:
  if block.kind in ('gap', 'fc'):
    return f'{block.channels}'
  return f'{block.side}x{block.side}x{block.channels}'


def _legend_entries(blocks: list[Block], batch_norm: bool) -> list[tuple[str, str]]:
  """(colour, text) for the kinds of layer this picture shows, in paper order."""
  names = {'conv1': '1x1 conv', 'conv3': '3x3 conv', 'conv5': '5x5 conv',
           'conv7': '7x7 conv', 'lrn': 'LRN', 'maxpool': '2x2 max-pool',
           'gap': 'global average pool', 'fc': 'fully connected'}
  keys = []
  for block in blocks:
    key = f'conv{block.kernel_size}' if block.kind == 'conv' else block.kind
    if key in names and key not in keys:
      keys.append(key)
  keys.sort(key=list(names).index)
  entries = [(_COLOURS[k], names[k]) for k in keys]
  if batch_norm:
    entries.append((_COLOURS['bn'], 'batch norm (after each conv)'))
  return entries


def _draw_block(ax, block: Block, top: float, image_side: int, batch_norm: bool,
                previous_width: float) -> float:
  """Draws one row centred on x = 0 below `top`; returns its height."""
  from matplotlib.patches import Polygon, Rectangle

  width, height = _box_width(block, image_side), _box_height(block)
  colour = _colour(block)
  if block.kind == 'maxpool':
    # A funnel from the previous map's width to the halved one.
    ax.add_patch(Polygon([(-previous_width / 2, top), (previous_width / 2, top),
                          (width / 2, top - height), (-width / 2, top - height)],
                         closed=True, facecolor=colour, edgecolor='none'))
  else:
    hatch = '////' if block.kind == 'conv' and block.kernel_size == 1 else None
    ax.add_patch(Rectangle((-width / 2, top - height), width, height,
                           facecolor=colour, edgecolor='white' if hatch else 'none',
                           hatch=hatch, linewidth=0))
    if batch_norm and block.kind == 'conv':
      ax.add_patch(Rectangle((-width / 2, top - height), width, 0.035,
                             facecolor=_COLOURS['bn'], edgecolor='none'))
  middle = top - height / 2
  edge = max(width, previous_width if block.kind == 'maxpool' else 0) / 2
  bold = (block.kind == 'conv' and block.kernel_size != 3) or block.kind == 'lrn'
  ax.text(edge + 0.1, middle, block.label, ha='left', va='center', fontsize=8.5,
          fontweight='bold' if bold else 'normal')
  if block.kind not in ('softmax', 'lrn'):
    ax.text(-edge - 0.1, middle, _shape_text(block), ha='right', va='center',
            fontsize=7, color='#555555')
  return height


def plot(model: VGG, path: str, image_size: Optional[int] = None) -> None:
  """Draws the architecture top to bottom, as Table 1 lists it, to a PNG.

  Box widths follow the maps' side and heights log2 of their channels, so the
  picture shows the maps shrinking at each max-pool while channels grow; 1x1
  convs are orange and hatched, LRN red, other kernel sizes darker blue.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.patches import Patch

  blocks = architecture(model, image_size)
  image_side = blocks[0].side
  total_height = sum(_box_height(b) + _GAP for b in blocks)
  fig_width, margin_top, margin_bottom = _MAX_WIDTH + 4.6, 0.6, 0.2
  fig_height = total_height + margin_top + margin_bottom
  fig = plt.figure(figsize=(fig_width, fig_height))
  ax = fig.add_axes((0, 0, 1, 1))
  ax.set_xlim(-fig_width / 2 + 0.6, fig_width / 2 + 0.6)
  ax.set_ylim(-total_height - margin_bottom, margin_top)
  ax.axis('off')

  top, previous_width = 0.0, _box_width(blocks[0], image_side)
  for block in blocks:
    top -= _draw_block(ax, block, top, image_side, model.batch_norm,
                       previous_width) + _GAP
    previous_width = _box_width(block, image_side)

  weight_layers = sum(1 for b in blocks if b.kind in ('conv', 'fc'))
  total = count_params(abstract_variables(model, image_size)['params'])
  ax.text(-fig_width / 2 + 0.75, margin_top - 0.2,
          f'VGG-{model.variant}: {weight_layers} weight layers, {total:,} parameters',
          ha='left', va='top', fontsize=11, fontweight='bold')
  handles = [Patch(facecolor=c, label=t, hatch='////' if t == '1x1 conv' else None,
                   edgecolor='white') for c, t in _legend_entries(blocks, model.batch_norm)]
  ax.legend(handles=handles, loc='center right', fontsize=8, frameon=False,
            handleheight=1.2)
  with run_files.atomic_file(path, binary=True) as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)
