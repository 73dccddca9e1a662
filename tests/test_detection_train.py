"""A short real training run of the default digit recipe (tiny pyramid, strides 8/16) on 64-pixel digit
scenes through the engine: the stated AP after about a minute of one CPU thread (measured on the shared 2-core machine,
niced beside other jobs: AP50 0.142, AP 0.074, AR100 0.52 after 83 s; an untrained detector scores 0)."""

import pytest

from cnnkit.tasks.detect import DetectConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_minute_on_digit_scenes_learns_boxes_and_classes(tmp_path, data_dir):
    cfg = DetectConfig(data="digits", data_dir=str(data_dir), image_size=64, scenes=(800, 100), epochs=3,
                       threads=1)
    run, m = train(cfg, tmp_path / "run", quiet=True)
    first, last = run.history[0], run.history[-1]
    assert last["train_cls"] < 0.8 * first["train_cls"], run.history
    assert m["AP50"] > 0.07 and m["AP"] > 0.03 and m["AR100"] > 0.3, m
