"""An independent PyTorch timing of VGG training steps: the second opinion on speed.

    python -m experiments.torch_reference --variant=D --batch_norm --width=0.125 \
        --fc_width=128 --batch_size=128 [--threads=2] [--steps=5] [--windows=5]

Builds the configuration from the paper's Table 1 on its own (no vgg_jax code),
trains on a random batch with SGD (momentum 0.9, weight decay 5e-4) and
cross-entropy, and prints JSON: img/s of the better memory format (contiguous
NCHW or channels-last; each the median of `windows` windows of `steps` steps),
both formats' rates, the thread count and the versions. `vgg_jax.benchmark
--compare=torch` times the same network side by side with vgg_jax; this script
exists so that its PyTorch number can be checked by code that shares nothing
with it. For the like-for-like number, run it with vgg_jax's malloc tunables
(`vgg_jax/malloc_tunables.py`), from which PyTorch gains as much as vgg_jax:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:\
glibc.malloc.trim_threshold=17179869184 python -m experiments.torch_reference ...
"""

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

# Table 1: 3x3 convs per stage, and which stages end with C's 1x1 conv.
DEPTHS = {'A': (1, 1, 2, 2, 2), 'B': (2, 2, 2, 2, 2), 'C': (2, 2, 2, 2, 2),
          'D': (2, 2, 3, 3, 3), 'E': (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)


def vgg(variant: str, width: float, fc_width: int, num_classes: int, batch_norm: bool,
        image_size: int, dropout: float) -> nn.Sequential:
  layers, channels = [], 3
  for stage, (depth, base) in enumerate(zip(DEPTHS[variant], WIDTHS), start=1):
    out = max(1, round(base * width))
    kernels = [3] * depth + ([1] if variant == 'C' and stage >= 3 else [])
    for k in kernels:
      layers.append(nn.Conv2d(channels, out, k, padding=k // 2, bias=not batch_norm))
      if batch_norm:
        layers.append(nn.BatchNorm2d(out, momentum=0.1, eps=1e-5))
      layers.append(nn.ReLU(inplace=True))
      channels = out
    layers.append(nn.MaxPool2d(2))
  side = image_size // 32
  layers += [nn.Flatten(), nn.Linear(channels * side * side, fc_width), nn.ReLU(inplace=True),
             nn.Dropout(dropout), nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True),
             nn.Dropout(dropout), nn.Linear(fc_width, num_classes)]
  return nn.Sequential(*layers)


def rate(args, memory_format) -> list[float]:
  torch.manual_seed(0)
  net = vgg(args.variant, args.width, args.fc_width, args.num_classes, args.batch_norm,
            args.image_size, args.dropout).train().to(memory_format=memory_format)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  loss_fn = nn.CrossEntropyLoss()
  images = (torch.randn(args.batch_size, 3, args.image_size, args.image_size) * 60
            ).contiguous(memory_format=memory_format)
  labels = torch.randint(0, args.num_classes, (args.batch_size,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(net(images), labels).backward()
    opt.step()

  for _ in range(2):  # warm-up: oneDNN picks and caches its kernels
    step()
  rates = []
  for _ in range(args.windows):
    start = time.perf_counter()
    for _ in range(args.steps):
      step()
    rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
  return rates


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variant', default='D', choices=sorted(DEPTHS))
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--fc_width', type=int, default=512)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--batch_norm', action='store_true')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--dropout', type=float, default=0.5)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--windows', type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  formats = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}
  rates = {name: statistics.median(rate(args, fmt)) for name, fmt in formats.items()}
  best = max(rates, key=rates.get)
  print(json.dumps({'img_per_sec': rates[best], 'memory_format': best, 'rates': rates,
                    'threads': torch.get_num_threads(), 'torch': torch.__version__,
                    'python': platform.python_version(), **vars(args)}))


if __name__ == '__main__':
  main()
