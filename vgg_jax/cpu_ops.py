"""VGG's convolution without XLA CPU's slow paths (pooling: `vgg_jax.pooling`).

Four routes for an NHWC convolution with stride 1 (`conv_general_dilated`):

* a map whose every input position lies in every output position's window
  (the last stage's 2x2 maps of a 32x32 input under a 3x3 kernel): only the
  kernel taps that meet the map, 4 of the 9 at 2x2, where oneDNN's
  convolutions, like PyTorch's, run all 9 at every position. While the matrix
  of the kernel's taps stays within 8 MB (a 2x2 map of up to 362 channels),
  one matmul by it (`window_matmul_conv`); above, where assembling it sets the
  pace, one matmul per tap over the positions the tap joins
  (`tap_matmul_conv`). Forward and both gradients of 64x2x2x512 -> 512: the
  matrix 11.7 against oneDNN's 19.4 ms on the AMD EPYC; in VGG-D's step on a
  2-core Intel Xeon, the taps made the whole step 9 % faster than the matrix.
  Not in bfloat16 where oneDNN has bfloat16 kernels: XLA's CPU matmul and the
  matrix's assembly run in float32 there, and oneDNN's kernels (with the kernel
  gradient as one matmul) made VGG-D's bfloat16 step at width 1/2 5 % faster;
* float32 with non-negative pads: oneDNN's (`vgg_jax.onednn`), where it is
  built; bfloat16 too on CPUs where oneDNN has bfloat16 kernels (AVX-512 BF16,
  AMX: `onednn.bfloat16_available`), whose kernel gradients of maps of at most
  16 positions (4x4) are one oneDNN matmul of the image patches, 2.7-3 times
  as fast as oneDNN's own (onednn_conv.cc). XLA computes each weight gradient as
  transposes around an Eigen convolution; oneDNN reads NHWC as it is and runs
  thin convolutions two to four times as fast (the gradients of 128x32x32x8
  -> 8: 3.1 against 11.2 ms; of 64x16x16x128 -> 128: 42 against 59 ms), and
  maps smaller than the kernel faster than patches;
* elsewhere, a kernel larger than the feature map: image patches and one
  matmul. XLA took 997 ms forward for 64x2x2x512 -> 512 where patches take
  14 ms (963 against 41 ms for both gradients);
* the rest (negative pads on larger maps, bfloat16 without oneDNN's bfloat16
  kernels, or no oneDNN): XLA's own, which beat every rewrite in jax tried
  here (shifted matmuls, patches, custom VJPs: experiments/PERFORMANCE.md).

(Per layer by `python -m experiments.bench_ops` and one-off scripts on a
2-core AMD EPYC with AVX-512, 2026-12-01, 2026-12-04 and 2026-12-05.) The
results equal XLA's convolution to float rounding (tests/test_cpu_ops.py
checks values and gradients). `vgg_jax.model` uses them on the CPU backend only.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
from jax import lax

from vgg_jax import onednn

# Set to 1, the train step keeps XLA's default CPU options (all YNNPACK fusions);
# see compiler_options.
KEEP_XLA_DEFAULTS_ENV = 'VGG_JAX_XLA_CPU_DEFAULTS'
_LAYOUT = ('NHWC', 'HWIO', 'NHWC')


def _pads(padding, in_hw, kernel_hw):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, (1, 1), padding))
  return tuple(tuple(p) for p in padding)


def patches(lhs, kernel_hw, pads):
  """Image patches (stride 1), features ordered (kh, kw, in) like an HWIO kernel's rows.

  Made of shifted slices rather than `lax.conv_general_dilated_patches`, whose
  features are ordered (in, kh, kw) and whose gradient is a convolution on
  the small map: the slow path again (about 350 ms of VGG-D's step at 32x32
  in a profile).
  The gradient of slices is padding, which costs nothing to speak of.
  """
  kh, kw = kernel_hw
  padded = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0),
                                                   (0, 0, 0)))
  ho, wo = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
  return jnp.concatenate([padded[:, i:i + ho, j:j + wo, :]
                          for i in range(kh) for j in range(kw)], axis=-1)


def patches_conv(lhs, rhs, pads, precision=None):
  """The convolution as image patches times the flattened kernel."""
  kh, kw, cin, cout = rhs.shape
  return jnp.dot(patches(lhs, (kh, kw), pads), rhs.reshape(kh * kw * cin, cout),
                 precision=precision)


# Above this, assembling the window matrix costs more than the taps it saves
# (2026-12-05, 2-core Intel Xeon, forward and both gradients alone: 512
# channels of a 2x2 map, a 16 MB matrix, 17.0 ms against 6.2 for the taps,
# `python -m experiments.bench_ops`; 256 channels, 4 MB, 2.5 against 2.6 ms in
# a one-off script).
_WINDOW_MATRIX_MAX_BYTES = 1 << 23


def _output_hw(in_hw, kernel_hw, pads) -> tuple[int, int]:
  return tuple(size + lo + hi - k + 1 for size, k, (lo, hi) in zip(in_hw, kernel_hw, pads))


def _every_position_in_every_window(in_hw, kernel_hw, pads) -> bool:
  """Whether each output position's window covers every input position, so that
  `window_matmul_conv`'s matrix holds no zero block."""
  for size, k, (lo, _), out in zip(in_hw, kernel_hw, pads, _output_hw(in_hw, kernel_hw, pads)):
    # Input q meets output p at tap q - p + lo: from lo - (out - 1) to size - 1 + lo.
    if out < 1 or lo < out - 1 or size + lo > k:
      return False
  return True


