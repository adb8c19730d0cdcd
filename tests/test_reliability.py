"""Fault injection: kills, preemption, divergence, damage, changed configs, bad input.

The training runs here are real command lines (`python -m vgg_jax.train`) on
four CPU devices, sharing one JAX compilation cache so that only the first one
compiles. One uninterrupted run is the reference. A second run in another
workdir is killed with SIGKILL while a checkpoint is being written and again
at a random moment, has its newest checkpoint damaged, is preempted with
SIGTERM at a random moment, and is rerun with the same command until it
finishes: its parameters must equal the reference's exactly. Two processes
joined by `jax.distributed` train with two devices each until one of them
gets SIGTERM, and one process with four devices finishes from their
checkpoint. The rest runs in this process (8 devices) or in forked copies.

Every error message checked here must appear, with paths replaced by DIR and
FOLDER, in the troubleshooting table of the README: the table is the list of
bad inputs this file reproduces.

The random moments come from RELIABILITY_SEED (default 0), printed on failure.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils
from PIL import Image

from vgg_jax import checkpoints, cli, cpu_ops, data, errors, evaluate, faults, resume, train
from vgg_jax import workdir as run_files
from vgg_jax.model import VGG

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import REPO, cli_args, command_env, tiny_config  # pylint: disable=wrong-import-position

STEPS = 24
RUN = {'num_train_steps': STEPS, 'checkpoint_every_steps': 4, 'log_every_steps': 4,
       'eval_every_steps': STEPS, 'keep_checkpoints': 2}
DEVICES = 4
SEED = int(os.environ.get('RELIABILITY_SEED', '0'))
CONFIG_FILE = os.path.join(REPO, 'configs/default.py')
README = os.path.join(REPO, 'README.md')
TRAIN_ERROR = 'vgg_jax.train: error: '


# --------------------------------------------------------------------------
# Subprocesses.
# --------------------------------------------------------------------------


def subprocess_env(devices, cache_dir):
  env = command_env(devices)
  # One persistent compilation cache for the module's runs, every program in
  # it (the train step, evaluation, checksums): each compiles once.
  env['JAX_COMPILATION_CACHE_DIR'] = str(cache_dir)
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


class Run:
  """`python -m vgg_jax.train` in the background, stderr in a file to poll."""

  started = []  # killed after each test if still running (a failed test)

  def __init__(self, workdir, data_dir, cache_dir, *, devices=DEVICES, flags=(), **extra):
    self.log_path = f'{workdir}.{time.monotonic_ns()}.log'
    # The cache of subprocess_env, not train's own (user-wide, 1 s threshold).
    cmd = cli_args(CONFIG_FILE, workdir, data_dir, **{**RUN, **extra}) + [
        '--compilation_cache=', *flags]
    with open(self.log_path, 'w') as log:
      self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                   env=subprocess_env(devices, cache_dir))
    self._log, self._text = open(self.log_path, errors='replace'), ''
    Run.started.append(self)

  def stderr(self):
    # Read incrementally: polled every few milliseconds, and the logs are long.
    self._text += self._log.read()
    return self._text

  def wait_until(self, condition, timeout=300):
    """Polls `condition()` until true (True) or the process has ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if condition():
        return True
      if self.proc.poll() is not None:
        return condition()
      time.sleep(0.005)
    raise TimeoutError(f'condition not met in {timeout} s:\n{self.stderr()[-3000:]}')

  def training(self):
    return self.wait_until(lambda: 'training steps' in self.stderr())

  def finish(self, timeout=300):
    """The exit status; a run still going after `timeout` seconds is killed and
    fails the test with its log (and those of the runs started beside it)."""
    try:
      return self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      logs = '\n'.join(f'--- {run.log_path} (exit {run.kill()}):\n{run.stderr()[-3000:]}'
                        for run in Run.started)
      raise AssertionError(f'still running after {timeout} s:\n{logs}') from None

  def kill(self):
    """Kills the run if it is still going; its exit status."""
    if self.proc.poll() is None:
      self.proc.kill()
    return self.proc.wait()

  def last_line(self):
    return self.stderr().strip().splitlines()[-1]


def random_moment(run, rng, resumed_from, at_start=True):
  """Waits for a random moment of `run`'s training after step `resumed_from`:
  its start (if `at_start`) or just after one of the logged steps before the
  last, then up to 20 ms more. Moments picked by step, not by wall clock, so
  that a fast machine does not finish the run first. Returns it, for messages."""
  every = RUN['log_every_steps']
  steps = [*([None] if at_start else []), *range(resumed_from + every, STEPS, every)]
  assert steps, f'no logged step between {resumed_from} and {STEPS}'
  step = steps[rng.integers(len(steps))]
  assert run.training()
  if step is not None:
    assert run.wait_until(lambda: f'] step {step}/{STEPS} ' in run.stderr()), run.stderr()[-3000:]
  delay = rng.uniform(0.0, 0.02)
  time.sleep(delay)
  return f'RELIABILITY_SEED={SEED}, {delay * 1000:.0f} ms after ' + (
      'training started' if step is None else f'step {step}')


