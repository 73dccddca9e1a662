"""Shared fixtures. Real data is read from $CNNKIT_DATA, by default ../shared/data beside the repo."""

import os
import time
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Untrained classify, detect, segment and instance runs, saved as their train commands save them
    (a module may define its own ``runs``)."""
    from test_serve import make_run

    from cnnkit.engine.runfolder import FORMAT, save_model
    from cnnkit.models.segmentation import create_segmenter
    from cnnkit.tasks.detect.load import new_detector
    from cnnkit.tasks.detect.task import DetectTask
    from cnnkit.tasks.instance.config import InstanceConfig
    from cnnkit.tasks.instance.load import new_mask_detector
    from cnnkit.tasks.instance.task import InstanceTask
    from cnnkit.tasks.segment.load import Segmenter
    from cnnkit.tasks.segment.task import SegmentTask

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    make_run(root / "classify")
    det, info = new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)
    task = DetectTask(["a", "b"], info=info)
    save_model(root / "detect" / "model.safetensors", task.deployable(det), {"format": FORMAT, **task.describe(det)})
    cfg = InstanceConfig(model="mobilenet_v3_small", weights=None, image_size=64, width=16, mask_width=8, mask_convs=2)
    inst, info = new_mask_detector(cfg, ["a", "b"], 3)
    task = InstanceTask(["a", "b"], info=info)
    save_model(
        root / "instance" / "model.safetensors", task.deployable(inst), {"format": FORMAT, **task.describe(inst)}
    )
    seg = Segmenter(create_segmenter("unet", "unet", 2, in_channels=3, width=4), [0.5] * 3, [0.25] * 3, ["bg", "fg"])
    task = SegmentTask(2, 16)
    save_model(root / "segment" / "model.safetensors", seg, {"format": FORMAT, **task.describe(seg)})
    return root


class _SleepBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        time.sleep(ctx.seconds)
        return g, None


class SlowLayer(torch.nn.Module):
    """Identity that sleeps ``forward`` seconds in its forward pass and ``backward`` in its backward."""

    def __init__(self, forward: float, backward: float):
        super().__init__()
        self.forward_s, self.backward_s = forward, backward
        self.slept: list[tuple[bool, float]] = []  # (with gradients, seconds the forward sleep took) per call

    def forward(self, x):
        tick = time.perf_counter()
        time.sleep(self.forward_s)
        self.slept.append((torch.is_grad_enabled(), time.perf_counter() - tick))
        return _SleepBackward.apply(x, self.backward_s)


@pytest.fixture
def slow_layer():
    """:class:`SlowLayer`, for tests of what times layers."""
    return SlowLayer


def _wide_photo_folder(root: Path, per_class: int) -> Path:
    """``root/a`` and ``root/b``, each ``per_class`` random RGB PNGs 70 px wide and 30, 35, ... px tall:
    stretching them to a square is not how a run trained on a folder reads them."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 255, (30 + 5 * i, 70, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def wide_photos():
    """``fn(root, per_class)``: a two-class folder of wide random photos (:func:`_wide_photo_folder`)."""
    return _wide_photo_folder


def _peak_mb(fn) -> float:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 1e6


@pytest.fixture
def peak_mb():
    """``fn(work)``: the most megabytes Python held while ``work()`` ran (tracemalloc), for tests that a
    reader refuses a bomb without inflating it."""
    return _peak_mb


@pytest.fixture
def segment_trains(monkeypatch) -> dict:
    """What `cnnkit segment train` would train, instead of training: ``seen["cfg"]``, the resolved
    config handed to the recipe, which then stops the command with ``SystemExit(0)``."""
    import importlib

    seen = {}

    def train(cfg, out, resume=False, quiet=False):
        seen["cfg"] = cfg.resolved()
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module("cnnkit.tasks.segment.train"), "train", train)
    return seen
