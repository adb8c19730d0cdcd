"""The commands' restart with glibc's malloc tunables (`vgg_jax.malloc_tunables`)."""

import os
import platform
import subprocess
import sys

import pytest

from vgg_jax import malloc_tunables

LINUX = dict(platform='linux', glibc=(2, 36), thp='madvise')
KEEP = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184'


@pytest.mark.parametrize('environ, machine, want', [
    ({}, LINUX, f'glibc.malloc.hugetlb=1:{KEEP}'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, LINUX,
     f'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:{KEEP}'),
    # The user's own choice of a tunable stands, and so does the switch.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, LINUX, f'glibc.malloc.hugetlb=0:{KEEP}'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=4:glibc.malloc.hugetlb=1'}, LINUX,
     'glibc.malloc.mmap_max=4:glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=17179869184'),
    ({'GLIBC_TUNABLES': f'glibc.malloc.hugetlb=1:{KEEP}'}, LINUX, None),
    ({'VGG_JAX_MALLOC_TUNABLES': '0'}, LINUX, None),
    # Restarted already: never twice.
    ({'VGG_JAX_USERS_GLIBC_TUNABLES': ''}, LINUX, None),
    # Huge pages only where malloc's madvise gives them.
    ({}, dict(LINUX, thp='always'), KEEP),
    ({}, dict(LINUX, thp='never'), KEEP),
    ({}, dict(LINUX, thp=None), KEEP),
    ({}, dict(LINUX, glibc=(2, 34)), KEEP),
    # Where it would change nothing.
    ({}, dict(LINUX, glibc=(2, 25)), None),
    ({}, dict(LINUX, glibc=None), None),
    ({}, dict(LINUX, platform='darwin'), None),
])
def test_when_a_command_restarts_and_with_what(environ, machine, want):
  assert malloc_tunables.tunables_to_restart_with(environ, **machine) == want


def test_glibc_version_is_the_c_library_s():
  library, version = platform.libc_ver()  # another way to ask: the binary's own notes
  want = tuple(int(n) for n in version.split('.')[:2]) if library == 'glibc' else None
  assert malloc_tunables.glibc_version() == want


@pytest.mark.parametrize('text, want', [('always [madvise] never\n', 'madvise'),
                                        ('[always] madvise never\n', 'always'),
                                        ('always madvise [never]\n', 'never'),
                                        (None, None)])
def test_thp_mode_is_the_bracketed_one(tmp_path, monkeypatch, text, want):
  path = tmp_path / 'enabled'
  if text is not None:
    path.write_text(text)
  monkeypatch.setattr(malloc_tunables, '_THP_MODE_FILE', str(path))
  assert malloc_tunables.thp_mode() == want


_SHOW = ('from vgg_jax import malloc_tunables; malloc_tunables.restart_with_tunables(); import os; '
         'print(os.environ.get("GLIBC_TUNABLES"), os.environ.get("VGG_JAX_USERS_GLIBC_TUNABLES"))')


_THIS_MACHINE = dict(platform=sys.platform, glibc=malloc_tunables.glibc_version(),
                     thp=malloc_tunables.thp_mode())


def _run(code, **env) -> str:
  """`code`'s stdout in a new Python process, from an environment without our variables."""
  base = {k: v for k, v in os.environ.items()
          if k not in ('GLIBC_TUNABLES', malloc_tunables.USERS_TUNABLES_ENV, malloc_tunables.SWITCH_ENV)}
  return subprocess.run([sys.executable, '-c', code], env={**base, **env}, check=True,
                        capture_output=True, text=True).stdout


def test_the_restarted_process_has_the_tunable_and_remembers_the_users():
  want = malloc_tunables.tunables_to_restart_with({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'},
                                                  **_THIS_MACHINE)
  got = _run(_SHOW, GLIBC_TUNABLES='glibc.malloc.arena_max=4').split()
  if want is None:  # a machine where a restart changes nothing: none happens
    assert got == ['glibc.malloc.arena_max=4', 'None']
  else:
    assert got == [want, 'glibc.malloc.arena_max=4']
  assert _run(_SHOW, VGG_JAX_MALLOC_TUNABLES='0').split() == ['None', 'None']


def test_other_programs_get_the_users_tunables(monkeypatch):
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')
  monkeypatch.setenv(malloc_tunables.USERS_TUNABLES_ENV, '')
  assert malloc_tunables.users_tunables() is None
  with malloc_tunables.users_environment():
    assert 'GLIBC_TUNABLES' not in os.environ
  assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  monkeypatch.setenv(malloc_tunables.USERS_TUNABLES_ENV, 'glibc.malloc.arena_max=4')
  with malloc_tunables.users_environment():
    assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=4'
  assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'


_FAULTS = ('from vgg_jax import malloc_tunables; malloc_tunables.restart_with_tunables()\n'
           'import resource, numpy as np\n'
           'def faults():\n'
           '  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
           'counts = []\n'
           'for _ in range(4):\n'
           '  start = faults()\n'
           '  np.ones(16 << 20, np.float32)  # 64 MiB, above any mmap threshold, freed\n'
           '  counts.append(faults() - start)\n'
           'print(max(counts[1:]))\n')


@pytest.mark.skipif(malloc_tunables.tunables_to_restart_with({}, **_THIS_MACHINE) is None,
                    reason='glibc >= 2.26 on Linux only')
def test_a_step_s_large_buffers_reuse_the_last_step_s_pages():
  # XLA's per-step buffers are such blocks: freed and taken again every step.
  assert int(_run(_FAULTS)) < 16  # kept in malloc's heap: no new pages
  # Mapped afresh: 32 huge or 16,384 small pages.
  assert int(_run(_FAULTS, VGG_JAX_MALLOC_TUNABLES='0')) > 16
