"""A short real training run of the default digit recipe (tiny pyramid at stride 8, varifocal class
loss, dense 4-8-digit training scenes, batch 8) on 64-pixel digit scenes through the engine: the stated
AP after 3 epochs of 600 scenes on one CPU thread (about 20 s; AP50 0.233, AP 0.145, AR100 0.648;
an untrained detector scores 0)."""

import pytest

from cnnkit.tasks.detect.config import DetectConfig
from cnnkit.tasks.detect.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_short_run_on_digit_scenes_learns_boxes_and_classes(tmp_path, data_dir):
    # no validation while training (it changes no weight): the test split's scores are checked
    cfg = DetectConfig(data="digits", data_dir=str(data_dir), image_size=64, scenes=(600, 100), epochs=3, val_every=0)
    run, m = train(cfg, tmp_path / "run", quiet=True)
    first, last = run.history[0], run.history[-1]
    # the box loss falls (varifocal's class loss need not: its targets, the boxes' IoU, rise as they do)
    assert last["train_box"] < 0.7 * first["train_box"], run.history
    assert m["AP50"] > 0.15 and m["AP"] > 0.08 and m["AR100"] > 0.45, m
