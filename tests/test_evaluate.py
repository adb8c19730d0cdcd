"""The paper's test protocols, on one tiny run trained with scale jitter on 8 devices."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from PIL import Image

from vgg_jax import checkpoints, data, errors, evaluate, evaluation, parallel, train
from vgg_jax import workdir as workdir_files
from vgg_jax.data import transforms
from vgg_jax.model import VGG

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data import eval_batches  # pylint: disable=wrong-import-position
from test_train import command_env, tiny_config  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
NUM_TEST = 100  # the tiny config's test split


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(workdir, config, model, variables) of a run trained on S in [32, 64]."""
  data_dir = tmp_path_factory.mktemp('tfds')
  workdir = tmp_path_factory.mktemp('run')
  config = tiny_config(data_dir, num_train_steps=STEPS, checkpoint_every_steps=10,
                       eval_every_steps=STEPS, log_every_steps=10)
  assert tuple(config.data.train_scale) == (32, 64)  # jittered S
  train.train_and_evaluate(config, str(workdir))
  config = evaluate.load_run_config(str(workdir))
  model = VGG.from_config(config.model, 10, config.data.image_size)
  return workdir, config, model, checkpoints.restore_variables(str(workdir))


def protocol(run, **kwargs):
  _, config, model, variables = run
  kwargs.setdefault('batch_size', 16)
  data_cfg = kwargs.pop('data_cfg', config.data)
  return evaluation.evaluate_protocol(model, variables, data_cfg, keep_posteriors=True,
                                      **kwargs)


def softmax_mean(run, views):
  """The mean softmax over views, straight from the model: the reference."""
  _, config, model, variables = run
  x = np.stack(views).astype(np.float32) - np.asarray(config.data.mean_rgb, np.float32)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return np.mean(jax.nn.softmax(np.asarray(logits, np.float64), axis=-1), axis=0)


OWN_MODULES = {f for _, _, files in os.walk(os.path.join(REPO, 'vgg_jax'))
               for f in files if f.endswith('.py')}


def own_warnings(stderr: str) -> list[str]:
  """absl warning/error lines (W/E/F, 'W1201 10:00:00.1 123 file.py:42] ...')
  logged by one of this project's modules."""
  return [line for line in stderr.splitlines()
          if re.match(r'[WEF]\d{4} ', line)
          and (m := re.search(r' (\w+\.py):\d+\] ', line)) and m.group(1) in OWN_MODULES]


def files_and_mtimes(root):
  return {os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns
          for r, _, files in os.walk(root) for f in files}


# --------------------------------------------------------------------------
# Scales and views, without a model.
# --------------------------------------------------------------------------


def test_auto_scales_follow_the_paper_rule():
  assert evaluation.auto_scales((256, 512), 224) == (256, 384, 512)
  assert evaluation.auto_scales((256, 256), 224) == (224, 256, 288)  # S +- 32 at 224
  assert evaluation.auto_scales((32, 64), 32) == (32, 48, 64)
  assert evaluation.auto_scales(48, 32) == (43, 48, 53)  # +- round(32 * 32 / 224) = 5
  cfg = ml_collections.ConfigDict(dict(image_size=32, train_scale=(32, 32), test_scale=32))
  with pytest.raises(ValueError, match=r'Q=27 is smaller than the 32x32 crop.*--scales='):
    evaluation.parse_scales('auto', cfg)
  assert evaluation.parse_scales(None, cfg) == (32,)
  assert evaluation.parse_scales('32, 40', cfg) == (32, 40)
  with pytest.raises(ValueError, match='repeats a scale'):  # its NLL came out log 2 too high
    evaluation.parse_scales('40,40', cfg)
  assert evaluation.auto_scales((32, 33), 32) == (32, 33)


