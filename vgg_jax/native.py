"""Compiles the project's C++ files on first use and caches the shared library.

A wheel per platform would need a build farm this project does not have; the
machine's C++ compiler builds each library once per source, flags and whatever
else the caller names (`key_parts`), into $VGG_JAX_NATIVE_DIR (default
$XDG_CACHE_HOME or ~/.cache, then vgg_jax/native). A file lock keeps
concurrent processes from building one library twice, and the file appears
whole or not at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable, Optional, Sequence

from absl import logging

BUILD_DIR_ENV = 'VGG_JAX_NATIVE_DIR'


def build_dir() -> pathlib.Path:
  if os.environ.get(BUILD_DIR_ENV):
    return pathlib.Path(os.environ[BUILD_DIR_ENV])
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'vgg_jax' / 'native'


def _compiler() -> str:
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not compiler:
    raise FileNotFoundError('no C++ compiler (g++ or $CXX) on PATH')
  return compiler


def _run(commands: Sequence[Sequence[str]]) -> None:
  """Runs the compiler commands at once; raises the first failure, with its command."""
  running = [(command, subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
             for command in commands]
  failure = None
  for command, proc in running:
    _, stderr = proc.communicate()
    if proc.returncode and failure is None:
      failure = f'{" ".join(command)} failed:\n{stderr[-2000:]}'
  if failure:
    raise RuntimeError(failure)


def _compile(output: pathlib.Path, sources: Sequence[pathlib.Path],
             arguments: Sequence[str], link: Sequence[str]) -> None:
  compiler = _compiler()
  with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
    built = pathlib.Path(scratch) / output.name
    # Each file on its own core, then one link: most of a file's compile is
    # parsing the same headers (XLA's FFI, oneDNN's), so on two cores two files
    # take the time of one.
    objects = [pathlib.Path(scratch) / f'{i}-{source.stem}.o' for i, source in enumerate(sources)]
    _run([[compiler, *arguments, '-c', str(source), '-o', str(obj)]
          for source, obj in zip(sources, objects)])
    _run([[compiler, *arguments, *map(str, objects), *link, '-o', str(built)]])
    os.replace(built, output)  # whole or absent: other processes may load it now


def build(name: str, sources: Sequence[pathlib.Path], arguments: Sequence[str],
          link: Sequence[str] = (), key_parts: Sequence[str] = ()) -> pathlib.Path:
  """The library `name`: `sources` compiled with `arguments`, linked with `link`."""
  key = hashlib.sha256(b'\0'.join([
      *(source.read_bytes() for source in sources), ' '.join([*arguments, *link]).encode(),
      *(part.encode() for part in key_parts)])).hexdigest()[:16]
  directory = build_dir()
  directory.mkdir(parents=True, exist_ok=True)
  output = directory / f'{name}-{key}.so'
  if not output.exists():
    with open(directory / f'{name}-{key}.lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not output.exists():
        _compile(output, sources, arguments, link)
  return output


def unavailable_reason(switch_env: str, load: Callable[[], object], instead: str,
                       requirement: Optional[str] = None) -> Optional[str]:
  """None where `load()` (building and loading a library) succeeds, else why not:
  `switch_env` set to 0, the unmet `requirement` (a reason, or None when met), or
  the failure, which is logged once with what is used `instead`."""
  if os.environ.get(switch_env, '1') in ('0', ''):
    return f'{switch_env}=0'
  if requirement:
    return requirement
  try:
    load()
  except (OSError, RuntimeError, AttributeError) as e:
    logging.warning('%s: %s', instead, e)
    return str(e)
  return None
