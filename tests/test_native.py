"""vgg_jax.native: the C++ libraries' build, from several files, once per key."""

import ctypes
import shutil

import pytest

from vgg_jax import native

pytestmark = pytest.mark.skipif(not (shutil.which('g++') or shutil.which('c++')),
                                reason='no C++ compiler')

_FLAGS = ('-O1', '-shared', '-fPIC')


def sources(root, second_body='return 2 * x;'):
  first, second = root / 'first.cc', root / 'second.cc'
  first.write_text('extern "C" int first(int x) { return x + 1; }\n')
  second.write_text(f'extern "C" int second(int x) {{ {second_body} }}\n')
  return [first, second]


def test_files_compiled_side_by_side_make_one_library_built_once(tmp_path, monkeypatch):
  monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path / 'build'))
  files = sources(tmp_path)
  path = native.build('pair', files, _FLAGS)
  lib = ctypes.CDLL(str(path))
  assert (lib.first(41), lib.second(21)) == (42, 42)
  built = path.stat().st_mtime_ns
  assert native.build('pair', files, _FLAGS) == path and path.stat().st_mtime_ns == built
  assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, f'{path.stem}.lock'])


def test_a_failing_file_is_named_and_nothing_is_left_to_load(tmp_path, monkeypatch):
  monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path / 'build'))
  with pytest.raises(RuntimeError, match=r'(?s)second\.cc -o .* failed:\n.*second\.cc:1:.*error'):
    native.build('pair', sources(tmp_path, second_body='return x +;'), _FLAGS)
  assert not list((tmp_path / 'build').glob('*.so'))


def test_the_files_compile_at_once(tmp_path, monkeypatch):
  # A compiler that takes one file per call (-c) and waits, up to 20 s, until
  # every file's call has started: one after the other (or all files in one
  # call, which compiles them in turn), it fails.
  files = sources(tmp_path)
  compiler = tmp_path / 'cxx'
  compiler.write_text(
      '#!/bin/sh\n'
      'for a; do case "$a" in *.cc) touch "$a.started";; esac; done\n'
      'case " $* " in\n'
      '  *" -c "*)\n'
      '    i=0\n'
      f'    while [ "$(ls {tmp_path}/*.started | wc -l)" -lt {len(files)} ]; do\n'
      '      i=$((i + 1)); [ $i -gt 400 ] && exit 3; sleep 0.05\n'
      '    done;;\n'
      '  *.cc" "*) exit 4;;\n'
      'esac\n'
      f'exec {shutil.which("g++") or shutil.which("c++")} "$@"\n')
  compiler.chmod(0o755)
  monkeypatch.setenv('CXX', str(compiler))
  monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path / 'build'))
  lib = ctypes.CDLL(str(native.build('pair', files, _FLAGS)))
  assert (lib.first(1), lib.second(1)) == (2, 2)