def test_views_of_each_protocol_keep_the_aspect_ratio():
  image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
  [single] = evaluation.part_views(image, 'single', image_size=32, flip=False)
  np.testing.assert_array_equal(single, transforms.centre_crop(image, 32))
  dense = evaluation.part_views(image, 'dense', image_size=32, flip=True)
  assert [v.shape for v in dense] == [(40, 56, 3)] * 2  # never resized or cropped
  np.testing.assert_array_equal(dense[1], image[:, ::-1])

  crops = evaluation.part_views(image, 'multicrop', image_size=32, flip=False)
  assert len(crops) == 50 and all(c.shape == (32, 32, 3) for c in crops)
  for crop, mirror in zip(crops[::2], crops[1::2]):
    np.testing.assert_array_equal(mirror, crop[:, ::-1])
  # 25 distinct positions spanning the image, corners and centre crop included.
  assert evaluation.grid_offsets(40, 32) == [0, 2, 4, 6, 8]
  assert evaluation.grid_offsets(56, 32) == [0, 6, 12, 18, 24]
  np.testing.assert_array_equal(crops[0], image[:32, :32])
  np.testing.assert_array_equal(crops[-2], image[-32:, -32:])
  assert any(np.array_equal(c, single) for c in crops)
  assert len({c.tobytes() for c in crops[::2]}) == 25


@pytest.mark.parametrize('label, top1, top5', [
    (0, False, False),  # tied at the top, lowest index: argmax picks it
    (1, True, False),   # tied at the top behind class 0: argmax does not pick it
    (4, True, False),   # fifth of the tied classes: still in the top 5
    (5, True, True),    # sixth of the tied classes
    (9, True, True)])
def test_tied_posteriors_are_ranked_as_argmax_breaks_ties(label, top1, top5):
  posteriors = evaluation._Posteriors(num_classes=10)  # pylint: disable=protected-access
  row = posteriors.open(index=0, label=label, num_views=1)
  # An untrained deep net's float32 log-softmax: every class tied.
  log_probs = np.full((1, 10), np.log(0.1), np.float32)
  done = posteriors.add(np.array([row]), np.ones(1), log_probs)
  scored = posteriors.close(done)
  assert scored['top1_errors'].tolist() == [top1]
  assert scored['top5_errors'].tolist() == [top5]
  assert (not top1) == (int(np.argmax(log_probs[0])) == label)


def test_a_class_tied_below_the_top_ranks_after_the_top():
  posteriors = evaluation._Posteriors(num_classes=4)  # pylint: disable=protected-access
  rows = [posteriors.open(index=i, label=label, num_views=1)
          for i, label in enumerate((0, 1, 2, 3))]
  # Class 3 is alone at the top; 0, 1 and 2 tie below it.
  log_probs = np.log(np.tile([[0.2, 0.2, 0.2, 0.4]], (4, 1))).astype(np.float32)
  scored = posteriors.close(posteriors.add(np.array(rows), np.ones(4), log_probs))
  order = np.argsort(scored['index'])
  assert scored['top1_errors'][order].tolist() == [True, True, True, False]


def test_flip_defaults_follow_the_paper():
  assert not evaluation.resolve_flip('single')
  assert evaluation.resolve_flip('dense') and evaluation.resolve_flip('multicrop')
  assert evaluation.resolve_flip('dense+multicrop', False) is False
  with pytest.raises(ValueError, match='multicrop always averages both flips'):
    evaluation.resolve_flip('multicrop', False)
  with pytest.raises(ValueError, match='unknown protocol'):
    evaluation.resolve_flip('tencrop')


# --------------------------------------------------------------------------
# The protocols on the trained run.
# --------------------------------------------------------------------------


def reference_single_crop_errors(model, variables, batches, mesh) -> dict:
  """The simplest exact evaluation: masked sums of centre-crop errors over padded batches."""

  def sums(variables, batch):
    logits = model.apply(variables, batch['image'], train=False).astype(jnp.float32)
    labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
    true_logit = jnp.take_along_axis(logits, labels[:, None], -1)
    rank = jnp.sum(logits > true_logit, axis=-1)  # classes scored strictly higher
    nll = jax.nn.logsumexp(logits, -1) - true_logit[:, 0]
    return {'top1': jnp.sum((rank >= 1) * mask), 'top5': jnp.sum((rank >= 5) * mask),
            'nll': jnp.sum(nll * mask), 'count': jnp.sum(mask)}

  step = jax.jit(sums, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 out_shardings=parallel.replicated(mesh))
  totals = [jax.device_get(step(variables, parallel.global_batch(batch, mesh)))
            for batch in batches]
  total = {key: float(sum(t[key] for t in totals)) for key in totals[0]}
  return {'top1_error': total['top1'] / total['count'],
          'top5_error': total['top5'] / total['count'],
          'nll': total['nll'] / total['count'], 'num_examples': int(round(total['count']))}


