"""Where a training run's time goes, per task: data, forward, backward, optimiser, validation, checkpoint.

(Not ``profile.py``: a script of that name shadows the standard library's ``profile`` module, which
``cProfile`` and so ``torch._dynamo`` import.)

    python benchmarks/profile_tasks.py mnist                 # classify mnist `fast`, the first 40 steps' worth
    python benchmarks/profile_tasks.py segment detect        # Penn-Fudan tasks, a short run each
    python benchmarks/profile_tasks.py all --plot docs/assets/profile.png

Each task runs its own recipe (the defaults of its command) for a few dozen optimizer steps through
the one engine, with the task and the plan wrapped by :class:`cnnkit.analysis.profile.StepProfiler`
(the engine is not changed): ``prepare`` is the time from the command to the first step (decoding
and resizing the photos, building the network), then each step's data (batch assembly and
augmentation), forward (the loss included), backward and optimiser step, the validation and the
checkpoint writes, and ``test`` the final score after training. The compute part's achieved GFLOP/s
(forward and backward FLOPs of the actual batch, counted on the first step) is set against this
CPU's fp32 ceiling measured in the same run at the same thread count (a large 3x3 convolution and
a 2048^2 matrix product). Prints the CPU, the load average, the table and the ceiling.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import cnnkit.engine
from cnnkit.analysis.profile import StepProfiler, fp32_ceiling
from cnnkit.engine.precision import cpu_name

TASKS = ("mnist", "flowers", "detect", "segment", "instance")


@contextlib.contextmanager
def profiled(prof: StepProfiler, marks: dict):
    """Every ``fit`` the recipes call runs with the task and plan wrapped by ``prof``; ``marks`` gets
    the wall-clock times of the first fit's start and the last fit's end."""
    real = cnnkit.engine.fit

    def fit(task, model, data, plan, *args, **kwargs):
        marks.setdefault("fit_start", time.perf_counter())
        if prof._mark is None:
            prof.start()
        try:
            return real(prof.task(task), model, data, prof.plan(plan), *args, **kwargs)
        finally:
            prof.stop()
            marks["fit_end"] = time.perf_counter()

    detect = importlib.import_module("cnnkit.tasks.detect.train")  # imports fit by name
    saved = (cnnkit.engine.fit, detect.fit)
    cnnkit.engine.fit = detect.fit = fit
    try:
        yield
    finally:
        cnnkit.engine.fit, detect.fit = saved


def run_task(name: str, args, out: Path) -> tuple[StepProfiler, dict]:
    """Train ``name``'s recipe briefly with the profiler; (profiler, {prepare, fit, test, score})."""
    data_dir = args.data_dir
    threads = {"threads": args.threads} if args.threads else {}
    if name == "mnist":
        from cnnkit.tasks.classify.config import preset
        from cnnkit.tasks.classify.train import train

        cfg = preset("fast", data_dir=data_dir, epochs=1, subset=128 * args.steps, **threads)

        def go():
            r = train(cfg, out, quiet=True)
            return {"val_acc": r.val_acc}
    elif name == "flowers":
        from cnnkit.tasks.classify.finetune import FinetuneConfig, run_finetune

        cfg = FinetuneConfig(
            data=str(Path(data_dir) / "flowers"),
            model="efficientnet_lite0",
            weights="imagenet",
            epochs=args.epochs or 2,
            **threads,
        )

        def go():
            r = run_finetune(cfg, out, quiet=True)
            return {"val_acc": r["val_acc"], "test_acc": r["test_acc"]}
    elif name == "segment":
        from cnnkit.tasks.segment.config import SegmentConfig
        from cnnkit.tasks.segment.train import train as seg_train

        cfg = SegmentConfig(data="pennfudan", data_dir=data_dir, epochs=args.epochs or 2, val_every=1, **threads)

        def go():
            r = seg_train(cfg, out, quiet=True)
            return {"person_IoU": r.test["iou"][1]}
    elif name in ("detect", "instance"):
        if name == "detect":
            from cnnkit.tasks.detect.config import DetectConfig as Config
            from cnnkit.tasks.detect.train import train as task_train
        else:
            from cnnkit.tasks.instance.config import InstanceConfig as Config
            from cnnkit.tasks.instance.train import train as task_train
        cfg = Config(data="pennfudan", data_dir=data_dir, epochs=args.epochs or 1, val_every=1, **threads)

        def go():
            _, final = task_train(cfg, out, quiet=True)
            return {k: final[k] for k in ("AP", "AP50", "mask_AP", "box_AP") if k in final}
    else:
        raise SystemExit(f"unknown task {name!r}: one of {', '.join(TASKS)} or all")
    prof, marks = StepProfiler(), {}
    start = time.perf_counter()
    with profiled(prof, marks):
        score = go()
    end = time.perf_counter()
    times = {
        "prepare": marks["fit_start"] - start,
        "fit": marks["fit_end"] - marks["fit_start"],
        "test": end - marks["fit_end"],
        "threads": torch.get_num_threads(),
    }
    return prof, {**times, **score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", help=f"{' | '.join(TASKS)} | all")
    parser.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA", "../shared/data"))
    parser.add_argument("--steps", type=int, default=40, help="mnist: optimizer steps (batch 128)")
    parser.add_argument(
        "--epochs", type=int, default=0, help="epochs of the photo tasks (0: each task's short default)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: each command's default)")
    parser.add_argument("--plot", default="", help="write the bar chart here (PNG)")
    parser.add_argument("--json", default="", help="write the numbers here")
    args = parser.parse_args()
    names = list(TASKS) if args.tasks == ["all"] else args.tasks
    print(f"CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores available), torch {torch.__version__}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("command: python " + " ".join(["benchmarks/profile_tasks.py", *sys.argv[1:]]))
    results, bars = {}, {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            prof, times = run_task(name, args, Path(tmp) / "run")
        ceiling = fp32_ceiling()  # at the thread count the run used
        g = prof.gflops()
        print(f"\n== {name}: {times['threads']} threads, load {os.getloadavg()[0]:.2f}")
        print(
            f"prepare (decode, resize, build) {times['prepare']:.1f} s; fit {times['fit']:.1f} s; "
            f"final test {times['test']:.1f} s"
        )
        print(prof.table(ceiling["conv"]))
        print(
            f"fp32 ceiling at {ceiling['threads']} threads: conv {ceiling['conv']:.1f} GFLOP/s, "
            f"GEMM {ceiling['gemm']:.1f} GFLOP/s"
        )
        print(
            "score of this short run: "
            + ", ".join(
                f"{k} {v:.4g}"
                for k, v in times.items()
                if k not in ("prepare", "fit", "test", "threads") and v is not None
            )
        )
        results[name] = {
            **times,
            "seconds": prof.seconds,
            "steps": prof.steps,
            "samples": prof.samples,
            "flops": prof.flops,
            "batch": prof.batch,
            "gflops": g,
            "ceiling": ceiling,
            "load": os.getloadavg()[0],
        }
        bars[name] = {"prepare": times["prepare"], **prof.seconds, "test": times["test"]}
        if args.json:  # after every task: a later task's failure keeps the earlier numbers
            Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "runs": results}, indent=1))
    if args.plot:
        from cnnkit.plots import time_breakdown

        time_breakdown(bars, args.plot, title=f"Where the time goes ({cpu_name()})")
        print(f"\nchart: {args.plot}")


if __name__ == "__main__":
    main()
