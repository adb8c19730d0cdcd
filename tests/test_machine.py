"""The machine record beside training times (`vgg_jax.machine`)."""

from vgg_jax import machine, onednn

# Two processors of a 2-core AMD EPYC with AVX-512 BF16, as Linux lists them (trimmed).
CPUINFO = '''processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni avx512_vbmi2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni avx512_vbmi2
'''


def test_cpuinfo_gives_the_model_and_the_instruction_sets_that_set_the_speed():
  fields = machine.cpu_fields(CPUINFO)
  assert fields['processor'] == '0' and fields['model'] == '17'
  described = machine.describe(fields)
  assert {k: v for k, v in described.items() if k != 'cpu_cores'} == {
      'cpu': 'AMD EPYC', 'cpu_family': 25, 'cpu_model': 17,
      'isa': ['avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16']}
  assert described['cpu_cores'] >= 1


def test_no_cpuinfo_describes_an_unknown_cpu():
  assert machine.cpu_fields('') == {}
  described = machine.describe({})
  assert described.pop('cpu_cores') >= 1
  assert described == {'cpu': None, 'cpu_family': None, 'cpu_model': None, 'isa': []}


def test_onednn_reads_this_cpus_flags_from_the_same_record():
  assert onednn.cpu_flags() == frozenset(machine.cpu_fields().get('flags', '').split())
  assert set(machine.describe()['isa']) <= onednn.cpu_flags()


def test_the_label_names_the_widest_instruction_set_that_sets_the_speed():
  epyc = machine.describe(machine.cpu_fields(CPUINFO))
  assert machine.label(epyc) == 'AMD EPYC (model 17), AVX-512 BF16'
  assert machine.label({**epyc, 'isa': ['avx2', 'fma'], 'cpu_model': 1}) == \
      'AMD EPYC (model 1), AVX2'
  assert machine.label({'cpu': 'Intel(R) Xeon(R) Processor', 'cpu_model': 143,
                        'isa': ['avx2', 'avx512f', 'avx512_bf16', 'amx_bf16']}) == \
      'Intel(R) Xeon(R) Processor (model 143), AMX'
  assert machine.label({}) == 'unknown CPU, no AVX2'