def test_evaluating_the_checkpoint_gives_the_training_run_s_last_evaluation(run):
  # The checkpoint holds the model training evaluated: vgg_jax.evaluate, on
  # another batch size, scores every test image as training's last evaluation did.
  workdir = run[0]
  last = [line for line in workdir_files.read_metrics(str(workdir))
          if 'eval/top1_error' in line][-1]
  assert last['step'] == STEPS
  result = evaluate.evaluate_run(str(workdir), batch_size=8)
  assert result['num_examples'] == NUM_TEST
  assert result['top1_error'] == pytest.approx(last['eval/top1_error'], abs=1e-9)
  assert result['nll'] == pytest.approx(last['eval/nll'], rel=1e-5)


def test_single_equals_a_plain_masked_evaluation_of_padded_batches(run):
  _, config, model, variables = run
  mesh = parallel.make_mesh()
  expected = reference_single_crop_errors(
      model, variables, eval_batches(config.data, global_batch_size=16), mesh)
  result = protocol(run, protocol='single')
  assert result['num_examples'] == expected['num_examples'] == NUM_TEST
  assert result['top1_error'] == expected['top1_error']
  assert result['top5_error'] == expected['top5_error']
  # The reference's crops come from eval_view, which resamples the crop only:
  # within one grey level of the full rescale the protocol takes its crop from.
  assert result['nll'] == pytest.approx(expected['nll'], rel=1e-5)


def test_dense_at_the_crop_size_without_flip_equals_single(run):
  single = protocol(run, protocol='single', scales=[32])
  dense = protocol(run, protocol='dense', scales=[32], flip=False)
  np.testing.assert_array_equal(dense['posterior'], single['posterior'])
  assert dense['top1_error'] == single['top1_error'] and dense['nll'] == single['nll']


def test_every_example_counts_once_whatever_the_batch_and_runs_repeat(run):
  reference = protocol(run, protocol='dense', scales=[48])
  odd = protocol(run, protocol='dense', scales=[48], batch_size=24)  # 200 views % 24 != 0
  again = protocol(run, protocol='dense', scales=[48], batch_size=24)
  assert odd['num_examples'] == NUM_TEST and odd['num_views'] == 2 * NUM_TEST
  np.testing.assert_array_equal(odd['index'], np.arange(NUM_TEST))
  np.testing.assert_allclose(odd['posterior'], reference['posterior'], rtol=1e-5)
  for key in ('top1_error', 'top5_error', 'nll', 'num_examples'):
    assert again[key] == odd[key]


def test_multicrop_averages_the_softmax_of_50_crops_per_scale(run):
  _, config, _, _ = run
  result = protocol(run, protocol='multicrop', scales=[32, 48], split='test[:4]')
  assert result['num_examples'] == 4
  assert result['views_per_image'] == 100 and result['num_views'] == 4 * 100
  image = transforms.decode(data.open_split(config.data, 'test')[3][0])
  expected = np.mean([softmax_mean(run, evaluation.part_views(
      transforms.rescale(image, q), 'multicrop', image_size=32, flip=True))
                      for q in (32, 48)], axis=0)
  np.testing.assert_allclose(result['posterior'][3], expected, rtol=1e-5)


def test_dense_plus_multicrop_averages_both_protocols(run):
  kwargs = dict(scales=[48], split='test[:8]')
  both = protocol(run, protocol='dense+multicrop', **kwargs)
  dense = protocol(run, protocol='dense', **kwargs)
  multicrop = protocol(run, protocol='multicrop', **kwargs)
  assert both['views_per_image'] == 52
  np.testing.assert_allclose(both['posterior'],
                             (dense['posterior'] + multicrop['posterior']) / 2, rtol=1e-5)