def free_port():
  with contextlib.closing(socket.socket()) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def assert_same_params(a, b):
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def snapshot(root):
  """Every directory, and every file with its size and mtime: "nothing changed"."""
  entries = {}
  for directory, dirs, files in os.walk(root):
    for name in dirs:
      entries[os.path.relpath(os.path.join(directory, name), root)] = 'directory'
    for name in files:
      stat = os.stat(os.path.join(directory, name))
      entries[os.path.relpath(os.path.join(directory, name), root)] = (stat.st_size,
                                                                      stat.st_mtime_ns)
  return entries


def largest_data_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True),
             key=os.path.getsize)


# orbax's abandoned reads of the damaged files raise as `checkpoints` collects them,
# within the test: expected, not a finding.
_ORBAX_ABANDONED_READS = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


def truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def orbax_tmp_steps(workdir):
  """Steps of checkpoints being written (orbax's temporary directories)."""
  directory = os.path.join(workdir, 'checkpoints')
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n.split('.')[0]) for n in names if '.orbax-checkpoint-tmp' in n)


# --------------------------------------------------------------------------
# The README's troubleshooting table.
# --------------------------------------------------------------------------


def readme_messages():
  """The messages (third column, in backticks) of the troubleshooting table."""
  text = open(README).read()
  section = text[text.index('## Troubleshooting'):]
  return [m.group(1) for m in re.finditer(r'^\|[^|]*\|[^|]*\| `(.*)` \|$', section, re.M)]


def assert_in_readme(line, **placeholders):
  """`line`, its paths replaced by placeholders, matches a row ('...' = anything)."""
  for name, path in placeholders.items():
    line = line.replace(os.path.abspath(str(path)), name).replace(str(path), name)

  patterns = [re.escape(m).replace(re.escape('...'), '.*') for m in readme_messages()]
  assert any(re.fullmatch(p, line) for p in patterns), (
      f'not in the README troubleshooting table:\n{line}')


def error_line(error):
  line = cli.error_line('vgg_jax.train', error)
  assert '\n' not in line
  return line


# --------------------------------------------------------------------------
# Fixtures: the dataset, the compilation cache, the uninterrupted run.
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_run_left_behind():
  yield
  while Run.started:
    run = Run.started.pop()
    run.kill()
    run._log.close()  # pylint: disable=protected-access


@pytest.fixture(scope='module', autouse=True)
def xla_cpu_defaults():
  """Every run of this module, in-process or not, with XLA's default CPU options.

  Two JAX processes on CPUs compile with them whatever the step asks for
  (cpu_ops.compiler_options), and test 2 compares two processes with one.
  """
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(cpu_ops.KEEP_XLA_DEFAULTS_ENV, '1')
    yield


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir, cache_dir):
  """An uninterrupted run on 4 devices: the parameters every other run must reach."""
  data.dataset_info(tiny_config(data_dir).data)  # prepared here, not in a killed run
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  run = Run(workdir, data_dir, cache_dir)
  assert run.finish() == 0, run.stderr()[-3000:]
  return workdir


@pytest.fixture
def copy_of(tmp_path):
  def copy(workdir):
    target = tmp_path / 'copy'
    shutil.copytree(workdir, target)
    return target
  return copy


# --------------------------------------------------------------------------
# 1, 2, 4: kills, preemption and a damaged checkpoint, then an exact finish.
# --------------------------------------------------------------------------


