"""Which 32x32 window of the Q-rescaled test images does dense evaluation see? The
top-1 error of crops at diagonal offsets, and how often each crop's prediction
agrees with dense evaluation's (no flips; the model's floor pooling).

    python experiments/results/dense_geometry/view_position.py WORKDIR Q

Reads the run's test split from its image folder (data.name=image_folder).
Prints one JSON line. A one-off analysis (README.md).
"""

import glob
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vgg_jax import evaluate
from vgg_jax.data import transforms
from vgg_jax.model import VGG


def test_images(folder: str, q: int):
  root = os.path.join(folder, 'test')
  images, labels = [], []
  for label, name in enumerate(sorted(os.listdir(root))):
    for path in sorted(glob.glob(os.path.join(root, name, '*'))):
      with open(path, 'rb') as f:
        images.append(transforms.rescale(transforms.decode(f.read()), q))
      labels.append(label)
  return np.stack(images), np.array(labels)


def main(workdir: str, q: int) -> None:
  config = evaluate.load_run_config(workdir)
  variables, step, _ = evaluate.restore(workdir)
  model = VGG.from_config(config.model, 10, int(config.data.image_size))
  images, labels = test_images(config.data.folder, q)
  mean = jnp.asarray(config.data.mean_rgb, jnp.float32)
  scores = jax.jit(lambda x: model.apply(variables, x.astype(jnp.float32) - mean, train=False))

  def predict(x):  # dense: the class score map averaged over its positions
    return np.concatenate([np.asarray(scores(x[i:i + 500])).reshape(len(x[i:i + 500]), -1, 10)
                           .mean(1) for i in range(0, len(x), 500)]).argmax(-1)

  dense = predict(images)
  result = {'dense': round(100 * float(np.mean(dense != labels)), 2)}
  size = int(config.data.image_size)
  for offset in sorted({0, (q - size) // 4, (q - size) // 2, 3 * (q - size) // 4, q - size}):
    crop = predict(np.ascontiguousarray(images[:, offset:offset + size, offset:offset + size]))
    result[f'crop at ({offset},{offset})'] = {
        'top1_error': round(100 * float(np.mean(crop != labels)), 2),
        'agrees_with_dense': round(100 * float(np.mean(crop == dense)), 1)}
  print(json.dumps({'workdir': workdir, 'step': int(step), 'Q': q, 'percent': result}))


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]))
