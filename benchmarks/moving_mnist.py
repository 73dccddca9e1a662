"""Moving MNIST benchmark: frame prediction against the published table, and 3-D vs (2+1)-D vs 2-D clip classification.

    python benchmarks/moving_mnist.py baselines --clips 1000                  # zero and copy-last on test clips
    python benchmarks/moving_mnist.py predict --name long --epochs 6 --clips 1000
    python benchmarks/moving_mnist.py classify --models c3d_small r2plus1d_small frames2d_small
    python benchmarks/moving_mnist.py speed                                   # clips per CPU-second, each model
    python benchmarks/moving_mnist.py report                                  # the tables of what ran

Prediction (Srivastava et al. 2015's procedure, data.video.MovingMnist): 10 frames in, 10 out; MSE
per frame summed over the 64x64 pixels in [0, 1], on the first ``--test-clips`` clips of the fixed
seeded test set (MNIST's test digits), beside the published rows (each paper's own test file) and
two baselines computed here: all-black frames and the last input frame repeated.
Classification: which digits appear; "both" = the clips whose predicted set of digits is exactly
theirs. C3D (3x3x3), R(2+1)D (1x3x3 + 3x1x1 at equal weights) and 2-D frame stacking, sized to
about the same MACs on the clip they see (10 frames of 32x32), trained with one recipe.
Every run goes through cnnkit's one training engine (``cnnkit video[-predict] train``); each writes
its run folder and a result.json (command, CPU, load averages, clips trained, seconds, test numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cnnkit.engine.precision import cpu_name

PUBLISHED = [  # MSE per frame on Moving MNIST, as the SimVP paper (Gao et al. 2022, table 2) lists them
    ("ConvLSTM (Shi et al. 2015)", 103.3),
    ("PredRNN (Wang et al. 2017)", 56.8),
    ("PredRNN++ (Wang et al. 2018)", 46.5),
    ("E3D-LSTM (Wang et al. 2019)", 41.3),
    ("PhyDNet (Le Guen & Thome 2020)", 24.4),
    ("SimVP (Gao et al. 2022)", 23.8),
]
TARGETS = "targets (2 quiet cores): prediction MSE <= 103.3 within 30 min of training; both digits >= 95% within 15 min"


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _save(folder: Path, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if "per_step" not in k and k != "history"}, indent=1))


def baselines(args) -> None:
    """Zero frames and the last input frame repeated, on the first ``--clips`` test clips."""
    from cnnkit.data.video import MovingMnist
    from cnnkit.metrics.video import VideoPredictionMeter

    test = MovingMnist("test", args.clips, data_dir=args.data_dir)
    zero, copy = VideoPredictionMeter(), VideoPredictionMeter()
    for lo in range(0, args.clips, 250):
        clips = test.batch(range(lo, min(lo + 250, args.clips)))[0].float().div_(255)  # (B, 20, 64, 64)
        truth = clips[:, 10:]
        zero.update(torch.zeros_like(truth), truth)
        copy.update(clips[:, 9:10].expand_as(truth), truth)
    record = {"zero": zero.compute(), "copy_last": copy.compute(), "clips": args.clips, "cpu": cpu_name()}
    _save(Path(args.keep) / "baselines", record)


def predict(args) -> None:
    """Train the predictor by the flags into ``--keep/<name>``; test on ``--test-clips`` clips."""
    from cnnkit.tasks.video_predict import PredictConfig, train

    cfg = PredictConfig(
        data_dir=args.data_dir,
        model=args.model,
        epochs=args.epochs,
        clips=args.clips,
        val_clips=args.val_clips,
        test_clips=args.test_clips,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        minutes=args.minutes,
    )
    _train(args, "cnnkit video-predict train", cfg, train)


def classify(args) -> None:
    """Train each of ``--models`` with one recipe into ``--keep/<model>``."""
    from cnnkit.tasks.video import VideoConfig, train

    for model in args.models:
        cfg = VideoConfig(
            data_dir=args.data_dir,
            model=model,
            epochs=args.epochs,
            clips=args.clips,
            val_clips=args.val_clips,
            test_clips=args.test_clips,
            batch_size=args.batch_size,
            lr=args.lr,
            stride=args.stride,
            size=args.size,
            threads=args.threads,
            channels_last=args.channels_last,
            minutes=args.minutes,
        )
        _train(args, "cnnkit video train", cfg, train, name=model)


def _train(args, command: str, cfg, train, name: str | None = None) -> None:
    folder = Path(args.keep) / (name or args.name)
    default = asdict(type(cfg)())
    changed = {k: v for k, v in asdict(cfg).items() if v != default[k] and k != "data_dir"}
    flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in changed.items())
    load_before, tick, cpu = _load(), time.perf_counter(), _cpu_seconds()
    result = train(cfg, folder / "run", quiet=args.quiet)
    seconds, cpu = time.perf_counter() - tick, _cpu_seconds() - cpu
    net = result.model.net
    m = result.model
    size = (m.channels, m.frames, m.size, m.size) if hasattr(m, "stride") else (m.frames, m.channels, *m.size)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        net.eval()(torch.zeros(1, *size))
    macs = flops.get_total_flops() // 2
    record = {
        "command": f"{command} {flags}",
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": _load(),
        "clips_trained": result.images,
        "train_seconds": round(result.seconds, 1),
        "seconds_with_test": round(seconds, 1),
        "cpu_seconds_with_test": round(cpu, 1),  # user + system time of this process: what the work cost
        "macs_per_clip": macs,
        "params": sum(p.numel() for p in net.parameters()),
        "test": result.test,
        "history": result.history,
    }
    _save(folder, record)
    print(TARGETS)  # the figure's reference, in the same run


def speed(args) -> None:
    """Training clips per CPU-second of one thread, each model on the clip it sees: the cost of a step
    measured as this process's CPU time (user + system), so other work on the machine does not count."""
    import torch.nn.functional as F

    from cnnkit.tasks.video.config import VideoConfig
    from cnnkit.tasks.video.load import build_model
    from cnnkit.tasks.video_predict.config import PredictConfig
    from cnnkit.tasks.video_predict.load import build_model as build_predictor

    torch.set_num_threads(1)
    b = 16
    rows = []
    for name in ["c3d_small", "c3d_small+channels_last_3d", "r2plus1d_small", "frames2d_small", "simvp_tiny", "simvp"]:
        model_name = name.split("+")[0]
        if model_name.startswith("simvp"):
            m: torch.nn.Module = build_predictor(PredictConfig(model=model_name))
            x, y = torch.rand(b, 10, 1, 64, 64), torch.rand(b, 10, 1, 64, 64)
            step = lambda: F.mse_loss(m(x), y)  # noqa: E731
        else:
            m = build_model(VideoConfig(model=model_name, stride=args.stride, size=args.size))
            if "channels_last" in name:
                for p in m.net.parameters():
                    if p.dim() == 5:
                        p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
            x, y = torch.rand(b, 20, 1, 64, 64), (torch.rand(b, 10) < 0.2).float()
            step = lambda: F.binary_cross_entropy_with_logits(m(x), y)  # noqa: E731
        opt = torch.optim.AdamW(m.parameters(), 1e-3)
        for i in range(args.epochs):  # the first step warms up (oneDNN picks its kernels) and is not counted
            if i == 1:
                cpu = _cpu_seconds()
            loss = step()
            opt.zero_grad()
            loss.backward()
            opt.step()
        rate = b * (args.epochs - 1) / (_cpu_seconds() - cpu)
        rows.append((name, round(rate, 1)))
        print(f"{name:<28} {rate:7.1f} training clips per CPU-second (batch {b}, 1 thread)")
    _save(Path(args.keep) / "speed", {"clips_per_cpu_second": dict(rows), "cpu": cpu_name(), "load": _load()})


