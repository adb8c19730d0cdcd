"""experiments.profile_summary adds up a trace's op times per device plane."""

import types

import pytest

from experiments import profile_summary


def line(name, *events, xla=True):
  stats = [('hlo_op', 'x'), ('hlo_module', 'jit_step')] if xla else [('python', 'f')]
  return types.SimpleNamespace(name=name, events=[
      types.SimpleNamespace(name=n, duration_ns=ns, stats=stats) for n, ns in events])


def test_ops_line_summed_by_name_largest_first():
  plane = types.SimpleNamespace(name='/device:GPU:0', lines=[
      line('XLA Modules', ('jit_step', 9_000_000)),
      line('XLA Ops', ('conv', 1_000_000), ('pool', 2_500_000), ('conv', 2_000_000)),
  ])
  summary = profile_summary.plane_op_times(plane)
  assert summary['summed_line'] == 'XLA Ops'
  assert summary['total_ms'] == 5.5  # the module line is not added in
  assert [(o['name'], o['ms'], o['count']) for o in summary['ops']] == [
      ('conv', 3.0, 2), ('pool', 2.5, 1)]
  assert sum(o['share'] for o in summary['ops']) == pytest.approx(1.0)


def test_planes_without_an_ops_line_sum_every_line():
  plane = types.SimpleNamespace(name='/device:GPU:0', lines=[
      line('Stream #14', ('gemm', 4_000_000), ('fusion', 1_000_000)),
      line('Stream #15', ('fusion', 1_000_000)),
  ])
  summary = profile_summary.plane_op_times(plane)
  assert summary['summed_line'] == 'all'
  assert [(o['name'], o['ms'], o['count']) for o in summary['ops']] == [
      ('gemm', 4.0, 1), ('fusion', 2.0, 2)]
  assert summary['ops'][0]['share'] == pytest.approx(4 / 6)


def test_the_cpus_host_plane_sums_only_xla_ops_over_its_threads():
  plane = types.SimpleNamespace(name='/host:CPU', lines=[
      line('python', ('run', 9_000_000), xla=False),
      line('tf_XLAEigen/1', ('ffi_call.3', 2_000_000), ('fusion', 1_000_000)),
      line('tf_XLAEigen/2', ('ffi_call.3', 2_000_000)),
  ])
  summary = profile_summary.plane_op_times(plane, xla_ops_only=True)
  assert summary['summed_line'] == 'xla ops'
  assert [(o['name'], o['ms'], o['count']) for o in summary['ops']] == [
      ('ffi_call.3', 4.0, 2), ('fusion', 1.0, 1)]


def test_a_folder_without_a_trace_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no \\*.xplane.pb under'):
    profile_summary.newest_xplane(str(tmp_path))
