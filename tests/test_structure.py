"""The code's structure (issue #13): libraries define no flags, imports go one way.

Each check runs where it cannot be fooled by what the test process has
already imported: in a fresh Python process, or on the source text itself.
"""

import ast
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from vgg_jax import workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports every module of vgg_jax and experiments after absl and ml_collections'
# own flag-defining modules; prints each flag that appeared and the module
# absl says defined it.
IMPORT_EVERYTHING = '''
import importlib, pkgutil
import absl.app, absl.logging
from absl import flags
from ml_collections import config_flags
import experiments, vgg_jax

before = set(flags.FLAGS)
for package in (vgg_jax, experiments):
  for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
    importlib.import_module(module.name)
for name in sorted(set(flags.FLAGS) - before):
  print(name, flags.FLAGS.find_module_defining_flag(name))
'''


@pytest.mark.slow  # subprocesses
def test_importing_any_module_of_the_project_defines_no_flag():
  """Flags belong to the command lines' entry points: a library (or a module a
  test or another command imports) that defines them clashes with the flags of
  whoever imports it. TensorFlow, which some modules import, defines flags of
  its own; only those defined by the project's modules count."""
  proc = subprocess.run([sys.executable, '-c', IMPORT_EVERYTHING], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  defined = dict(line.split() for line in proc.stdout.splitlines())
  own = {name: module for name, module in defined.items()
         if module.split('.')[0] in ('vgg_jax', 'experiments', '__main__')}
  assert not own, f'flags defined on import: {own}'


# --------------------------------------------------------------------------
# The run directory: one module, light enough for the sweeps' launcher.
# --------------------------------------------------------------------------


def test_the_workdir_module_imports_no_tensorflow():
  code = ('import sys, vgg_jax.workdir; '
          'assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if "tensorflow" in m)')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]


# Writes two large JSON values to one path, in turns, until killed.
WRITE_FOREVER = '''
import sys
from vgg_jax import workdir
path, size = sys.argv[1], int(sys.argv[2])
values = [{'which': which, 'numbers': [which] * size} for which in (0, 1)]
turn = 0
while True:
  workdir.write_json(path, values[turn % 2])
  turn += 1
'''


@pytest.mark.slow  # subprocesses
def test_an_atomic_json_write_survives_sigkill_at_any_moment(tmp_path):
  """Whenever a writer dies, the file is one of the values written, whole."""
  size = 600_000  # about 4 MB of indented JSON: a write takes a while
  path = tmp_path / 'result.json'
  expected = [{'which': which, 'numbers': [which] * size} for which in (0, 1)]
  rng = random.Random(0)
  for kill in range(5):
    writer = subprocess.Popen([sys.executable, '-c', WRITE_FOREVER, str(path), str(size)],
                              cwd=REPO)
    try:
      deadline = time.monotonic() + 120
      while not path.exists():
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, 0.6))  # a write takes 0.3 s: any moment of two
    finally:
      writer.send_signal(signal.SIGKILL)
      writer.wait()
    with open(path) as f:
      assert json.load(f) in expected, f'kill {kill}'
    others = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(name.startswith('.') and name.endswith('.tmp') for name in others), others
    assert [p.name for p in tmp_path.glob('*.json')] == ['result.json']


def test_an_atomic_file_left_by_an_error_leaves_the_old_one(tmp_path):
  path = tmp_path / 'plot.png'
  path.write_bytes(b'old')
  with pytest.raises(ZeroDivisionError):
    with workdir.atomic_file(str(path), binary=True) as f:
      f.write(b'half a new')
      1 / 0  # pylint: disable=pointless-statement
  assert path.read_bytes() == b'old' and [p.name for p in tmp_path.iterdir()] == ['plot.png']
  with workdir.atomic_file(str(path), binary=True) as f:
    f.write(b'new')
  assert path.read_bytes() == b'new' and [p.name for p in tmp_path.iterdir()] == ['plot.png']