def _small_map_conv(lhs, rhs, pads):
  """`window_matmul_conv` or `tap_matmul_conv` where every input position lies
  in every output position's window, except in bfloat16 that oneDNN takes;
  else None."""
  in_hw, kernel_hw = lhs.shape[1:3], rhs.shape[:2]
  if not _every_position_in_every_window(in_hw, kernel_hw, pads):
    return None
  if lhs.dtype == jnp.bfloat16 and _onednn_takes(pads, lhs, rhs):
    return None
  matrix_bytes = (math.prod(in_hw) * math.prod(_output_hw(in_hw, kernel_hw, pads)) *
                  math.prod(rhs.shape[2:]) * rhs.dtype.itemsize)
  return window_matmul_conv if matrix_bytes <= _WINDOW_MATRIX_MAX_BYTES else tap_matmul_conv


def tap_matmul_conv(lhs, rhs, pads, precision=None):
  """The convolution as one matmul per kernel tap, of the input positions the
  tap reaches, each product padded to the output's positions and summed. Only
  the taps that meet the map cost anything; autodiff's gradients are the same
  matmuls transposed, with no matrix to assemble."""
  _, height, width, _ = lhs.shape
  (top, _), (left, _) = pads
  out_h, out_w = _output_hw((height, width), rhs.shape[:2], pads)
  out = None
  for ky in range(rhs.shape[0]):
    for kx in range(rhs.shape[1]):
      # Output rows y0..y1 read input rows y0 + ky - top ..; likewise columns.
      y0, y1 = max(0, top - ky), min(out_h, height + top - ky)
      x0, x1 = max(0, left - kx), min(out_w, width + left - kx)
      if y0 >= y1 or x0 >= x1:
        continue
      taken = lhs[:, y0 + ky - top:y1 + ky - top, x0 + kx - left:x1 + kx - left, :]
      product = jnp.pad(jnp.dot(taken, rhs[ky, kx], precision=precision),
                        ((0, 0), (y0, out_h - y1), (x0, out_w - x1), (0, 0)))
      out = product if out is None else out + product
  return out


def _window_taps(in_hw, kernel_hw, pads):
  """[input position][output position] -> the (ky, kx) tap joining them, both
  positions in row-major order, and the output's height and width."""
  (top, _), (left, _) = pads
  out_h, out_w = _output_hw(in_hw, kernel_hw, pads)
  taps = [[(qy - py + top, qx - px + left) for py in range(out_h) for px in range(out_w)]
          for qy in range(in_hw[0]) for qx in range(in_hw[1])]
  return taps, out_h, out_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def window_matmul_conv(lhs, rhs, pads, precision=None):
  """The convolution as lhs [N, H*W*C] times the block matrix whose block
  (q, p) is the kernel's tap joining input position q to output position p;
  only where every pair has one (`_every_position_in_every_window`). Each
  gradient is one matmul too, the kernel's the blocks of lhs^T dy summed tap by
  tap: a custom VJP, because autodiff's gradients of the assembly took 20-26 ms
  where these take 11.7 (64x2x2x512 -> 512, forward and both gradients)."""
  return _window_matmul_forward(lhs, rhs, pads, precision)[0]


def _window_matmul_forward(lhs, rhs, pads, precision):
  n, height, width, _ = lhs.shape
  taps, out_h, out_w = _window_taps((height, width), rhs.shape[:2], pads)
  # Assembled apart from the matmul, which XLA would otherwise fuse it into (the
  # forward alone 16 against 5.2 ms); kept for the input gradient.
  matrix = lax.optimization_barrier(jnp.concatenate(
      [jnp.concatenate([rhs[tap] for tap in row], axis=1) for row in taps], axis=0))
  out = jnp.dot(lhs.reshape(n, -1), matrix, precision=precision)
  return out.reshape(n, out_h, out_w, rhs.shape[3]), (lhs, rhs, matrix)