def test_protocols_evaluated_together_equal_each_evaluated_alone(run):
  _, config, model, variables = run
  kwargs = dict(scales=[32, 48], split='test[:8]', batch_size=16, keep_posteriors=True)
  protocols = ('dense', 'multicrop', 'dense+multicrop')
  together = evaluation.evaluate_protocols(model, variables, config.data, protocols=protocols,
                                           **kwargs)
  for protocol, result in zip(protocols, together):
    alone = evaluation.evaluate_protocol(model, variables, config.data, protocol=protocol,
                                         **kwargs)
    for key in ('top1_error', 'top5_error', 'num_examples', 'num_views', 'views_per_image'):
      assert result[key] == alone[key], (protocol, key)
    assert result['nll'] == pytest.approx(alone['nll'], rel=1e-9)
    np.testing.assert_allclose(result['posterior'], alone['posterior'], rtol=1e-6)
  assert [r['views_per_image'] for r in together] == [4, 100, 104]
  with pytest.raises(ValueError, match='with and without flips'):
    evaluation.evaluate_protocols(model, variables, config.data,
                                  protocols=('single', 'dense'), **kwargs)


def test_dense_on_images_of_several_aspect_ratios(run, tmp_path):
  """An image folder of mixed shapes: each image runs at its own shape."""
  shapes = [(64, 40), (40, 64), (48, 48)]
  rng = np.random.default_rng(0)
  for c in range(10):  # the model's ten classes, one or two images each
    os.makedirs(tmp_path / 'train' / f'class{c}')
    for i in range(1 + c % 2):
      h, w = shapes[(c + i) % len(shapes)]
      os.makedirs(tmp_path / 'test' / f'class{c}', exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
          tmp_path / 'test' / f'class{c}' / f'{i}.png')
  _, config, _, _ = run
  folder_cfg = ml_collections.ConfigDict(config.data.to_dict())  # the run's, elsewhere
  folder_cfg.update(name='image_folder', folder=str(tmp_path), test_scale=32)
  result = protocol(run, data_cfg=folder_cfg, protocol='dense', scales=[32])
  source = data.open_split(folder_cfg, 'test')
  assert result['num_examples'] == len(source) == 15
  for i, shape in ((0, (51, 32, 3)), (1, (32, 51, 3))):  # a tall and a wide image
    image = transforms.rescale(transforms.decode(source[i][0]), 32)
    assert image.shape == shape
    expected = softmax_mean(run, [image, image[:, ::-1]])
    np.testing.assert_allclose(result['posterior'][i], expected, rtol=1e-5)


def test_training_loop_arrays_are_used_in_place_and_compiled_once(run):
  _, config, model, variables = run
  mesh = parallel.make_mesh()
  replicated = jax.device_put(variables, parallel.replicated(mesh))
  assert evaluation.place_variables(replicated, mesh)['params']['fc1']['kernel'] is \
      replicated['params']['fc1']['kernel']
  first = evaluation.evaluate_protocol(model, replicated, config.data, protocol='single',
                                       batch_size=16, mesh=mesh)
  second = evaluation.evaluate_protocol(model, replicated, config.data, protocol='single',
                                        batch_size=16, mesh=mesh)
  assert second['compile_seconds'] == 0.0 and second['nll'] == first['nll']
  assert {'top1_error', 'top5_error', 'nll', 'num_examples', 'images_per_sec'} <= set(first)
  assert all(isinstance(v, (int, float)) for v in first.values())  # loggable scalars


