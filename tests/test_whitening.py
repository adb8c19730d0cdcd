"""conv1_1 as a frozen patch-whitening filter bank (optimizer.first_conv='whitened')."""

import os
import shutil
import sys

import jax
import numpy as np
import pytest

from vgg_jax import optim, parallel, train, warm_start, whitening
from vgg_jax.model import VGG, num_classes_of

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import tiny_config  # pylint: disable=wrong-import-position


def correlated_images(seed=0, n=6, side=12):
  """Smooth colour images: neighbouring pixels and channels correlate, as photos do."""
  rng = np.random.default_rng(seed)
  noise = rng.normal(size=(n, side + 2, side + 2, 3))
  smooth = (noise[:, 1:-1, 1:-1] + noise[:, :-2, 1:-1] + noise[:, 1:-1, :-2]) / 3
  return (smooth @ np.array([[1.0, 0.6, 0.3], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
          + 40).astype(np.float32)


def test_a_kernels_patches_are_what_its_convolution_multiplies():
  """A patch's values in HWIO's order: the valid convolution by a kernel is the
  patch matrix times the kernel as a matrix, so the filters act on the patches
  whose covariance gave them."""
  images = correlated_images()
  kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 5)).astype(np.float32)
  moments = whitening._Moments(3, 3)
  moments.add(images)
  conv = jax.lax.conv_general_dilated(images, kernel, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  n, h, w, _ = conv.shape
  patches = np.stack([images[:, y:y + h, x:x + w, :] for y in range(3) for x in range(3)],
                     axis=3).reshape(-1, 27)
  np.testing.assert_allclose(np.asarray(conv).reshape(-1, 5), patches @ kernel.reshape(27, 5),
                             rtol=1e-4, atol=1e-3)
  # The moments pooled over batches are the covariance of all their patches.
  np.testing.assert_allclose(moments.covariance(), np.cov(patches.T, bias=True), rtol=1e-9,
                             atol=1e-9)
  two = whitening._Moments(3, 3)
  two.add(images[:2])
  two.add(images[2:])
  np.testing.assert_allclose(two.covariance(), moments.covariance(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize('eps', [0.0, 1e-3])
def test_filters_whiten_the_top_directions_and_come_with_their_negatives(eps):
  moments = whitening._Moments(3, 3)
  moments.add(correlated_images())
  covariance = moments.covariance()
  filters = whitening.whitening_filters(covariance, channels=16, eps=eps)
  assert filters.shape == (27, 16)
  top = filters[:, :8]
  np.testing.assert_array_equal(filters[:, 8:], -top)
  lam = np.sort(np.linalg.eigvalsh(covariance))[::-1]
  # Their responses are uncorrelated, each of variance lam / (lam + eps * lam_max).
  np.testing.assert_allclose(top.T @ covariance @ top, np.diag(lam[:8] / (lam[:8] + eps * lam[0])),
                             atol=1e-9)


def test_channels_beyond_twice_the_patch_keep_their_random_start_and_the_kernel_its_norm():
  fresh = np.random.default_rng(2).normal(size=(1, 1, 3, 8)).astype(np.float32)
  kernel = whitening.whitening_kernel([correlated_images()], fresh)
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel[..., 6:], fresh[..., 6:])  # 2 * 3 filters, then random
  np.testing.assert_allclose(np.linalg.norm(kernel), np.linalg.norm(fresh), rtol=1e-6)
  np.testing.assert_allclose(kernel[..., 3:6], -kernel[..., :3])


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def _params(workdir):
  variables, _, _ = warm_start.load_source(str(workdir))
  return variables['params']


WHITENED = {'optimizer.first_conv': 'whitened', 'optimizer.kernels': 'muon',
            'model.batch_norm': True, 'checkpoint_every_steps': 4, 'keep_checkpoints': 3}


def test_training_never_moves_the_whitened_conv_and_resumes_exactly(data_dir, tmp_path):
  config = tiny_config(data_dir, num_train_steps=8, **WHITENED)
  train.train_and_evaluate(config, str(tmp_path / 'whole'))
  whole = _params(tmp_path / 'whole')
  # conv1_1 is the whitening kernel of the run's first batches, exactly as made.
  size = config.data.image_size
  model = VGG.from_config(config.model, num_classes_of(whole, config.model.head), size)
  init_key, _ = jax.random.split(jax.random.key(config.seed))  # as train_and_evaluate's
  fresh = train.create_train_state(model, optim.create_optimizer(config.optimizer, 8, 4),
                                   init_key, size, parallel.make_mesh())
  expected = whitening.whitening_kernel(whitening.network_inputs(config),
                                        np.asarray(fresh.params['conv1_1']['kernel']))
  np.testing.assert_array_equal(whole['conv1_1']['kernel'], expected)
  assert not np.allclose(whole['conv2_1']['kernel'], fresh.params['conv2_1']['kernel'])
  # As if stopped at step 4, then resumed: the same parameters, bit for bit (the
  # filters are not made again, and stay frozen).
  shutil.copytree(tmp_path / 'whole', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '8')
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / 'resumed'), whole)