@_ORBAX_ABANDONED_READS
def test_killed_preempted_and_damaged_run_finishes_exactly_like_the_reference(
    reference, data_dir, cache_dir, tmp_path):
  rng = np.random.default_rng(SEED)
  workdir = tmp_path / 'run'
  context = f'RELIABILITY_SEED={SEED}'

  # SIGKILL while an asynchronous checkpoint is being written (orbax writes
  # into '<step>.orbax-checkpoint-tmp' and renames it when complete); the
  # third, so that two complete ones exist.
  run = Run(workdir, data_dir, cache_dir)
  assert run.wait_until(lambda: [s for s in orbax_tmp_steps(workdir) if s >= 12]), context
  run.proc.send_signal(signal.SIGKILL)
  assert run.finish() == -signal.SIGKILL
  half_written = orbax_tmp_steps(workdir)
  complete = checkpoints.available_steps(str(workdir))
  assert half_written, 'the kill came after the checkpoint was complete'
  assert not set(half_written) & set(complete)  # never taken for a complete one
  assert len(complete) == 2 and max(complete) < min(half_written)

  # SIGKILL at a random moment of the rerun.
  run = Run(workdir, data_dir, cache_dir)
  moment = random_moment(run, rng, max(complete))
  assert f'resumed from the checkpoint at step {max(complete)}' in run.stderr()
  run.proc.send_signal(signal.SIGKILL)
  assert run.finish() == -signal.SIGKILL, f'finished before SIGKILL ({moment})'

  # Damage the newest complete checkpoint; SIGTERM at a random moment of the
  # rerun, which falls back to the older checkpoint and moves the damaged one
  # aside, then saves where SIGTERM found it and exits 143.
  complete = checkpoints.available_steps(str(workdir))
  damaged, resumed = max(complete), sorted(complete)[-2]
  truncate(largest_data_file(workdir / 'checkpoints' / str(damaged)))
  damaged_files = snapshot(workdir / 'checkpoints' / str(damaged))
  run = Run(workdir, data_dir, cache_dir)
  moment = random_moment(run, rng, resumed, at_start=False)
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == faults.PREEMPTED_EXIT_CODE, f'SIGTERM {moment}'
  stderr = run.stderr()
  assert f'the checkpoint at step {damaged} is damaged (' in stderr
  assert f'resuming from step {resumed}' in stderr
  assert snapshot(workdir / 'checkpoints_damaged' / str(damaged)) == damaged_files
  preempted = re.fullmatch(r'vgg_jax\.train: preempted \(SIGTERM\) at step (\d+): saved a '
                           r'checkpoint at step \1; rerun the same command to continue '
                           r'from it', run.last_line())
  assert preempted, f'SIGTERM {moment}:\n{stderr[-3000:]}'
  stopped_at = int(preempted.group(1))
  assert resumed < stopped_at < STEPS
  assert max(checkpoints.available_steps(str(workdir))) == stopped_at

  # The same command again, to the end, from there.
  run = Run(workdir, data_dir, cache_dir)
  assert run.finish() == 0, run.stderr()[-3000:]
  assert f'resumed from the checkpoint at step {stopped_at}' in run.stderr()
  assert_same_params(checkpoints.restore_params(str(reference)),
                     checkpoints.restore_params(str(workdir)))
  logged = [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')]
  assert logged == list(range(4, STEPS + 1, 4))  # one line per step, none torn


# --------------------------------------------------------------------------
# 7: two processes, preempted, finished by one.
# --------------------------------------------------------------------------


def test_two_processes_train_like_one_and_one_resumes_their_checkpoint(
    reference, data_dir, cache_dir, tmp_path):
  workdir = tmp_path / 'pair'
  coordinator = [f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2']
  # The pair evaluates with each checkpoint (a config field that may change on
  # resume): each process scores its half of the test split on its own devices.
  pair = [Run(workdir, data_dir, cache_dir, devices=2, eval_every_steps=4,
              flags=[*coordinator, f'--process_id={i}']) for i in range(2)]
  # SIGTERM to one process only: JAX's preemption service tells the other, and
  # both checkpoint the same step. Sent once step 4 is saved (and evaluated), not
  # when its checkpoint has been written in the background: a fast machine could
  # finish all the steps before that.
  assert pair[0].wait_until(lambda: 'checkpoint at step 4' in pair[0].stderr())
  pair[1].proc.send_signal(signal.SIGTERM)
  assert [run.finish() for run in pair] == [faults.PREEMPTED_EXIT_CODE] * 2, (
      pair[0].stderr()[-2000:] + pair[1].stderr()[-2000:])
  assert pair[0].last_line() == pair[1].last_line()
  stopped_at = int(re.search(r'at step (\d+)', pair[0].last_line()).group(1))
  assert 'JAX process 1/2' in pair[1].stderr() and 'on 4 devices' in pair[1].stderr()
  assert max(checkpoints.available_steps(str(workdir))) == stopped_at < STEPS

  # Their last evaluation, summed over the two processes, scores like one
  # process evaluating the same checkpoint (still kept: the newest two are).
  evaluated = 4 * (stopped_at // 4)
  logged = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  pair_eval = next(l for l in logged if l['step'] == evaluated and 'eval/top1_error' in l)
  here = evaluate.evaluate_run(str(workdir), step=evaluated, batch_size=16)
  assert here['num_examples'] == 100 and here['step'] == evaluated
  assert pair_eval['eval/top1_error'] == here['top1_error']
  np.testing.assert_allclose(pair_eval['eval/nll'], here['nll'], rtol=1e-4)
  for run in pair:
    assert final_evaluation(run.stderr(), evaluated) == {
        'top1': f'{here["top1_error"]:.4f}', 'examples': 100,
        'nll': pytest.approx(here['nll'], rel=1e-3)}

  # One process with four devices continues from the pair's checkpoint.
  single = Run(workdir, data_dir, cache_dir)
  assert single.finish() == 0, single.stderr()[-3000:]
  assert f'resumed from the checkpoint at step {stopped_at}' in single.stderr()
  # Not bit for bit: gloo's all-reduce over two processes adds the four
  # devices' gradients in another order than XLA's in-process one, about one
  # float32 ulp per step, which training compounds (1e-4 relative after 12-13
  # steps of the pair; it now stops after 6-12, or more on a machine where the
  # SIGTERM takes longer to land). So each parameter array must be far closer to the
  # reference's than the reference's own last four steps moved it: 0.07 of that
  # at most, measured (0.016 after 10 or 12 steps of the pair, 2026-12-06); a step
  # missed or repeated would move it about a quarter.
  final, earlier = (jax.tree_util.tree_leaves(checkpoints.restore_params(str(reference), step))
                    for step in (STEPS, STEPS - 4))
  resumed = jax.tree_util.tree_leaves(checkpoints.restore_params(str(workdir)))
  ratios = [np.abs(got - want).max() / np.abs(want - before).max()
            for got, want, before in zip(resumed, final, earlier)]
  assert len(resumed) == len(final) and max(ratios) < 0.2, ratios
  # The losses the pair logged (each the mean over the steps since the last
  # line; the resumed run's first line covers fewer steps than the reference's).
  losses, expected = ({line['step']: line['train/loss']
                       for line in map(json.loads, open(d / 'metrics.jsonl'))
                       if line['step'] <= stopped_at} for d in (workdir, reference))
  assert losses.keys() == expected.keys() and losses
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [expected[s] for s in sorted(expected)], rtol=1e-5)


def test_a_full_disk_is_named_with_its_fix():
  # What orbax's writer (tensorstore) raised when a checkpoint filled a 300 KB tmpfs
  # (2026-12-07); after space was freed, the same command trained to the same result.
  error = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "params.bn5_2.scale/0" in OCDBT database at local '
      'file "/w/checkpoints/250.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.'
      'process_0/": Failed to write 4562944 bytes to file 9: No space left on device '
      "[os_error_code='28']")
  assert_in_readme(error_line(error))
  assert_in_readme(error_line(OSError(28, 'No space left on device', '/w/metrics.jsonl')))


def test_a_ctrl_c_is_a_preemption_notice_and_a_second_one_interrupts():
  previous = signal.getsignal(signal.SIGINT)
  with faults.PreemptionWatch((signal.SIGTERM, signal.SIGINT)) as watch:
    os.kill(os.getpid(), signal.SIGINT)
    assert watch.reached(1) and watch.received == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
  assert signal.getsignal(signal.SIGINT) is previous


def test_saving_leaves_the_preemption_sync_point_to_the_loop(tmp_path, monkeypatch):
  # JAX's sync manager takes its latest caller's step as the process's; orbax's
  # finalizing thread, asking with the older step it writes, once made a pair
  # agree on a step one of them had passed, and the other hung.
  asked = []
  monkeypatch.setattr(multihost_utils, 'reached_preemption_sync_point',
                      lambda step: asked.append(step) or False)
  state = {'params': {'w': np.ones(3, np.float32)}, 'step': np.int32(1)}
  mngr = checkpoints.manager(str(tmp_path))
  for step in (1, 2):
    checkpoints.save(mngr, state, step)
  mngr.wait_until_finished()
  mngr.close()
  assert mngr.all_steps() == [1, 2] and asked == []


def final_evaluation(stderr, step):
  """The training loop's evaluation at `step`, from its log line."""
  line = re.findall(rf'step {step}  eval top-1 error ([\d.]+)  top-5 error [\d.]+  '
                    r'NLL ([\d.]+)  \((\d+) examples\)', stderr)[-1]
  return {'top1': line[0], 'nll': float(line[1]), 'examples': int(line[2])}


# --------------------------------------------------------------------------
# 3: divergence.
# --------------------------------------------------------------------------


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    reference, data_dir, copy_of):
  workdir = copy_of(reference)
  shutil.rmtree(workdir / 'checkpoints' / str(STEPS))  # as if stopped at step 20
  good = STEPS - 4
  before = snapshot(workdir / 'checkpoints')
  # A learning rate of 1e30 really diverges: weights overflow within two steps.
  config = tiny_config(data_dir, **RUN, **{'optimizer.learning_rate': 1e30})
  with pytest.raises(errors.NonFiniteError) as error:
    train.train_and_evaluate(config, str(workdir), allow_config_change=True)
  line = error_line(error.value)
  step = int(re.search(r' (?:at|after) step (\d+)', line).group(1))
  assert good < step <= STEPS
  assert f'the newest checkpoint, step {good}, is kept' in line
  assert checkpoints.available_steps(str(workdir)) == [good]
  assert snapshot(workdir / 'checkpoints') == before
  assert_same_params(checkpoints.restore_params(str(reference), good),
                     checkpoints.restore_params(str(workdir)))
  assert_in_readme(line, DIR=workdir)


