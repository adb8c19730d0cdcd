"""VGG's convolution without XLA CPU's slow paths (pooling: `vgg_jax.pooling`).

Three routes for an NHWC convolution with stride 1 (`conv_general_dilated`):

* float32 with non-negative pads: oneDNN's (`vgg_jax.onednn`), where it is
  built. XLA computes each weight gradient as transposes around an Eigen
  convolution; oneDNN reads NHWC as it is and runs thin convolutions two to
  four times as fast (the gradients of 128x32x32x8 -> 8: 3.1 against 11.2 ms;
  of 64x16x16x128 -> 128: 42 against 59 ms), and maps smaller than the kernel
  (the 2x2 last stage of a 32x32 input) faster than patches (the gradients of
  128x2x2x128 -> 128: 2.0 against 2.9 ms; 64x2x2x512 -> 512: 16 against 23 ms);
* elsewhere, a kernel larger than the feature map: image patches and one
  matmul. XLA took 997 ms forward for 64x2x2x512 -> 512 where patches take
  14 ms (963 against 41 ms for both gradients);
* the rest (bfloat16, negative pads, or no oneDNN): XLA's own, which beat
  every rewrite in jax tried here (shifted matmuls, patches, custom VJPs:
  experiments/PERFORMANCE.md).

(Per layer by `python -m experiments.bench_ops` and one-off scripts on a
2-core AMD EPYC with AVX-512, 2026-12-01 and 2026-12-04.) The results equal
XLA's convolution to float rounding (tests/test_cpu_ops.py checks values and
gradients). `vgg_jax.model` uses them on the CPU backend only.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

from vgg_jax import onednn

# Set to 1, the train step keeps XLA's default CPU options (YNNPACK fusions on);
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


def _is_nhwc_hwio(lhs, rhs, dimension_numbers) -> bool:
  canonical = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == canonical


def _onednn_takes(pads, *operands) -> bool:
  """Whether oneDNN convolves these: float32, non-negative pads, the library built."""
  return (all(a.dtype == jnp.float32 for a in operands) and min(min(p) for p in pads) >= 0
          and onednn.available())


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
  if _onednn_takes(pads, lhs, rhs):
    return onednn.conv(lhs, rhs, pads)
  if height < kernel_hw[0] or width < kernel_hw[1]:
    return patches_conv(lhs, rhs, pads, precision)
  return plain()


def conv_bias_relu(lhs, rhs, bias, padding):
  """relu(conv(lhs, rhs) + bias), NHWC and HWIO, stride 1 (a VGG layer without
  batch norm): where `conv_general_dilated` would take oneDNN's convolution, one
  oneDNN call each way (`onednn.conv_bias_relu`, two passes over the
  activations fewer), else `conv_general_dilated`, the bias and the ReLU."""
  pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2])
  if _onednn_takes(pads, lhs, rhs, bias):
    return onednn.conv_bias_relu(lhs, rhs, bias, pads)
  out = conv_general_dilated(lhs, rhs, (1, 1), pads, dimension_numbers=_LAYOUT)
  return jax.nn.relu(out + bias)


def on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def default_conv_fn():
  """The convolution for the current backend: the fast paths on the CPU only."""
  return conv_general_dilated if on_cpu() else lax.conv_general_dilated


def compiler_options() -> dict:
  """XLA options for compiling the training step on the current backend.

  On the CPU, XLA's YNNPACK fusions slow VGG's training step: with them off,
  VGG-D went from 0.93x to about 1.0x PyTorch and VGG-A from 1.01x to 1.2x
  (experiments/PERFORMANCE.md). Per compilation, not process-wide.

  XLA's multi-process CPU client (`jax.distributed` on CPUs) ignores the
  option: two processes reach what one process reaches with YNNPACK fusions
  on (to float rounding), whether it is set or not. A one-process run that has
  to match such a run sets VGG_JAX_XLA_CPU_DEFAULTS=1.
  """
  if not on_cpu() or os.environ.get(KEEP_XLA_DEFAULTS_ENV, '0') not in ('', '0'):
    return {}
  return {'xla_cpu_experimental_ynn_fusion_type': ''}


def convolution_library(dtype=jnp.float32) -> str:
  """Whose convolutions a model of this dtype runs on the current backend (for the logs)."""
  if on_cpu() and jnp.dtype(dtype) == jnp.float32 and onednn.available():
    return 'oneDNN'
  return 'XLA'
