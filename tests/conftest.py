"""Shared fixtures. Real data is read from $CNNKIT_DATA, by default ../shared/data beside the repo."""

import os
from pathlib import Path

import pytest
import torch

# runs that leave --threads unset take the free cores, which depend on the machine's load; the suite
# fixes them (OMP_NUM_THREADS wins over the load, engine.config.free_cores) so that its numbers and
# its exact-resume comparisons do not depend on what else runs
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("CNNKIT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "mnist").is_dir():
        pytest.skip(f"no data at {DATA_DIR}: set CNNKIT_DATA to the folder holding mnist/ and hymenoptera/")
    return DATA_DIR


@pytest.fixture(scope="session")
def reference_state_dicts() -> dict:
    import json

    path = REPO.parent / "shared" / "reference" / "state_dicts.json"
    if not path.is_file():
        pytest.skip(f"no reference file at {path}")
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is as fast, and far faster than two when another process uses the second core.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
