"""``cnnkit sequence train|eval|predict``: thin wrappers over :mod:`cnnkit.tasks.sequence`."""

from __future__ import annotations

import re
import time

from cnnkit.cli import add_format, add_run_arguments, finished, print_json, train_config
from cnnkit.engine.config import add_config_arguments
from cnnkit.errors import CnnkitError
from cnnkit.tasks.sequence.config import FITTED, SequenceConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sequence",
        help="time-series classification with 1-D CNNs: train, eval, predict",
        description="FCN, ResNet and InceptionTime on UCR-style series (ucr:NAME, .ts, .tsv, .csv).",
    )
    sub = p.add_subparsers(dest="sequence_command", metavar="ACTION")

    t = sub.add_parser(
        "train",
        help="train a 1-D CNN on a UCR set or your own NAME_TRAIN file",
        description="Train through the shared engine on TRAIN less a validation part; TEST is scored "
        "once at the end. The run folder holds model.safetensors, resume.safetensors, metrics.csv, "
        "curves.png and config.yaml.",
    )
    add_config_arguments(t, SequenceConfig)
    add_run_arguments(t, "runs/sequence-<data>-<time>")
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="accuracy, error and confusion of a run")
    e.add_argument("run", help="run folder or model.safetensors")
    e.add_argument("--split", default="test", help="train | val | test of the run's data (default: test)")
    e.add_argument("--data", help="a labelled series file to evaluate on instead")
    e.add_argument("--data-dir", help="the folder holding the named sets (ucr:NAME; default: the run's)")
    add_format(e)
    e.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help="class and probabilities of every series in a file")
    q.add_argument("run", help="run folder or model.safetensors")
    q.add_argument("series", nargs="+", help=".ts / .tsv / .txt / .csv files")
    add_format(q)
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args) -> int:
    from cnnkit.engine.runfolder import RESUME_FREE, check_resume_settings
    from cnnkit.tasks.sequence.train import train

    values = train_config(SequenceConfig, args, ("ucr:",))
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN, the run folder to continue")
    if args.resume:  # the run continues with its own settings; the ones typed must equal them
        run = check_resume_settings(args.out, "sequence", values)
        values = {**values, **{k: run[k] for k in RESUME_FREE if k in run}}  # typed, or the run's own
    cfg = SequenceConfig(**values)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.data.split("/")[-1].removeprefix("ucr:"))
    out = args.out or f"runs/sequence-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    r = train(cfg, out, resume=args.resume, quiet=args.quiet)
    test = f"test error {r.test['error']:.4f} ({r.test['errors']}/{r.test['series']})" if r.test else "no test split"
    val = f", val accuracy {r.val['accuracy']:.4f}" if r.val else ""
    how = "fitted" if r.config.model in FITTED else f"{r.steps} step{'s' if r.steps != 1 else ''}"
    finished(args, f"done: {test}{val}, {how} in {r.seconds:.1f} s -> {out}  (`cnnkit sequence eval {out}`)")
    return 0


def run_eval(args) -> int:
    from cnnkit.console import shown
    from cnnkit.tasks.sequence.evaluate import evaluate_run

    if args.data is not None:
        one_split_files([args.data], "cnnkit sequence eval --data")
    out = evaluate_run(args.run, args.split, args.data, args.data_dir)
    if args.format == "json":
        print_json(out)
        return 0
    print(
        f"{shown(out['data'])} {out['split']} ({out['series']} series): accuracy {out['accuracy']:.4f}  "
        f"error {out['error']:.4f} ({out['errors']} wrong)  loss {out['loss']:.4f}"
    )
    names = [shown(c) for c in out["classes"]]
    head = "true / answer"
    width = max(len(head), *(len(c) for c in names))
    print(f"  {head:>{width}}  " + " ".join(f"{c:>6}" for c in names))
    for name, row in zip(names, out["confusion"]):
        print(f"  {name:>{width}}  " + " ".join(f"{v:6d}" for v in row))
    return 0


def run_predict(args) -> int:
    from cnnkit.console import shown
    from cnnkit.tasks.sequence.load import load_sequence
    from cnnkit.tasks.sequence.predict import predict_file

    one_split_files(args.series, "cnnkit sequence predict")
    model = load_sequence(args.run)
    for path in args.series:
        rows = predict_file(model, path)
        for r in rows:
            if args.format == "json":
                print_json({"file": path, **r})
            else:
                given = f"  (file's label {shown(r['label'])})" if r["label"] is not None else ""
                where = shown(f"{path}[{r['index']}]")
                print(f"{where}: {shown(r['class'])}  p={r['probability']:.3f}{given}")
    return 0


def one_split_files(paths: list[str], command: str) -> None:
    """Refuse, before a run is loaded, a path that is not a file of series of one split: a missing
    path or a folder (:func:`~cnnkit.data.series.check_series_file`), or an ``.npz``, which holds a
    set's two splits and is training data. ``command``: the command the message names."""
    from pathlib import Path

    from cnnkit.data.series import check_series_file

    for path in paths:
        check_series_file(path)
        if Path(path).suffix.lower() == ".npz":
            raise CnnkitError(
                f"{path}: an .npz holds a set's two splits, and `{command}` reads a file of one; give a .ts, "
                f".tsv, .txt or .csv file, or train on the .npz (`cnnkit sequence train --data {path}`) and "
                "score its test split with `cnnkit sequence eval RUN`"
            )
