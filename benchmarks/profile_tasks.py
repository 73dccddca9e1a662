"""Where a training run's time goes, per task: data, forward, backward, optimiser, validation, checkpoint.

(Not ``profile.py``: a script of that name shadows the standard library's ``profile`` module, which
``cProfile`` and so ``torch._dynamo`` import.)

    python benchmarks/profile_tasks.py mnist                 # classify mnist `fast`, the first 40 steps' worth
    python benchmarks/profile_tasks.py segment detect        # Penn-Fudan tasks, a short run each
    python benchmarks/profile_tasks.py all --plot docs/images/profile.png
    python benchmarks/profile_tasks.py all --full             # time to result: every default in full
    python benchmarks/profile_tasks.py segment --layers 15    # and the 15 slowest layers of a step

``--full`` trains each command's defaults in full (MNIST `fast` and flowers over ``--seeds`` seeds,
3 by default; flowers' seed also draws its split), scores the test split and ends with one line per
task: its mean time (training, or command to score for flowers) and scores against the issue's
target and against the figures the issue started from (AMD EPYC Zen 3, fp32).

Each task runs its own recipe (the defaults of its command) for a few dozen optimizer steps through
the one engine, with the task and the plan wrapped by :class:`cnnkit.analysis.profile.StepProfiler`
(the engine is not changed): ``prepare`` is the time from the command to the first step (decoding
and resizing the photos, building the network), then each step's data (batch assembly and
augmentation), forward (the loss included), backward and optimiser step, the validation and the
checkpoint writes, and ``test`` the final score after training. The compute part's achieved GFLOP/s
(forward and backward FLOPs of the actual batches, counted on the first step and again after a freeze) is set against this
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
from cnnkit.analysis.profile import StepProfiler, compute_ceiling
from cnnkit.engine.precision import choose, cpu_name

TASKS = ("mnist", "flowers", "detect", "segment", "instance")


@contextlib.contextmanager
def profiled(prof: StepProfiler, marks: dict):
    """Every ``fit`` the recipes call runs with the task and plan wrapped by ``prof``; ``marks`` gets
    the wall-clock times of the first fit's start and the last fit's end."""
    real = importlib.import_module("cnnkit.engine.loop").fit

    def fit(task, model, data, plan, *args, **kwargs):
        marks.setdefault("fit_start", time.perf_counter())
        if prof._mark is None:
            prof.start()
        try:
            return real(prof.task(task), model, data, prof.plan(plan), *args, **kwargs)
        finally:
            prof.stop()
            marks["fit_end"] = time.perf_counter()

    loop = importlib.import_module("cnnkit.engine.loop")  # fit_run calls the loop module's fit
    saved = (cnnkit.engine.fit, loop.fit)
    cnnkit.engine.fit = loop.fit = fit
    try:
        yield
    finally:
        cnnkit.engine.fit, loop.fit = saved


# The targets (this repository's issue 38): the score each task must reach and the seconds it
# may take, counted over training ("fit") or from the command to the score ("command").
TARGETS = {
    "mnist": ({"test_acc": 0.995}, "fit", 40),
    "flowers": ({"test_acc": 0.93}, "command", 180),
    "detect": ({"AP": 0.55, "AP50": 0.90}, "fit", 480),
    "segment": ({"person_IoU": 0.80}, "fit", 480),
    "instance": ({"mask_AP": 0.50}, "fit", 540),
}
# The starting figures for the same commands (AMD EPYC Zen 3, 2 cores, fp32, one thread for
# the Penn-Fudan tasks, each one's own test split; docs/experiments/ has their record): score, seconds of the counted kind.
REFERENCE = {
    "mnist": ({"test_acc": 0.995}, 57),
    "flowers": ({"test_acc": 0.933}, 372),
    "detect": ({"AP": 0.572, "AP50": 0.912}, 945),
    "segment": ({"person_IoU": 0.805}, 1125),
    "instance": ({"mask_AP": 0.521}, 1111),
}


def run_task(name: str, args, out: Path, seed: int = 0) -> tuple[StepProfiler, dict]:
    """Train ``name``'s recipe with the profiler, briefly or (``args.full``) with the command's own
    defaults; (profiler, {prepare, fit, test, threads, precision, scores})."""
    data_dir = args.data_dir
    common = {"threads": args.threads} if args.threads else {}
    common["precision"] = args.precision
    if name == "mnist":
        from cnnkit.tasks.classify.config import preset
        from cnnkit.tasks.classify.evaluate import evaluate_run
        from cnnkit.tasks.classify.train import train

        short = {} if args.full else {"epochs": 1, "subset": 128 * args.steps}
        cfg = preset("fast", data_dir=data_dir, seed=seed, **short, **common)

        def go():
            r = train(cfg, out, quiet=True)
            test = evaluate_run(out, "test", data_dir=data_dir, precision=args.precision)[0] if args.full else None
            return {"val_acc": r.val_acc, **({"test_acc": test.accuracy} if test else {})}
    elif name == "flowers":
        from cnnkit.tasks.classify.finetune import FinetuneConfig, run_finetune

        epochs = {} if args.full else {"epochs": args.epochs or 2}
        cfg = FinetuneConfig(
            data=str(Path(data_dir) / "flowers"),
            model="efficientnet_lite0",
            weights="imagenet",
            seed=seed,
            **epochs,
            **common,
        )

        def go():
            r = run_finetune(cfg, out, quiet=True)
            return {"val_acc": r["val_acc"], "test_acc": r["test_acc"]}
    elif name == "segment":
        from cnnkit.tasks.segment.config import SegmentConfig
        from cnnkit.tasks.segment.train import train as seg_train

        short = {} if args.full else {"epochs": args.epochs or 2, "val_every": 1}
        cfg = SegmentConfig(data="pennfudan", data_dir=data_dir, **short, **common)

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
        short = {} if args.full else {"epochs": args.epochs or 1, "val_every": 1}
        cfg = Config(data="pennfudan", data_dir=data_dir, **short, **common)

        def go():
            _, final = task_train(cfg, out, quiet=True)
            return {k: final[k] for k in ("AP", "AP50", "mask_AP", "box_AP") if k in final}
    else:
        raise SystemExit(f"unknown task {name!r}: one of {', '.join(TASKS)} or all")
    prof, marks = StepProfiler(layers=args.layers > 0), {}
    start = time.perf_counter()
    with profiled(prof, marks):
        score = go()
    end = time.perf_counter()
    for key, value in last_validation(out).items():  # what the returned scores do not already say
        score.setdefault(key, value)
    times = {
        "prepare": marks["fit_start"] - start,
        "fit": marks["fit_end"] - marks["fit_start"],
        "test": end - marks["fit_end"],
        "command": end - start,
        "threads": torch.get_num_threads(),
        "precision": choose(args.precision, torch.device("cpu"))[0],
    }
    return prof, {**times, **score}


def last_validation(out: Path) -> dict:
    """The run's last validated epoch as its ``metrics.csv`` has it (``{"val_AP": ...}``, the
    validation split carved from the training photos), or {} without one: what the recipes' epoch
    counts are chosen by."""
    import csv

    path = out / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("val_") and v for k, v in r.items())]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val_") and v} if rows else {}


def verdict(name: str, runs: list[dict]) -> str:
    """One line: the task's mean seconds and scores over its runs, the target and the reference."""
    goal, kind, limit = TARGETS[name]
    ref, ref_secs = REFERENCE[name]
    secs = [r[kind] for r in runs]
    worst = {k: min(r[k] for r in runs) for k in goal}
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in goal}
    # flowers: the mean over the splits must reach the target; mnist: every seed; one run: itself
    reached = mean if name == "flowers" else worst
    met = all(reached[k] >= v for k, v in goal.items()) and sum(secs) / len(secs) <= limit
    scores = ", ".join(f"{k} {mean[k]:.4g}" + (f" (min {worst[k]:.4g})" if len(runs) > 1 else "") for k in goal)
    return (
        f"{name:<9} {kind} {sum(secs) / len(secs):7.1f} s over {len(runs)} run(s): {scores} | target "
        + ", ".join(f"{k} >= {v:g}" for k, v in goal.items())
        + f" in <= {limit} s: {'MET' if met else 'not met'} | reference (Zen 3, fp32): "
        + ", ".join(f"{k} {v:g}" for k, v in ref.items())
        + f" in {ref_secs} s ({ref_secs / (sum(secs) / len(secs)):.2f}x this run's time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", help=f"{' | '.join(TASKS)} | all")
    parser.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA", "../shared/data"))
    parser.add_argument(
        "--full",
        action="store_true",
        help="train each command's default recipe in full and score it on its test split; print each "
        "task's time and score against the target and the reference (time to result)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="mnist and flowers: seeds (data splits for flowers); 0: 3 with --full, else 1",
    )
    parser.add_argument("--steps", type=int, default=40, help="mnist without --full: optimizer steps (batch 128)")
    parser.add_argument(
        "--epochs", type=int, default=0, help="without --full: epochs of the photo tasks (0: each task's short default)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: each command's default)")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"), help="every task's --precision"
    )
    parser.add_argument("--plot", default="", help="write the bar chart here (PNG)")
    parser.add_argument("--json", default="", help="write the numbers here")
    parser.add_argument(
        "--layers",
        type=int,
        default=0,
        metavar="N",
        help="also print the N slowest layers of a step (forward and backward ms, timed by module hooks)",
    )
    parser.add_argument("--keep", default="", help="keep each run's folder here (NAME_SEED) instead of a temporary one")
    args = parser.parse_args()
    names = list(TASKS) if args.tasks == ["all"] else args.tasks
    seeds = args.seeds or (3 if args.full else 1)
    print(f"CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores available), torch {torch.__version__}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("command: python " + " ".join(["benchmarks/profile_tasks.py", *sys.argv[1:]]))
    results, bars, lines = {}, {}, []
    for name in names:
        runs = []
        for seed in range(seeds if name in ("mnist", "flowers") else 1):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(args.keep) / f"{name}_{seed}" if args.keep else Path(tmp) / "run"
                prof, times = run_task(name, args, folder, seed)
            ceiling = compute_ceiling(precision=times["precision"])  # at the thread count the run used
            g = prof.gflops()
            label = f"{name}" + (f" seed {seed}" if seeds > 1 and name in ("mnist", "flowers") else "")
            print(f"\n== {label}: {times['threads']} threads, {times['precision']}, load {os.getloadavg()[0]:.2f}")
            print(
                f"prepare (decode, resize, build) {times['prepare']:.1f} s; fit {times['fit']:.1f} s; "
                f"final test {times['test']:.1f} s; command to score {times['command']:.1f} s"
            )
            print(prof.table(ceiling["conv"]))
            if args.layers:
                print(prof.layer_table(args.layers))
            print(
                f"{times['precision']} ceiling at {ceiling['threads']} threads: conv {ceiling['conv']:.1f} GFLOP/s, "
                f"GEMM {ceiling['gemm']:.1f} GFLOP/s"
            )
            if times["precision"] != "fp32":  # the target names the fp32 convolution ceiling
                fp32 = compute_ceiling(precision="fp32")
                ceiling["fp32_conv"] = fp32["conv"]
                print(
                    f"fp32 ceiling at {fp32['threads']} threads: conv {fp32['conv']:.1f} GFLOP/s; this "
                    f"{times['precision']} run's compute at {g['compute'] / fp32['conv']:.0%} of it"
                )
            skip = ("prepare", "fit", "test", "command", "threads", "precision")
            print("score: " + ", ".join(f"{k} {v:.4g}" for k, v in times.items() if k not in skip and v is not None))
            runs.append(times)
            results[label] = {
                **times,
                "seconds": prof.seconds,
                "steps": prof.steps,
                "timed": prof.timed,
                "samples": prof.samples,
                "flops": prof.flops,
                "batch": prof.batch,
                "work": prof.work,
                "gflops": g,
                "ceiling": ceiling,
                **({"layers": prof.layer_rows(args.layers)} if args.layers else {}),
                "load": os.getloadavg()[0],
            }
            bars[label] = {"prepare": times["prepare"], **prof.seconds, "test": times["test"]}
            if args.json:  # after every run: a later task's failure keeps the earlier numbers
                Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "runs": results}, indent=1))
        if args.full:
            lines.append(verdict(name, runs))
    if lines:
        print("\n== time to result (" + cpu_name() + ")")
        print("\n".join(lines))
    if args.plot:
        from cnnkit.plots import time_breakdown

        time_breakdown(bars, args.plot, title=f"Where the time goes ({cpu_name()})")
        print(f"\nchart: {args.plot}")


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