def test_a_state_with_nan_is_never_saved(tmp_path):
  state = {'params': {'w': np.ones(3, np.float32)}, 'step': np.int32(1)}
  mngr = checkpoints.manager(str(tmp_path), asynchronous=False)
  checkpoints.save(mngr, state, 1)
  state['params']['w'][1] = np.nan
  with pytest.raises(errors.NonFiniteError, match=r'non-finite values after step 2 '
                     r'\(params/w\): .* the newest checkpoint, step 1, is kept'):
    checkpoints.save(mngr, state, 2)
  assert mngr.all_steps() == [1]


# --------------------------------------------------------------------------
# 4: damaged checkpoints, one kind of damage at a time.
# --------------------------------------------------------------------------


def _flip_a_byte(step_dir):
  path = largest_data_file(step_dir)
  content = bytearray(open(path, 'rb').read())
  content[len(content) // 2] ^= 1  # TensorStore reads this back without an error
  open(path, 'wb').write(content)


DAMAGE = {
    'truncated data file': lambda d: truncate(largest_data_file(d)),
    'one bit flipped': _flip_a_byte,
    'array metadata deleted': lambda d: os.remove(d / 'state' / '_METADATA'),
    'manifest deleted': lambda d: os.remove(d / 'state' / 'manifest.ocdbt'),
    'state directory deleted': lambda d: shutil.rmtree(d / 'state'),
    'checksums corrupted': lambda d: open(d / 'checksums' / 'metadata', 'w').write('{'),
}


@_ORBAX_ABANDONED_READS
@pytest.mark.parametrize('damage', DAMAGE)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_older_one_restored(
    tmp_path, damage):
  states = {s: {'params': {'w': np.arange(1000, dtype=np.float32) * s}, 'step': np.int32(s)}
            for s in (4, 8)}
  mngr = checkpoints.manager(str(tmp_path), asynchronous=False)
  for step, state in states.items():
    checkpoints.save(mngr, state, step)
  DAMAGE[damage](tmp_path / 'checkpoints' / '8')
  damaged = snapshot(tmp_path / 'checkpoints' / '8')
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), states[4])
  restored = checkpoints.restore_newest_good(mngr, abstract)
  assert int(restored['step']) == 4 and mngr.all_steps() == [4]
  np.testing.assert_array_equal(restored['params']['w'], states[4]['params']['w'])
  assert snapshot(tmp_path / 'checkpoints_damaged' / '8') == damaged  # kept, not deleted
  checkpoints.save(mngr, states[8], 8)  # the step can be written again
  assert mngr.all_steps() == [4, 8]