def report(args) -> None:
    """The prediction table (published rows, baselines, cnnkit's runs) and the classification table."""
    keep = Path(args.keep)
    print(f"CPU: {cpu_name()}\n{TARGETS}\n")
    print(f"{'model':<34} {'MSE/frame':>10} {'MAE/frame':>10} {'SSIM':>6}  notes")
    for name, mse in PUBLISHED:
        print(f"{name:<34} {mse:>10.1f} {'':>10} {'':>6}  published")
    base = keep / "baselines" / "result.json"
    if base.is_file():
        b = json.loads(base.read_text())
        for key, label in (("zero", "all-black frames"), ("copy_last", "last input frame repeated")):
            m = b[key]
            print(f"{label:<34} {m['mse']:>10.1f} {m['mae']:>10.1f} {m['ssim']:>6.3f}  {b['clips']} test clips")
    for res in sorted(keep.glob("*/result.json")):
        r = json.loads(res.read_text())
        if "mse" in r.get("test", {}):
            t = r["test"]
            print(
                f"{'cnnkit ' + res.parent.name:<34} {t['mse']:>10.1f} {t['mae']:>10.1f} {t['ssim']:>6.3f}  "
                f"{t['clips']} test clips; {r['clips_trained']} clips trained in {r['train_seconds']:.0f} s "
                f"(load {r['load_before'][0]}-{r['load_after'][0]})"
            )
    print(f"\n{'classifier':<16} {'MACs/clip':>10} {'params':>9} {'both':>7} {'digit acc':>9}  notes")
    for res in sorted(keep.glob("*/result.json")):
        r = json.loads(res.read_text())
        if "both" in r.get("test", {}):
            t = r["test"]
            macs = f"{r['macs_per_clip'] / 1e6:.1f} M" if r.get("macs_per_clip") else "-"
            print(
                f"{res.parent.name:<16} {macs:>10} {r['params']:>9,} {t['both']:>7.2%} {t['digit_acc']:>9.2%}  "
                f"{t['clips']} test clips; {r['clips_trained']} clips trained in {r['train_seconds']:.0f} s "
                f"(load {r['load_before'][0]}-{r['load_after'][0]})"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["baselines", "predict", "classify", "speed", "report"])
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    p.add_argument("--keep", default="runs/moving_mnist", help="folder of the runs and their result.json")
    p.add_argument("--name", default="predictor", help="predict: the run's folder name")
    p.add_argument("--model", default="simvp_tiny", help="predict: the predictor")
    p.add_argument("--models", nargs="+", default=["c3d_small", "r2plus1d_small", "frames2d_small"])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--clips", type=int, default=None, help="training clips per epoch (baselines: test clips)")
    p.add_argument("--val-clips", type=int, default=200)
    p.add_argument("--test-clips", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--minutes",
        type=float,
        default=0,
        help="training time budget: stop, saved, before an epoch that would pass it (0: every epoch)",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.what == "speed" and args.epochs < 2:
        p.error("speed: --epochs is the steps per model, at least 2 (the first warms up)")
    defaults = {
        "predict": dict(clips=1000, batch_size=16, lr=5e-3),
        "classify": dict(clips=2000, batch_size=32, lr=3e-3),
        "baselines": dict(clips=1000),
    }.get(args.what, {})
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    {"baselines": baselines, "predict": predict, "classify": classify, "speed": speed, "report": report}[args.what](
        args
    )
    return 0


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
