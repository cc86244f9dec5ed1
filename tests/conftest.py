"""pytest configuration: hypothesis profiles and the tests directory on sys.path.

Profiles, chosen by the environment variable RCONV_HYPOTHESIS_PROFILE:
  ci (default)  25 examples per property, derandomized (same examples on every run), fast;
  thorough      400 examples per property, random, for a deep run on demand.
"""

import os
import sys

from hypothesis import HealthCheck, settings

# reference.py and helpers.py live beside the tests; rconv itself must come from the installed
# wheel, so only this directory (never ../python) is put on the path.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=400,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("RCONV_HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    # Slow tests (the full demo training run) skip unless RCONV_SLOW=1; see test_training.py.
    config.addinivalue_line("markers", "slow: slow test, runs only with RCONV_SLOW=1")