def _window_matmul_backward(pads, precision, residuals, dy):
  lhs, rhs, matrix = residuals
  n, height, width, cin = lhs.shape
  kh, kw = rhs.shape[:2]
  taps, _, _ = _window_taps((height, width), (kh, kw), pads)
  dy = dy.reshape(n, -1)
  dx = lax.dot_general(dy, matrix, (((1,), (1,)), ((), ())), precision=precision)
  blocks = lax.dot_general(lhs.reshape(n, -1), dy, (((0,), (0,)), ((), ())),
                           precision=precision)
  blocks = blocks.reshape(height * width, cin, len(taps[0]), -1)
  summed = {}
  for q, row in enumerate(taps):
    for p, tap in enumerate(row):
      block = blocks[q, :, p, :]
      summed[tap] = block if tap not in summed else summed[tap] + block
  zero = jnp.zeros(rhs.shape[2:], blocks.dtype)  # a tap that meets no pair
  dk = jnp.stack([jnp.stack([summed.get((ky, kx), zero) for kx in range(kw)])
                  for ky in range(kh)])
  return dx.reshape(lhs.shape), dk


window_matmul_conv.defvjp(_window_matmul_forward, _window_matmul_backward)


def _is_nhwc_hwio(lhs, rhs, dimension_numbers) -> bool:
  canonical = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == canonical


def _onednn_takes(pads, *operands) -> bool:
  """Whether oneDNN convolves these: non-negative pads, the library built, and
  float32, or bfloat16 where oneDNN has bfloat16 kernels for this CPU."""
  dtypes = {jnp.dtype(a.dtype) for a in operands}
  return (min(min(p) for p in pads) >= 0 and len(dtypes) == 1
          and onednn.convolves(dtypes.pop()))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated` with the CPU fast paths; same signature and result."""
  plain = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  ones = (None, (1, 1), [1, 1])
  if (lhs.ndim != 4 or tuple(window_strides) != (1, 1) or lhs_dilation not in ones
      or rhs_dilation not in ones or feature_group_count != 1 or batch_group_count != 1
      or preferred_element_type is not None
      or not _is_nhwc_hwio(lhs, rhs, dimension_numbers)):
    return plain()
  kernel_hw = rhs.shape[:2]
  height, width = lhs.shape[1:3]
  pads = _pads(padding, (height, width), kernel_hw)
  small_map_conv = _small_map_conv(lhs, rhs, pads)
  if small_map_conv is not None:
    return small_map_conv(lhs, rhs, pads, precision)
  if _onednn_takes(pads, lhs, rhs):
    return onednn.conv(lhs, rhs, pads)
  if height < kernel_hw[0] or width < kernel_hw[1]:
    return patches_conv(lhs, rhs, pads, precision)
  return plain()


def conv_bias_relu(lhs, rhs, bias, padding):
  """relu(conv(lhs, rhs) + bias), NHWC and HWIO, stride 1 (a VGG layer without
  batch norm), in lhs's and rhs's dtype: where `conv_general_dilated` would take
  oneDNN's convolution, one oneDNN call each way (`onednn.conv_bias_relu`, two
  passes over the activations fewer; a float32 bias added before the one
  rounding), else `conv_general_dilated`, the bias in that dtype and the ReLU."""
  pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2])
  if (_onednn_takes(pads, lhs, rhs) and bias.dtype == jnp.float32
      and _small_map_conv(lhs, rhs, pads) is None):
    return onednn.conv_bias_relu(lhs, rhs, bias, pads)
  out = conv_general_dilated(lhs, rhs, (1, 1), pads, dimension_numbers=_LAYOUT)
  return jax.nn.relu(out + bias.astype(out.dtype))


def on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def default_conv_fn():
  """The convolution for the current backend: the fast paths on the CPU only."""
  return conv_general_dilated if on_cpu() else lax.conv_general_dilated


# XLA's CPU options for the step: YNNPACK for single matmuls only.
STEP_YNN_FUSIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'


def compiler_options() -> dict:
  """XLA options for compiling the training step on the current backend.

  On the CPU, XLA's default YNNPACK fusions (of reductions among others) slowed
  VGG's training step: with all of them off, VGG-D went from 0.93x to about
  1.0x PyTorch and VGG-A from 1.01x to 1.2x (2026-11-29). Its single matmuls
  stay: the window matrix's took half the time in YNNPACK that they took in
  XLA's own dot (64x2x2x512 -> 512, forward and both gradients: 13 against
  26 ms), and the step without them is no faster (experiments/PERFORMANCE.md,
  2026-12-05). Per compilation, not process-wide.

  XLA's multi-process CPU client (`jax.distributed` on CPUs) ignores the
  option: two processes reach what one process reaches with XLA's defaults
  (to float rounding), whether it is set or not. A one-process run that has
  to match such a run sets VGG_JAX_XLA_CPU_DEFAULTS=1.
  """
  if not on_cpu() or os.environ.get(KEEP_XLA_DEFAULTS_ENV, '0') not in ('', '0'):
    return {}
  return {'xla_cpu_experimental_ynn_fusion_type': STEP_YNN_FUSIONS}


def convolution_library(dtype=jnp.float32) -> str:
  """Whose convolutions a model of this dtype runs on the current backend (for the logs)."""
  if not (on_cpu() and onednn.convolves(dtype)):
    return 'XLA'
  return 'oneDNN' if jnp.dtype(dtype) == jnp.float32 else 'oneDNN (bfloat16)'