def test_a_program_error_while_restoring_is_raised_not_taken_for_damage(tmp_path, monkeypatch):
  # A bug of ours (here a TypeError while verifying) must surface as itself:
  # taken for damage, it would move good checkpoints aside one after another.
  state = {'params': {'w': np.arange(10, dtype=np.float32)}, 'step': np.int32(4)}
  mngr = checkpoints.manager(str(tmp_path), asynchronous=False)
  for step in (4, 8):
    checkpoints.save(mngr, dict(state, step=np.int32(step)), step)
  before = snapshot(tmp_path)

  def bug(*_):
    raise TypeError('a bug, not damage')

  monkeypatch.setattr(checkpoints, '_verify', bug)
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  with pytest.raises(TypeError, match='a bug, not damage'):
    checkpoints.restore_newest_good(mngr, abstract)
  with pytest.raises(TypeError, match='a bug, not damage'):
    checkpoints.restore_variables(str(tmp_path), collections=('params',))
  assert snapshot(tmp_path) == before and mngr.all_steps() == [4, 8]


@_ORBAX_ABANDONED_READS
def test_no_good_checkpoint_stops_the_run_and_changes_nothing(reference, data_dir, copy_of):
  workdir = copy_of(reference)
  for step in checkpoints.available_steps(str(workdir)):
    truncate(largest_data_file(workdir / 'checkpoints' / str(step)))
  before = snapshot(workdir)
  with pytest.raises(errors.CheckpointError, match='no good checkpoint') as error:
    train.train_and_evaluate(tiny_config(data_dir, **RUN), str(workdir))
  assert snapshot(workdir) == before
  assert_in_readme(error_line(error.value), DIR=workdir)


@_ORBAX_ABANDONED_READS
def test_evaluate_names_a_damaged_checkpoint_and_the_older_one(reference, copy_of):
  workdir = copy_of(reference)
  # Every data file: evaluation reads the parameters only, wherever they are.
  for path in glob.glob(str(workdir / 'checkpoints' / str(STEPS) / 'state' / '**' / 'd' / '*'),
                        recursive=True):
    truncate(path)
  before = snapshot(workdir)
  with pytest.raises(errors.CheckpointError,
                     match=rf'step {STEPS} .* is damaged .*--step={STEPS - 4}') as error:
    evaluate.evaluate_run(str(workdir))
  assert snapshot(workdir) == before
  assert_in_readme(cli.error_line('vgg_jax.evaluate', error.value), DIR=workdir)


def test_a_workdir_of_other_things_is_refused_and_a_sweep_point_s_is_not(data_dir, tmp_path):
  others = tmp_path / 'sweep_root'
  (others / 'variant=A,seed=0').mkdir(parents=True)
  (others / 'README.md').write_text('results')
  before = snapshot(others)
  with pytest.raises(ValueError, match=r'holds other things \(README.md, variant=A,seed=0\)'
                     ) as error:
    train.train_and_evaluate(tiny_config(data_dir, **RUN), str(others))
  assert snapshot(others) == before
  assert_in_readme(error_line(error.value), DIR=others)
  point = tmp_path / 'point'  # as experiments.sweep prepares one, and as a run leaves it
  point.mkdir()
  for name in (run_files.POINT_FILE, run_files.LOG_FILE, f'{run_files.EVENTS_PREFIX}1.vm.2',
               '.hidden'):
    (point / name).write_text('')
  (point / run_files.CHECKPOINT_DIR).mkdir()
  resume.check_own(str(point))


@pytest.mark.slow  # trains a run
def test_imported_weights_become_a_run_that_evaluates_and_fine_tunes(data_dir, tmp_path):
  """`start_run_from` (what `python -m vgg_jax.convert` writes): a run at step 0
  that evaluates, and trains on from the given weights (at learning rate 0 they
  stay exactly the given ones)."""
  config = tiny_config(data_dir, **{**RUN, 'num_train_steps': 4, 'eval_every_steps': 4})
  config.optimizer.learning_rate = 0.0
  model = VGG.from_config(config.model, data.dataset_info(config.data).num_classes,
                          config.data.image_size)
  size = config.data.image_size
  imported = jax.tree.map(np.asarray, model.init(jax.random.key(7), np.zeros((1, size, size, 3))))
  workdir = str(tmp_path / 'imported')
  train.start_run_from(imported, config, workdir)

  assert checkpoints.available_steps(workdir) == [0]
  restored = checkpoints.restore_variables(workdir)
  jax.tree.map(np.testing.assert_array_equal, restored, imported)
  assert evaluate.evaluate_run(workdir)['step'] == 0
  train.train_and_evaluate(config, workdir)
  jax.tree.map(np.testing.assert_array_equal, checkpoints.restore_variables(workdir, 4)['params'],
               imported['params'])
  with pytest.raises(ValueError, match='holds a run already'):
    train.start_run_from(imported, config, workdir)
  config.model.width /= 2
  with pytest.raises(ValueError, match=r'the weights do not fit .*: params/bn1_1/bias'):
    train.start_run_from(imported, config, str(tmp_path / 'narrower'))
  assert not os.path.exists(tmp_path / 'narrower')


