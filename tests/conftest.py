"""Eight CPU devices for every test, so multi-device code runs without a GPU.

The flag must be set before jax is imported anywhere in the test process.
"""

import os

os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8']).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
