"""Every test starts from seeded random generators (python, numpy, torch), so that a failure, a tolerance
one included, repeats when the test is run again. The seed is derived from the test's id and
``MMKAT_TEST_SEED`` (default 0); a failing test's report shows both, and ``MMKAT_TEST_SEED=N pytest ...``
runs the suite on other draws."""
import os
import random
import zlib

import numpy as np
import pytest
import torch

BASE_SEED = int(os.environ.get('MMKAT_TEST_SEED', '0'))


@pytest.fixture(autouse=True)
def _seeded(request):
    seed = (zlib.crc32(request.node.nodeid.encode()) + BASE_SEED) % 2**31
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    request.node.add_report_section('setup', 'seed', f'MMKAT_TEST_SEED={BASE_SEED}: this test drew from seed {seed}')
    yield


def needs(*packages):
    """Skip (with the reason) where an optional package is not installed, instead of failing on its import."""
    import importlib.util
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f'needs {", ".join(missing)} (tools/setup_env.sh installs it)')
