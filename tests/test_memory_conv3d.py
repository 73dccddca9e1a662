"""The analyser's training-step peak for 3-D convolutions against the CPU allocator's real peak."""

from __future__ import annotations

import pytest
import torch

import cnnkit
from cnnkit.analysis import backend
from cnnkit.analysis.measure import measure_peak
from cnnkit.models import create_model

CLIP = (1, 10, 32, 32)  # what the video task's networks see: (C, T, H, W), 10 frames of 32x32


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))  # the backend is calibrated, not read back


@pytest.mark.parametrize(
    ("name", "batch"),
    [
        ("c3d_small", 4),
        # its 3x1x1 temporal convolutions run PyTorch's kernel below a batch of 16 on one thread and
        # oneDNN from 16 on: calibrated at batches 2 and 3, the prediction was 1.20x the real peak
        ("r2plus1d_small", 16),
    ],
)
def test_conv3d_training_step_within_5_percent(name, batch):
    torch.manual_seed(0)
    model = create_model(name)
    s = cnnkit.summary(model, input_size=CLIP, batch_size=batch, optimizer="adamw")
    predicted = s.memory["training_peak_bytes"]
    measured = measure_peak(model, (batch, *CLIP), training=True, optimizer="adamw")
    assert abs(predicted - measured) / measured < 0.05, (predicted, measured)


def test_calibration_batches_follow_the_kernel_choice():
    f32 = torch.float32

    def conv(batch, kernel, groups=1, stride=1):
        x = ((batch, 8, 10, 8, 8), torch.empty(batch, 8, 10, 8, 8, device="meta").stride(), f32)
        shape = (8, 8 // groups, *kernel)
        w = (shape, torch.empty(shape, device="meta").stride(), f32)
        return (x, w, None, (1, stride, stride), (0, 0, 0), (1, 1, 1), False, (0, 0, 0), groups)

    one_thread = torch.get_num_threads() == 1
    # a 3x1x1 (height and width 1) convolution: its kernel changes at 16 on one thread
    assert backend.cal_batches("convolution", conv(32, (3, 1, 1)), 32) == ((16, 17) if one_thread else (2, 3))
    assert backend.cal_batches("convolution", conv(8, (3, 1, 1)), 8) == (2, 3)
    assert backend.cal_batches("convolution", conv(32, (3, 1, 1), stride=2), 32) == (2, 3)  # strided: oneDNN
    assert backend.cal_batches("convolution", conv(32, (3, 3, 3)), 32) == (2, 3)
    # grouped: the two batches up to the real one, at most 16 and 17
    assert backend.cal_batches("convolution", conv(8, (3, 3, 3), groups=2), 8) == (7, 8)
    assert backend.cal_batches("convolution", conv(64, (3, 3, 3), groups=2), 64) == (16, 17)
