"""The commands' restart with glibc's huge-page tunable (`vgg_jax.huge_pages`)."""

import os
import subprocess
import sys

import pytest

from vgg_jax import huge_pages

LINUX = dict(platform='linux', glibc=(2, 36), thp='madvise')


@pytest.mark.parametrize('environ, machine, want', [
    ({}, LINUX, 'glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, LINUX,
     'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'),
    # The user's own choice of the tunable stands, and so does the switch.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, LINUX, None),
    ({'VGG_JAX_HUGE_PAGES': '0'}, LINUX, None),
    # Restarted already: never twice.
    ({'VGG_JAX_USERS_GLIBC_TUNABLES': ''}, LINUX, None),
    # Where it would change nothing.
    ({}, dict(LINUX, thp='always'), None),
    ({}, dict(LINUX, thp='never'), None),
    ({}, dict(LINUX, thp=None), None),
    ({}, dict(LINUX, glibc=(2, 34)), None),
    ({}, dict(LINUX, glibc=None), None),
    ({}, dict(LINUX, platform='darwin'), None),
])
def test_when_a_command_restarts_and_with_what(environ, machine, want):
  assert huge_pages.tunables_to_restart_with(environ, **machine) == want


def test_glibc_version_and_thp_mode_are_read_or_none():
  version = huge_pages.glibc_version()
  assert version is None or (len(version) == 2 and version >= (2, 0))
  assert huge_pages.thp_mode() in (None, 'always', 'madvise', 'never')


_SHOW = ('from vgg_jax import huge_pages; huge_pages.restart_with_huge_pages(); import os; '
         'print(os.environ.get("GLIBC_TUNABLES"), os.environ.get("VGG_JAX_USERS_GLIBC_TUNABLES"))')


def _run(**env):
  base = {k: v for k, v in os.environ.items()
          if k not in ('GLIBC_TUNABLES', huge_pages.USERS_TUNABLES_ENV, huge_pages.SWITCH_ENV)}
  out = subprocess.run([sys.executable, '-c', _SHOW], env={**base, **env}, check=True,
                       capture_output=True, text=True).stdout
  return out.split()


def test_the_restarted_process_has_the_tunable_and_remembers_the_users():
  machine = dict(platform=sys.platform, glibc=huge_pages.glibc_version(),
                 thp=huge_pages.thp_mode())
  want = huge_pages.tunables_to_restart_with({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'},
                                             **machine)
  got = _run(GLIBC_TUNABLES='glibc.malloc.arena_max=4')
  if want is None:  # a machine where a restart changes nothing: none happens
    assert got == ['glibc.malloc.arena_max=4', 'None']
  else:
    assert got == [want, 'glibc.malloc.arena_max=4']
  assert _run(VGG_JAX_HUGE_PAGES='0') == ['None', 'None']


def test_other_programs_get_the_users_tunables(monkeypatch):
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')
  monkeypatch.setenv(huge_pages.USERS_TUNABLES_ENV, '')
  assert huge_pages.users_tunables() is None
  with huge_pages.users_environment():
    assert 'GLIBC_TUNABLES' not in os.environ
  assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  monkeypatch.setenv(huge_pages.USERS_TUNABLES_ENV, 'glibc.malloc.arena_max=4')
  with huge_pages.users_environment():
    assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=4'
  assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