def test_a_schedule_shorter_than_the_run_stops_and_changes_nothing(reference, data_dir,
                                                                   copy_of):
  workdir = copy_of(reference)
  before = snapshot(workdir)
  with pytest.raises(ValueError, match=f'trained to step {STEPS}, past') as error:
    train.train_and_evaluate(tiny_config(data_dir, **{**RUN, 'num_train_steps': STEPS // 2}),
                             str(workdir))
  assert snapshot(workdir) == before
  assert_in_readme(error_line(error.value), DIR=workdir)


def test_evaluate_names_a_damaged_config_file(reference, copy_of):
  workdir = copy_of(reference)
  config = workdir / run_files.CONFIG_FILE
  config.write_text(config.read_text()[:50])  # cut off, as by a copy that stopped
  before = snapshot(workdir)
  with pytest.raises(ValueError, match='is damaged') as error:
    evaluate.evaluate_run(str(workdir))
  assert snapshot(workdir) == before
  assert_in_readme(cli.error_line('vgg_jax.evaluate', error.value), DIR=workdir)


# --------------------------------------------------------------------------
# 5: changed configuration.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('override, shown', [
    ({'model.width': 0.125}, 'model.width: 0.0625 -> 0.125'),
    ({'data.train_scale': (40, 64)}, 'data.train_scale: [32, 64] -> [40, 64]'),
    ({'optimizer.learning_rate': 0.5}, 'optimizer.learning_rate: 0.05 -> 0.5'),
    ({'seed': 1}, 'seed: 0 -> 1'),
    ({'label_smoothing': 0.1}, 'label_smoothing: 0.0 -> 0.1'),
])
def test_resuming_with_a_config_that_changes_the_experiment_is_refused(
    reference, data_dir, override, shown):
  before = snapshot(reference)
  with pytest.raises(ValueError, match='holds a run with a different config') as error:
    train.train_and_evaluate(tiny_config(data_dir, **RUN, **override), str(reference))
  line = error_line(error.value)
  assert f'({shown}): ' in line and '--allow_config_change' in line
  assert snapshot(reference) == before
  assert_in_readme(line, DIR=reference)


def test_allowing_a_change_does_not_resume_another_model(reference, data_dir):
  before = snapshot(reference)
  with pytest.raises(errors.CheckpointError, match='hold another model') as error:
    train.train_and_evaluate(tiny_config(data_dir, **RUN, **{'model.width': 0.125}),
                             str(reference), allow_config_change=True)
  assert snapshot(reference) == before
  assert_in_readme(error_line(error.value), DIR=reference)


def test_longer_schedules_and_other_loop_settings_may_change(reference, data_dir):
  config = tiny_config(data_dir, **{**RUN, 'num_train_steps': 2 * STEPS, 'log_every_steps': 8,
                                    'keep_checkpoints': 5, 'data.data_dir': '/elsewhere'})
  changes = resume.check_config(str(reference), config)
  assert 'num_train_steps: 24 -> 48' in changes and len(changes) == 4
  config.model.width = 0.5
  assert resume.check_config(str(reference), config, allow_change=True)  # the flag


# --------------------------------------------------------------------------
# 6: bad input.
# --------------------------------------------------------------------------


def in_child(fn, unprivileged=False):
  """What `fn()` says when run in a forked copy of this process.

  Its SystemExit message, the error line of its exception, or 'no error'.
  The child starts from this process's state (absl's flags unparsed) and
  touches nothing of the parent's. With `unprivileged` it runs as user nobody
  if this is root, which ignores permission bits.
  """
  read_end, write_end = os.pipe()
  with warnings.catch_warnings():  # JAX warns of fork; the child runs no JAX code
    warnings.simplefilter('ignore', RuntimeWarning)
    pid = os.fork()
  if pid == 0:  # the child: plain Python only (no JAX), then leave at once
    try:
      os.close(read_end)
      if unprivileged and os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
      try:
        fn()
        message = 'no error'
      except SystemExit as e:
        message = str(e.code)
      except Exception as e:  # pylint: disable=broad-except
        message = error_line(e)
      os.write(write_end, message.encode())
    finally:
      os._exit(0)  # pylint: disable=protected-access
  os.close(write_end)
  deadline = time.monotonic() + 60
  while os.waitpid(pid, os.WNOHANG) == (0, 0):
    if time.monotonic() > deadline:
      os.kill(pid, signal.SIGKILL)
      raise TimeoutError('the child process hung')
    time.sleep(0.01)
  with os.fdopen(read_end) as f:
    return f.read()


def parse_train_flags(*args):
  """What `python -m vgg_jax.train ARGS` says about its flags (parsed as there)."""

  def parse():
    sys.argv = ['vgg_jax.train', *args]  # where ml_collections looks for --config.* flags
    command = train._define_flags()  # pylint: disable=protected-access
    cli.flags_parser('vgg_jax.train', command.config)(sys.argv)

  return in_child(parse)


