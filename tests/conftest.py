import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REPARAM_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))

try:  # hypothesis tests draw the same examples on every run (a failure reproduces); HYPOTHESIS_PROFILE=explore
    from hypothesis import settings  # draws fresh random examples instead

    settings.register_profile("derandomized", derandomize=True, deadline=None)
    settings.register_profile("explore", derandomize=False, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))
except ImportError:  # hypothesis is a dev dependency; the tests that use it import it themselves
    pass


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project root; tests that need it skip cleanly when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread avoids OpenMP overhead and oversubscription on a 2-core box.
    Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
