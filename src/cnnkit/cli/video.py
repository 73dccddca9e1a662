"""``cnnkit video train|eval|predict`` and ``cnnkit video-predict train|eval|predict``: thin wrappers
over :mod:`cnnkit.tasks.video` and :mod:`cnnkit.tasks.video_predict`."""

from __future__ import annotations

import time
from pathlib import Path

from cnnkit.cli import add_format, add_run_arguments, finished, print_json, train_config
from cnnkit.engine.config import add_config_arguments
from cnnkit.errors import CnnkitError, counted
from cnnkit.tasks.video.config import VideoConfig
from cnnkit.tasks.video_predict.config import PredictConfig

CLIP_HELP = "clips: .npy arrays (T, H, W) or (T, C, H, W), folders of frame images, or folders of such clips"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "video",
        help="clip classification with 3-D CNNs: train, eval, predict",
        description="Which digits appear in a Moving MNIST clip: C3D, R(2+1)D or 2-D frame stacking.",
    )
    sub = p.add_subparsers(dest="video_command", metavar="ACTION")
    t = sub.add_parser(
        "train",
        help="train a clip classifier on Moving MNIST",
        description="Train through the shared engine; the run folder holds model.safetensors, "
        "resume.safetensors, metrics.csv, curves.png and config.yaml.",
    )
    add_config_arguments(t, VideoConfig)
    add_run_arguments(t, "runs/video-<time>")
    t.set_defaults(func=run_train)
    e = sub.add_parser("eval", help="both-digits and per-digit accuracy of a run")
    _eval_arguments(e)
    e.set_defaults(func=run_eval)
    q = sub.add_parser("predict", help="the digits in each clip, and a Grad-CAM strip (where and when)")
    q.add_argument("run", help="run folder or model.safetensors")
    q.add_argument("clips", nargs="*", help=CLIP_HELP)
    q.add_argument("--test", type=int, default=0, metavar="N", help="also the first N Moving MNIST test clips")
    q.add_argument("--data-dir", help="the folder holding mnist/ for --test (default: the run's)")
    q.add_argument("--out", help="folder for <stem>_cam.png: the frames and their Grad-CAM")
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    v = subparsers.add_parser(
        "video-predict",
        help="frame prediction (SimVP): train, eval, predict",
        description="10 frames in, the next 10 out; MSE and MAE per frame and SSIM per predicted step.",
    )
    vsub = v.add_subparsers(dest="video_predict_command", metavar="ACTION")
    t = vsub.add_parser(
        "train",
        help="train a frame predictor (default data: Moving MNIST)",
        description="Train through the shared engine; the run folder holds model.safetensors, "
        "resume.safetensors, metrics.csv, curves.png and config.yaml, and split.json for a folder of clips.",
    )
    add_config_arguments(t, PredictConfig)
    add_run_arguments(t, "runs/video-predict-<time>")
    t.set_defaults(func=run_predict_train)
    e = vsub.add_parser("eval", help="MSE, MAE per frame and SSIM, per predicted step, of a run")
    _eval_arguments(e)
    e.set_defaults(func=run_predict_eval)
    q = vsub.add_parser("predict", help="input, truth and prediction as a PNG strip and an animated GIF per clip")
    q.add_argument("run", help="run folder or model.safetensors")
    q.add_argument("clips", nargs="*", help=CLIP_HELP + "; the first T frames go in, the next T are the truth")
    q.add_argument("--test", type=int, default=0, metavar="N", help="also the first N Moving MNIST test clips")
    q.add_argument("--data-dir", help="the folder holding mnist/ for --test (default: the run's)")
    q.add_argument("--out", required=True, help="folder for <stem>.png and <stem>.gif")
    q.set_defaults(func=run_predict_predict)
    v.set_defaults(func=lambda args: (v.print_help(), 2)[1])


def _eval_arguments(e) -> None:
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--split", default="test", help="test | val (default: test)")
    e.add_argument(
        "--clips", type=int, help="Moving MNIST runs: the first N clips of the split (default: the run's number)"
    )
    e.add_argument("--data-dir", help="Moving MNIST runs: the folder holding mnist/ (default: the run's)")
    add_format(e)