def test_metrics_of_a_run_killed_mid_line_read_without_the_cut_line(tmp_path):
  lines = ['{"step": 4, "loss": 2.0}', '{"step": 8, "loss": 1.5}', '{"step": 12, "lo']
  (tmp_path / workdir.METRICS_FILE).write_text('\n'.join(lines))
  assert workdir.read_metrics(str(tmp_path)) == [{'step': 4, 'loss': 2.0},
                                                  {'step': 8, 'loss': 1.5}]
  (tmp_path / workdir.METRICS_FILE).write_text('\n'.join([lines[0], lines[2], lines[1]]))
  with pytest.raises(ValueError, match=r'metrics.jsonl, line 2, is not a metrics record'):
    workdir.read_metrics(str(tmp_path))
  assert workdir.read_metrics(str(tmp_path / 'no run')) == []


# --------------------------------------------------------------------------
# Imports go one way.
# --------------------------------------------------------------------------

PACKAGES = ('vgg_jax', 'experiments')


def project_modules() -> dict:
  """{module name: source path} of every module of the project's packages."""
  modules = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(REPO, package)):
      for file in files:
        if file.endswith('.py'):
          path = os.path.join(directory, file)
          parts = os.path.relpath(path, REPO)[:-len('.py')].split(os.sep)
          modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return modules


def _is_main_block(node) -> bool:
  test = node.test if isinstance(node, ast.If) else None
  return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
          and test.left.id == '__name__')


def imported_names(tree, module: str, is_package: bool) -> set:
  """Dotted names imported anywhere in a module, functions included, except in
  its `if __name__ == '__main__':` block: that code runs as the module
  `__main__`, which nothing imports, so it cannot close a cycle."""
  names, stack = set(), [tree]
  while stack:
    node = stack.pop()
    if _is_main_block(node):
      continue
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative: from the module's own package upwards
        package = module.split('.')[:len(module.split('.')) - (not is_package)]
        base = '.'.join(package[:len(package) - node.level + 1] + ([base] if base else []))
      names.update(f'{base}.{alias.name}' for alias in node.names)
      names.add(base)
    stack.extend(ast.iter_child_nodes(node))
  return names


def import_graph() -> dict:
  """{module: modules of the project it imports}. Importing a.b.c also runs a and
  a.b, so those count too, except for a module inside them (a package's own
  modules import their siblings while the package initialises)."""
  modules = project_modules()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith('__init__.py')
    targets = set()
    for name in imported_names(tree, module, is_package):
      parts = name.split('.')
      for end in range(1, len(parts) + 1):
        target = '.'.join(parts[:end])
        inside = (module + '.').startswith(target + '.')
        if target in modules and target != module and not inside:
          targets.add(target)
    graph[module] = targets
  return graph


def find_cycle(graph: dict):
  """One cycle of `graph` as [a, b, ..., a], or None."""
  state, path = {}, []

  def visit(node):
    state[node] = 'open'
    path.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 'open':
        return path[path.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    state[node] = 'done'
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_no_module_imports_a_module_that_imports_it_back():
  graph = import_graph()
  assert 'experiments.point' in graph['experiments.sweep']  # the launcher imports the worker
  assert 'vgg_jax.workdir' in graph['experiments.point']
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None


def app_run_calls() -> dict:
  """{module: [each `app.run(...)` call]} over the project's modules."""
  calls = {}
  for module, path in project_modules().items():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == 'run' and isinstance(node.func.value, ast.Name)
          and node.func.value.id == 'app'):
        calls.setdefault(module, []).append(node)
  return calls


def test_every_command_reports_flag_errors_in_one_line():
  """Each `python -m` command parses its flags with `cli.flags_parser`, named after
  itself: absl's own parser prints two lines, or the whole help."""
  calls = app_run_calls()
  assert {'vgg_jax.train', 'vgg_jax.evaluate', 'experiments.sweep'} <= set(calls)
  for module, nodes in calls.items():
    for node in nodes:
      parser = next((k.value for k in node.keywords if k.arg == 'flags_parser'), None)
      assert (isinstance(parser, ast.Call) and ast.unparse(parser.func) == 'cli.flags_parser'
              and ast.literal_eval(parser.args[0]) == module), (module, ast.unparse(node))
