"""One-off (2026-12-07): VGG-D at the twocore size, 10 epochs, with conv1_1 first
set to a patch-whitening filter bank, as fast CIFAR-10 recipes start their first
layer (Page's DAWNBench entry, Jordan's airbench); here trainable, like every layer.

    PYTHONPATH=. python experiments/results/pilot_levers/whitening_init.py \
        whiten ROOT WORKDIR        # or: glorot ROOT WORKDIR (the recipe as it is)

ROOT: CIFAR-10 as an image folder (ROOT/train/<class>/*, ROOT/test/<class>/*).
The filters: the top C/2 eigenvectors of the covariance of 20,000 random 3x3
patches (mean pixel subtracted) from 2,000 training images, each divided by the
square root of its eigenvalue (plus 1 % of the largest), and their negatives (C =
16 at width 1/4), scaled to the Glorot kernel's norm; batch norm follows, so only
their directions and relative scales matter.
"""
import glob
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from configs import cifar10
from vgg_jax import console, train, warm_start


def whitening_kernel(root, channels, mean_rgb, patches=20000, images=2000, eps=1e-2, seed=0):
  rng = np.random.default_rng(seed)
  files = sorted(glob.glob(f'{root}/train/*/*'))
  rows = []
  for i in rng.choice(len(files), images, replace=False):
    im = np.asarray(Image.open(files[i]).convert('RGB'), np.float32) - np.float32(mean_rgb)
    for _ in range(patches // images):
      y, x = rng.integers(0, im.shape[0] - 2), rng.integers(0, im.shape[1] - 2)
      rows.append(im[y:y + 3, x:x + 3, :].reshape(-1))  # (h, w, in): HWIO's order
  p = np.stack(rows).astype(np.float64)
  p -= p.mean(0)
  lam, vec = np.linalg.eigh(p.T @ p / len(p))
  lam, vec = lam[::-1], vec[:, ::-1]
  k = channels // 2
  filters = vec[:, :k] / np.sqrt(lam[:k] + eps * lam[0])
  return np.concatenate([filters, -filters], axis=1).reshape(3, 3, 3, channels).astype(np.float32)


def main(mode, root, workdir):
  config = cifar10.get_config(f'D,twocore,folder={root}')
  if mode == 'whiten':
    fresh = warm_start.apply_init_from

    def whitened(config, state, model):
      state = fresh(config, state, model)
      kernel = state.params['conv1_1']['kernel']
      w = whitening_kernel(root, kernel.shape[-1], config.data.mean_rgb)
      w = w * (np.linalg.norm(np.asarray(kernel)) / np.linalg.norm(w))
      params = dict(state.params)
      params['conv1_1'] = dict(params['conv1_1'], kernel=jax.device_put(
          jnp.asarray(w), kernel.sharding))
      return state.replace(params=params)

    warm_start.apply_init_from = whitened  # train_and_evaluate calls it on a fresh state
  console.quiet_libraries()
  start = time.time()
  result = train.train_and_evaluate(config, workdir)
  print(mode, 'top-1 error', result['top1_error'], 'wall', round(time.time() - start), 's')


if __name__ == '__main__':
  main(*sys.argv[1:])