def _out(args, kind: str) -> str:
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN, the run folder to continue")
    return args.out or f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _settings(cls, args, task: str):
    """The run's config from the typed flags; with ``--resume``, the run's own settings, the typed ones
    checked against them (:func:`~cnnkit.engine.runfolder.check_resume_settings`): a flag left out
    takes the run's value (its data folder too, unless --data-dir is given), one given that differs
    is named and nothing runs."""
    from cnnkit.engine.runfolder import check_resume_settings

    values = train_config(cls, args, ("moving_mnist",))
    if not args.resume:
        return cls(**values)
    _out(args, task)
    return cls.from_dict(check_resume_settings(args.out, task, values), strict=False)


def run_train(args) -> int:
    from cnnkit.tasks.video.train import train

    cfg = _settings(VideoConfig, args, "video")
    out = _out(args, "video")
    t = train(cfg, out, resume=args.resume, quiet=args.quiet).test
    finished(
        args,
        f"done: test both digits {t['both']:.2%}, per digit {t['digit_acc']:.2%} ({counted(t['clips'], 'clip')}) -> {out}",
    )
    return 0


def run_eval(args) -> int:
    from cnnkit.tasks.video.evaluate import evaluate_run

    out = evaluate_run(args.run, args.split, args.data_dir, args.clips)
    if args.format == "json":
        print_json(out)
    else:
        print(
            f"{out['split']} ({counted(out['clips'], 'clip')}): both digits {out['both']:.2%}  per digit "
            f"{out['digit_acc']:.2%}  top-2 (two different digits) {out['top2']:.2%}"
        )
    return 0


def read_clips(paths: list[str], channels: int, size, frames: int | None = None) -> list:
    """``[(stem, read)]`` of the named clips: .npy files, frame folders, or folders of clips (a folder of
    image files is one clip). ``read()`` reads the clip, (T, C, H, W) in [0, 1], each time it is called:
    a command holds one clip at a time, however many it is given (each read refuses a clip larger than
    the memory available, :func:`~cnnkit.errors.check_fits`)."""
    from functools import partial

    from cnnkit.data.video import _IMAGE_SUFFIXES, VideoClips

    out = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise CnnkitError(f"no such clip: {path}; give .npy files or folders of frames")
        if path.is_dir() and any(p.suffix.lower() in _IMAGE_SUFFIXES for p in path.iterdir()):
            clips = VideoClips(path.resolve().parent, channels, size, frames, clips=[path.resolve()])
        elif path.is_file():
            if path.suffix.lower() != ".npy":
                raise CnnkitError(f"{path} is not a .npy clip; give .npy files or folders of frames")
            clips = VideoClips(path.resolve().parent, channels, size, frames, clips=[path.resolve()])
        else:
            clips = VideoClips(path, channels, size, frames)
        out += [(p.stem, partial(clips.__getitem__, i)) for i, p in enumerate(clips.clips)]
    return out


def _test_clips(n: int, data_dir, frames: int, model, size=None) -> list:
    """``[(name, read)]`` of the first ``n`` Moving MNIST test clips, from ``data_dir`` or else the run's
    data folder; ``read()`` renders the clip, with ``size`` (H, W) resized to it as
    :class:`~cnnkit.data.video.VideoClips` resizes a clip (one clip at a time, as :func:`read_clips`)."""
    from cnnkit.data.video import TEST_SIZE, MovingMnist, MovingMnistSpec, resize_clip

    if not 0 <= n <= TEST_SIZE:  # the fixed test set has 10,000 clips
        raise CnnkitError(
            f"--test must be an integer from 0 to {TEST_SIZE:,} (the test set's clips). Received: --test {n}"
        )
    if not n:
        return []
    if data_dir is None:
        config = (getattr(model, "info", None) or {}).get("config")
        data_dir = config.get("data_dir") if isinstance(config, dict) else None
    test = MovingMnist("test", n, data_dir=data_dir, spec=MovingMnistSpec(num_frames=frames))

    def read(i: int):
        clip = test.batch([i])[0][0, :, None].float() / 255  # (T, 1, 64, 64)
        return clip if size is None else resize_clip(clip, size)

    return [(f"test{i:04d}", lambda i=i: read(i)) for i in range(n)]


