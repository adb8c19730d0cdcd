"""Eight CPU devices for every test, so multi-device code runs without a GPU.

The flag must be set before jax is imported anywhere in the test process.

Only `vgg_jax` is installed; the tests also import `configs` and
`experiments` from the checkout, whose root is put on sys.path here so that
a bare `pytest` works as well as `python -m pytest` (which adds the cwd).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8']).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
