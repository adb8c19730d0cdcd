"""PyTorch's side of `vgg_jax.benchmark --compare=torch`, in a process of its own.

In the benchmark's own process PyTorch ran 25 % slower once vgg_jax's oneDNN
convolutions (and their OpenMP threads) had run there: 2,408 against 3,229
img/s for the width-1/8 VGG-D, the same command with VGG_JAX_ONEDNN=1 and 0
(2-core AMD EPYC with AVX-512, 2026-12-04). Here it runs as in a script of its
own, and the benchmark still times it window by window in turns with vgg_jax.
This module imports torch only, so that the process starts quickly.
"""

from __future__ import annotations

import contextlib
from multiprocessing.connection import Connection

import torch

READY, RUN, DONE = 'ready', 'run', 'done'


def serve(conn: Connection, net: torch.nn.Module, batch_size: int, image_size: int,
          num_classes: int, steps: int, memory_format: str, bfloat16: bool) -> None:
  """Trains `net` on one random batch: `steps` steps for every RUN received."""
  fmt = {'contiguous': torch.contiguous_format, 'channels_last': torch.channels_last}[
      memory_format]
  torch.manual_seed(0)
  net = net.train().to(memory_format=fmt)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  loss_fn = torch.nn.CrossEntropyLoss()
  images = (torch.randn(batch_size, 3, image_size, image_size) * 60).to(memory_format=fmt)
  labels = torch.randint(0, num_classes, (batch_size,))
  autocast = (torch.autocast('cpu', dtype=torch.bfloat16) if bfloat16
              else contextlib.nullcontext())

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(net(images), labels)
    loss.backward()
    opt.step()

  step()
  conn.send(READY)
  try:
    while conn.recv() == RUN:
      for _ in range(steps):
        step()
      conn.send(DONE)
  except EOFError:  # the benchmark ended without a word: so does this process
    pass