def run_predict(args) -> int:
    from cnnkit.console import shown
    from cnnkit.engine.runfolder import output_stems, save_png
    from cnnkit.errors import output_folder
    from cnnkit.explain.clip_cam import clip_grad_cam
    from cnnkit.tasks.video.load import load_video_classifier
    from cnnkit.tasks.video.predict import frame_strip, heat_overlay, predict_clips

    model = load_video_classifier(args.run)
    need = (model.frames - 1) * model.stride + 1
    named = read_clips(args.clips, model.channels, None, None) + _test_clips(
        args.test, args.data_dir, max(need, 20), model
    )
    if not named:
        raise CnnkitError("no clips: name .npy files or frame folders, or give --test N")
    for name, read in named:  # every clip read and checked, one at a time, before anything is printed or written
        if (t := read().shape[0]) < need:
            raise CnnkitError(
                f"{name} has {t} frames; this network sees {model.frames} frames {model.stride} apart and needs {need}"
            )
    stems = [name for name, _ in named]
    if args.out:  # once the run and the clips are read, before the predictions
        output_folder(args.out, "--out")
        stems = output_stems([Path(s) for s in stems], args.out, ("_cam.png",))  # two c.npy: c, c_2
    for (name, read), stem in zip(named, stems):
        clip = read()  # read again: one clip is held at a time
        probs = predict_clips(model, clip[None])[0]
        digits = [shown(model.classes[i]) for i in (probs > 0.5).nonzero().flatten().tolist()]
        top = ", ".join(f"{shown(model.classes[i])} {probs[i]:.2f}" for i in probs.topk(3).indices.tolist())
        line = f"{shown(name)}: digits {' '.join(digits) or '(none)'}  (top: {top})"
        if args.out:
            cam, _ = clip_grad_cam(model, clip)  # (T, H, W)
            path = Path(args.out) / f"{stem}_cam.png"
            save_png(frame_strip([clip, heat_overlay(clip, cam)], scale=2), path)
            line += f"  -> {shown(path)}"
        print(line)
    return 0


def run_predict_train(args) -> int:
    from cnnkit.tasks.video_predict.train import train

    cfg = _settings(PredictConfig, args, "video_predict")
    out = _out(args, "video-predict")
    t = train(cfg, out, resume=args.resume, quiet=args.quiet).test
    finished(
        args,
        f"done: test MSE per frame {t['mse']:.1f}, MAE per frame {t['mae']:.1f}, SSIM {t['ssim']:.3f} "
        f"({counted(t['clips'], 'clip')}) -> {out}",
    )
    return 0


def run_predict_eval(args) -> int:
    from cnnkit.tasks.video_predict.evaluate import evaluate_run

    out = evaluate_run(args.run, args.split, args.data_dir, args.clips)
    if args.format == "json":
        print_json(out)
        return 0
    print(
        f"{out['data']} {out['split']} ({counted(out['clips'], 'clip')}): MSE per frame {out['mse']:.2f}  MAE per frame "
        f"{out['mae']:.2f}  SSIM {out['ssim']:.4f}"
    )
    print("  step    MSE     MAE    SSIM")
    for i, (a, b, c) in enumerate(zip(out["mse_per_step"], out["mae_per_step"], out["ssim_per_step"]), 1):
        print(f"  {i:>4} {a:>7.2f} {b:>7.2f} {c:>7.4f}")
    return 0


def run_predict_predict(args) -> int:
    from cnnkit.engine.runfolder import output_stems
    from cnnkit.errors import output_folder
    from cnnkit.tasks.video_predict.load import load_predictor
    from cnnkit.tasks.video_predict.predict import predict_frames, write_prediction

    model = load_predictor(args.run)
    t = model.frames
    named = read_clips(args.clips, model.channels, model.size, None) + _test_clips(
        args.test, args.data_dir, 2 * t, model, model.size
    )
    if not named:
        raise CnnkitError("no clips: name .npy files or frame folders, or give --test N")
    for name, read in named:  # every clip read and checked, one at a time, before anything is written
        if (frames := read().shape[0]) < t:
            raise CnnkitError(f"{name} has {frames} frames; this predictor needs {t} frames in")
    output_folder(args.out, "--out")  # once the run and the clips are read, before the predictions
    stems = output_stems([Path(s) for s, _ in named], args.out, (".png", ".gif"))

    def predict_one(clip, stem: str):  # the clip and its views are freed on return
        pred = predict_frames(model, clip[None, :t])[0]
        truth = clip[t : 2 * t] if clip.shape[0] >= 2 * t else None
        return write_prediction(clip[:t], pred, truth, args.out, stem)

    for (name, read), stem in zip(named, stems):
        png, gif = predict_one(read(), stem)  # read again: one clip is held at a time
        print(f"{name}: {png} {gif}")
    return 0