# --------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_on_one_device_matches_eight_and_writes_auto_scales(run):
  workdir, _, _, _ = run
  proc = subprocess.run(
      [sys.executable, '-m', 'vgg_jax.evaluate', f'--workdir={workdir}',
       '--protocol=dense', '--scales=auto', '--batch_size=16'],
      cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Only the project's own log lines are looked at: TensorFlow and absl print
  # CPU-dependent notices that no test may depend on.
  assert not own_warnings(proc.stderr), proc.stderr[-3000:]
  assert '| A | [32,64] | 32,48,64 |' in proc.stdout
  written = json.load(open(workdir / 'eval' / 'dense_32-48-64.json'))
  assert written['scales'] == [32, 48, 64] and written['devices'] == 1
  assert written['step'] == STEPS and written['protocol'] == 'dense' and written['flip']

  here = evaluate.evaluate_run(str(workdir), protocol='dense', scales='auto', batch_size=16)
  assert here['devices'] == 8 and here['file'] == 'dense_32-48-64.json'
  for key in ('top1_error', 'top5_error', 'num_examples', 'num_views'):
    assert written[key] == here[key], key
  assert written['nll'] == pytest.approx(here['nll'], rel=1e-6)
  assert written['num_examples'] == NUM_TEST


def test_older_step_and_other_split_get_their_own_file(run):
  workdir, _, _, _ = run
  report = evaluate.evaluate_run(str(workdir), step=10, split='test[:10]', flip=True)
  assert report['file'] == 'single_48_flip_test-10_step10.json'
  assert report['num_examples'] == 10 and report['step'] == 10
  path = evaluate.write_report(str(workdir), report)
  saved = json.load(open(path))
  assert {k: saved[k] for k in ('top1_error', 'top5_error', 'nll', 'num_examples',
                                 'protocol', 'scales', 'step')} == {
      k: report[k] for k in ('top1_error', 'top5_error', 'nll', 'num_examples',
                             'protocol', 'scales', 'step')}
  assert 'train S' in evaluate.paper_table(report)


@pytest.mark.parametrize('kwargs, message', [
    (dict(protocol='tencrop'), 'unknown protocol'),
    (dict(step=7), r'no checkpoint at step 7 .* available steps are 10, 20'),
    (dict(scales='16,32'), 'Q=16 is smaller than the 32x32 crop'),
    (dict(scales='big'), 'comma-separated integers'),
    (dict(protocol='multicrop', flip=False), 'drop --noflip'),
    (dict(batch_size=12), 'not a positive multiple of the 8 local devices'),
    (dict(batch_size=0), r'batch_size=0 is not a positive multiple .* --batch_size=8'),
    (dict(split='nosuchsplit'), 'nosuchsplit'),
])
def test_bad_arguments_fail_clearly_and_touch_nothing(run, kwargs, message):
  workdir, _, _, _ = run
  before = files_and_mtimes(workdir)
  with pytest.raises(errors.USER_ERRORS, match=message):
    evaluate.evaluate_run(str(workdir), **kwargs)
  assert files_and_mtimes(workdir) == before


def test_missing_run_or_checkpoint_is_a_clear_error(run, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    evaluate.evaluate_run(str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='config.json not found'):
    evaluate.evaluate_run(str(tmp_path))
  (tmp_path / 'config.json').write_text((run[0] / 'config.json').read_text())
  with pytest.raises(FileNotFoundError, match='no checkpoints in'):
    evaluate.evaluate_run(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['config.json']


def parse_evaluate_flags(*args):
  """The command line's flags, defined and parsed in a registry of their own: the
  process's global one stays as the library left it, without flags."""
  flag_values = flags.FlagValues()
  command = evaluate._define_flags(flag_values)  # pylint: disable=protected-access
  flag_values(['vgg_jax.evaluate', *args])
  return command


def test_cli_error_is_one_line_with_nonzero_exit(run, capsys):
  # `main` in this process: a subprocess would spend most of its time importing.
  workdir, _, _, _ = run
  before = files_and_mtimes(workdir)
  command = parse_evaluate_flags(f'--workdir={workdir}', '--protocol=ten')
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(['vgg_jax.evaluate'], command)
  # sys.exit(str) prints the string as one line to stderr and exits with status 1.
  assert exit_info.value.code == (
      "vgg_jax.evaluate: error: unknown protocol 'ten': choose one of single, dense, "
      'multicrop, dense+multicrop')
  assert files_and_mtimes(workdir) == before
  assert capsys.readouterr().out == ''