def test_flag_errors_are_one_line(tmp_path):
  good = [f'--config={CONFIG_FILE}', f'--workdir={tmp_path / "w"}']
  syntax_error = tmp_path / 'broken.py'
  syntax_error.write_text('def get_config(:\n')
  cases = [
      good + ['--bogus'],
      good + ['extra'],
      good[:1],
      good + ['--config.model.varient=D'],
      good + ['--config.batch_size=abc'],
      [f'--config={tmp_path / "nope.py"}', good[1]],
      [f'--config={syntax_error}', good[1]],
      [f'--config={CONFIG_FILE}:D', good[1]],  # default.py's get_config takes no string
      [f'--config={os.path.join(REPO, "configs/cifar10.py")}:D,S=20', good[1]],
  ]
  for args in cases:
    line = parse_train_flags(*args)
    assert line.startswith(TRAIN_ERROR) and '\n' not in line, line
    assert 'Traceback' not in line, line
    assert_in_readme(line.replace(CONFIG_FILE, 'configs/default.py').replace(
        os.path.join(REPO, 'configs/cifar10.py'), 'configs/cifar10.py'), DIR=tmp_path)
  assert parse_train_flags(*good) == 'no error'
  assert not (tmp_path / 'w').exists()


def test_a_command_with_one_positional_argument_names_it_when_it_is_missing():
  parse = cli.flags_parser('experiments.report', usage='DIR')
  usage = 'python -m experiments.report DIR [--flags]'
  assert in_child(lambda: parse(['experiments.report'])) == (
      f'experiments.report: error: one DIR expected: {usage}')
  assert in_child(lambda: parse(['experiments.report', 'a', 'b'])) == (
      f'experiments.report: error: only one DIR expected: {usage}')
  assert in_child(lambda: parse(['experiments.report', 'a'])) == 'no error'


@pytest.mark.slow
def test_the_command_line_reports_flag_errors_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'vgg_jax.train', f'--config={CONFIG_FILE}',
                         f'--workdir={tmp_path}', '--config.model.varient=D'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == parse_train_flags(
      f'--config={CONFIG_FILE}', f'--workdir={tmp_path}', '--config.model.varient=D')


@pytest.mark.parametrize('override', [
    {'model.variant': 'F'},
    {'batch_size': 12},
    {'data.image_size': 48},
    {'optimizer.schedule': 'exponential'},
    {'data.flip': 'sometimes'},
    {'optimizer.first_conv': 'frozen'},
    {'data.name': 'no_such_dataset_xyz'},
    {'data.name': 'image_folder', 'data.folder': '/nonexistent/folder'},
    {'num_train_steps': -1, 'num_epochs': -1.0},
    {'keep_checkpoints': 0},
    {'optimizer.momentum': 1.5},
    {'optimizer.learning_rate': -0.1},
    {'model.dropout_rate': 1.5},
    {'model.fc_width': 0},
    {'model.dtype': 'float33'},
    {'data.mean_rgb': (1, 2)},
])
def test_bad_config_values(data_dir, tmp_path, override):
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(tiny_config(data_dir, **{**RUN, **override}), str(tmp_path / 'w'))
  assert_in_readme(error_line(error.value))
  assert not (tmp_path / 'w').exists()


def test_the_config_is_checked_before_the_dataset_is_opened(data_dir, tmp_path, monkeypatch):
  """A typo fails at once, not after a dataset's download (minutes, or a network
  error that would hide it)."""
  def no_dataset(cfg):
    raise AssertionError('the dataset was opened before the config was checked')
  monkeypatch.setattr(data, 'dataset_info', no_dataset)
  for override in ({'model.variant': 'F'}, {'model.head': 'gapp'}, {'keep_checkpoints': 0}):
    with pytest.raises(ValueError):
      train.train_and_evaluate(tiny_config(data_dir, **{**RUN, **override}),
                               str(tmp_path / 'w'))


def test_a_dataset_that_cannot_be_downloaded_is_one_line(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def offline(self, *args, **kwargs):
    raise ConnectionError("HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): "
                          'Max retries exceeded')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
  config = tiny_config(tmp_path / 'tfds', **RUN)
  config.data.update(name='cifar10', builder_config=None)
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert_in_readme(error_line(error.value), DIR=tmp_path / 'tfds')
  assert not (tmp_path / 'w').exists()


def test_a_second_run_in_a_workdir_in_use_stops_and_changes_nothing(reference, data_dir,
                                                                     copy_of):
  workdir = copy_of(reference)
  before = snapshot(workdir)
  with run_files.exclusive(str(workdir)):  # the run already training there
    with pytest.raises(errors.WorkdirInUse) as error:
      train.train_and_evaluate(tiny_config(data_dir, **RUN), str(workdir))
    assert f'(process {os.getpid()})' in str(error.value)
    assert_in_readme(error_line(error.value), DIR=workdir)
  assert snapshot(workdir) == before
  with run_files.exclusive(str(workdir)):  # released when the block ended
    pass


def make_image_folder(root, size=8):
  """Two classes of 8x8 images: smaller than the 32x32 crop."""
  rng = np.random.default_rng(0)
  for split, count in (('train', 8), ('test', 4)):
    for name in ('a', 'b'):
      os.makedirs(root / split / name)
      for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f'{i}.png')
  return root


