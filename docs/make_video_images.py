"""Make the video guide's figures in docs/images/ from trained runs (a few seconds on one CPU core).

    python docs/make_video_images.py --predictor RUN --classifier RUN [--data-dir DIR]

``--predictor``: a ``cnnkit video-predict train`` run; writes ``moving_mnist_strip.png`` (test clip 0:
the 10 input frames, the 10 true next frames, the 10 predicted ones) and ``moving_mnist.gif``.
``--classifier``: a ``cnnkit video train`` run of 3-D convolutions; writes ``moving_mnist_cam.png``
(test clip 0 and its Grad-CAM over time and space, on the frames the network sees).
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from cnnkit.data.video import MovingMnist
from cnnkit.engine.runfolder import save_png
from cnnkit.explain.clip_cam import clip_grad_cam
from cnnkit.tasks.video.load import load_video_classifier
from cnnkit.tasks.video.predict import frame_strip, heat_overlay, predict_clips
from cnnkit.tasks.video_predict.load import load_predictor
from cnnkit.tasks.video_predict.predict import predict_frames, write_prediction

OUT = Path(__file__).resolve().parent / "images"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--predictor", help="a cnnkit video-predict train run")
    p.add_argument("--classifier", help="a cnnkit video train run")
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA", "../shared/data"))
    args = p.parse_args()
    clips = MovingMnist("test", 1, data_dir=args.data_dir).batch([0])[0][:, :, None].float() / 255  # (1, 20, 1, 64, 64)
    if args.predictor:
        model = load_predictor(args.predictor)
        pred = predict_frames(model, clips[:, :10])[0]
        with tempfile.TemporaryDirectory() as tmp:
            png, gif = write_prediction(clips[0, :10], pred, clips[0, 10:], tmp, "clip")
            shutil.copy(png, OUT / "moving_mnist_strip.png")
            shutil.copy(gif, OUT / "moving_mnist.gif")
        print("docs/images/moving_mnist_strip.png docs/images/moving_mnist.gif")
    if args.classifier:
        model = load_video_classifier(args.classifier)
        seen = clips[0, : (model.frames - 1) * model.stride + 1 : model.stride]  # the frames the network sees
        cam, cls = clip_grad_cam(model, clips[0])
        cam = cam[: (model.frames - 1) * model.stride + 1 : model.stride]
        probs = predict_clips(model, clips)[0]
        save_png(frame_strip([seen, heat_overlay(seen, cam)], scale=2), OUT / "moving_mnist_cam.png")
        top = ", ".join(f"{i}: {probs[i]:.2f}" for i in probs.topk(2).indices.tolist())
        print(f"docs/images/moving_mnist_cam.png (class {int(cls)}; top digits {top})")


if __name__ == "__main__":
    main()