def folder_config(data_dir, folder, **extra):
  return tiny_config(data_dir, **{**RUN, 'data.name': 'image_folder',
                                  'data.folder': str(folder), 'num_train_steps': 2, **extra})


def test_images_smaller_than_the_crop_are_rescaled_up(data_dir, tmp_path):
  folder = make_image_folder(tmp_path / 'images')
  batch = next(data.train_batches(folder_config(data_dir, folder).data, global_batch_size=16,
                                  seed=0))
  assert batch['image'].shape == (16, 32, 32, 3)


def test_a_file_that_is_no_image_stops_the_run_naming_it(data_dir, tmp_path):
  folder = make_image_folder(tmp_path / 'images')
  (folder / 'train' / 'a' / 'notes.jpg').write_text('not an image')
  before = snapshot(folder)
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(folder_config(data_dir, folder), str(tmp_path / 'w'))
  assert_in_readme(error_line(error.value), FOLDER=folder)
  assert snapshot(folder) == before
  assert not run_files.has_checkpoints(str(tmp_path / 'w'))


@pytest.mark.parametrize('make_bad', [
    lambda root: shutil.rmtree(root / 'test' / 'b'),
    lambda root: [os.remove(p) for p in glob.glob(str(root / 'test' / 'a' / '*'))],
    lambda root: shutil.move(root / 'train', root / 'training'),
    lambda root: [shutil.rmtree(root / 'train' / c) for c in 'ab'],
], ids=['missing class', 'empty class', 'no train split', 'no classes'])
def test_badly_laid_out_image_folders(data_dir, tmp_path, make_bad):
  folder = make_image_folder(tmp_path / 'images')
  make_bad(folder)
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(folder_config(data_dir, folder), str(tmp_path / 'w'))
  assert_in_readme(error_line(error.value), FOLDER=folder)
  assert not (tmp_path / 'w').exists()


def test_unwritable_workdir_and_unreadable_image(data_dir, tmp_path):
  # Under /tmp, not pytest's private directory, so that user nobody can reach it.
  base = tempfile.mkdtemp(prefix='vgg_jax_test_')
  try:
    os.chmod(base, 0o555)
    line = in_child(
        lambda: train.train_and_evaluate(tiny_config(data_dir, **RUN), base),
        unprivileged=True)
    assert_in_readme(line, DIR=base)
    assert os.listdir(base) == []

    os.chmod(base, 0o755)
    image = os.path.join(base, 'secret.png')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    os.chmod(image, 0o000)
    line = in_child(lambda: data.transforms.decode(image), unprivileged=True)
    assert_in_readme(line)
  finally:
    os.chmod(base, 0o755)
    shutil.rmtree(base)

  afile = tmp_path / 'afile'
  afile.write_text('')
  with pytest.raises(NotADirectoryError) as error:
    train.train_and_evaluate(tiny_config(data_dir, **RUN), str(afile / 'w'))
  assert_in_readme(error_line(error.value), DIR=tmp_path)


def test_evaluate_refuses_checkpoints_of_another_model(reference, copy_of):
  workdir = copy_of(reference)
  config = json.load(open(workdir / 'config.json'))
  config['model']['variant'] = 'B'  # config.json of another run than the checkpoints'
  json.dump(config, open(workdir / 'config.json', 'w'))
  before = snapshot(workdir)
  with pytest.raises(errors.CheckpointError, match='does not fit the model') as error:
    evaluate.evaluate_run(str(workdir))
  assert snapshot(workdir) == before
  assert_in_readme(cli.error_line('vgg_jax.evaluate', error.value), DIR=workdir)


# --------------------------------------------------------------------------
# 8: nothing is unpickled.
# --------------------------------------------------------------------------


def test_no_pickle_anywhere():
  sources = glob.glob(os.path.join(REPO, 'vgg_jax', '**', '*.py'), recursive=True)
  sources += glob.glob(os.path.join(REPO, 'configs', '**', '*.py'), recursive=True)
  for path in sources:
    text = open(path).read()
    assert not re.search(r'^\s*(import|from)\s+(pickle|dill|cloudpickle|joblib)\b', text, re.M)
    assert not re.search(r'pickle\.loads?\(|allow_pickle\s*=\s*True', text), path
    for call in re.findall(r'torch\.load\([^)]*\)', text):
      assert 'weights_only=True' in call, (path, call)


def test_torch_files_are_loaded_weights_only(tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  from vgg_jax import convert  # pylint: disable=import-outside-toplevel
  torch.save({'features.0.weight': torch.ones(2)}, tmp_path / 'weights.pth')
  assert convert.load_torch_file(tmp_path / 'weights.pth')['features.0.weight'].sum() == 2
  marker = tmp_path / 'ran'
  torch.save({'x': _RunsCodeWhenUnpickled(str(marker))}, tmp_path / 'crafted.pth')
  with pytest.raises(ValueError, match='holds objects besides tensors'):
    convert.load_torch_file(tmp_path / 'crafted.pth')
  assert not marker.exists()
  with pytest.raises(FileNotFoundError, match='nope.pth: no such file; pass a state_dict'):
    convert.load_torch_file(tmp_path / 'nope.pth')


class _RunsCodeWhenUnpickled:

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))
