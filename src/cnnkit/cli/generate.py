"""``cnnkit generate train|eval|predict``: thin wrappers over :mod:`cnnkit.tasks.generate`."""

from __future__ import annotations

from pathlib import Path

from cnnkit.cli import add_format, add_run_arguments, finished, print_json, train_config
from cnnkit.engine.config import add_config_arguments
from cnnkit.errors import CnnkitError
from cnnkit.tasks.generate.config import GenerateConfig

BUILTIN = ("mnist", "fashion_mnist", "kmnist", "emnist_digits")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="images from noise (DCGAN): train, eval, predict",
        description="A DCGAN (Radford et al. 2016) on 28x28 digits, unconditional or class-conditional.",
    )
    sub = p.add_subparsers(dest="generate_command", metavar="ACTION")

    t = sub.add_parser(
        "train",
        help="train a DCGAN (default data: MNIST)",
        description="Train generator and discriminator through the shared engine; the run folder holds "
        "model.safetensors (the generator), resume.safetensors (both networks and optimisers), metrics.csv, "
        "curves.png, config.yaml and samples/epoch_NNN.png (100 digits from fixed noise per epoch).",
    )
    add_config_arguments(t, GenerateConfig)
    add_run_arguments(t, "runs/generate-<data>-<time>")
    t.set_defaults(func=run_train)

    e = sub.add_parser(
        "eval",
        help="MNIST score and Frechet distance of generated digits, beside real test digits",
        description="Scores --count generated digits with a cnnkit-trained classifier of the same digits "
        "(`cnnkit train --data mnist --label-smoothing 0 --out runs/mnist`), and real held-out test digits "
        "the same way.",
    )
    e.add_argument("run", help="run folder or model.safetensors of `cnnkit generate train`")
    e.add_argument("--classifier", required=True, metavar="RUN", help="a `cnnkit train` run of the same digits")
    e.add_argument("--count", type=int, default=10000, help="digits per set (default: 10000)")
    e.add_argument("--seed", type=int, default=0, help="seeds the noise (default: 0)")
    e.add_argument("--data-dir", help="the folder holding the real digits (default: the run's)")
    add_format(e)
    e.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help="a PNG grid of new digits")
    q.add_argument("run", help="run folder or model.safetensors of `cnnkit generate train`")
    q.add_argument("--out", required=True, help="the PNG to write")
    q.add_argument("--count", type=int, default=64, help="digits in the grid (default: 64)")
    q.add_argument("--digit", type=int, help="the digit to draw (conditional generators)")
    q.add_argument("--seed", type=int, default=0, help="seeds the noise (default: 0)")
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args) -> int:
    import time

    from cnnkit.engine.runfolder import RESUME_FREE, check_resume_settings
    from cnnkit.tasks.generate.train import train

    values = train_config(GenerateConfig, args, BUILTIN)
    data = values.get("data")
    if data and data not in BUILTIN and not Path(data).exists():  # a name it does not know, or a mistyped folder
        raise CnnkitError(
            f"--data {vars(args).get('data') or data}: neither a folder nor a digit set `generate` draws; use one "
            f"of {', '.join(BUILTIN)} or a folder of 28x28 images"
        )
    if args.resume and not args.out:
        raise CnnkitError("--resume needs --out RUN, the run folder to continue")
    if args.resume:  # the run continues with its own settings; the ones typed must equal them
        run = check_resume_settings(args.out, "generate", values)
        values = {**values, **{k: run[k] for k in RESUME_FREE if k in run}}  # typed, or the run's own
    cfg = GenerateConfig(**values)
    out = args.out or f"runs/generate-{cfg.data}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, out, resume=args.resume, quiet=args.quiet)
    last = result.history[-1] if result.history else {}
    conditional = run.get("conditional", False) if args.resume else cfg.conditional  # resumed: the run's own
    digit = " --digit 7" if conditional else ""  # a conditional generator needs the digit to draw
    n = len(result.history)
    # resumed: the epochs are the run's, the seconds this call's
    whose = "the run's " if args.resume else ""
    epochs = f"{whose}{n} epoch{'s' if n != 1 else ''}"
    took = f"this call trained {result.seconds:.1f} s" if args.resume else f"in {result.seconds:.1f} s"
    finished(
        args,
        f"done: {epochs}, d_loss {last.get('train_d_loss', float('nan')):.4f} g_loss "
        f"{last.get('train_g_loss', float('nan')):.4f} {took} -> {out}  "
        f"(`cnnkit generate predict {out}{digit} --out digits.png`)",
    )
    return 0


def _check_seed(seed: int) -> None:
    """``--seed`` of predict and eval within train's range (torch's generator takes a signed 64-bit seed)."""
    if not 0 <= seed < 2**63:
        raise CnnkitError(f"--seed must be an integer from 0 to {2**63 - 1:,}; received {seed}")


def run_eval(args) -> int:
    from cnnkit.tasks.generate.evaluate import evaluate_run

    _check_seed(args.seed)
    out = evaluate_run(args.run, args.classifier, args.count, args.seed, args.data_dir)
    if args.format == "json":
        print_json(out)
        return 0
    g, r = out["generated"], out["real"]
    print(f"{out['data']}, {out['count']} digits per set    generated    real test digits")
    print(f"  MNIST score                  {g['score']:9.3f}    {r['score']:9.3f}")
    print(f"  Frechet distance             {g['fd']:9.3f}    {r['fd']:9.3f}")
    if "accuracy" in g:
        print(f"  classified as asked          {g['accuracy']:9.2%}    {r['accuracy']:9.2%}")
        for name, acc in g["accuracy_by_class"].items():
            print(f"    {name:>3}                        {acc:9.2%}")
    if "note" in out:
        print(f"note: {out['note']}")
    return 0


def run_predict(args) -> int:
    from cnnkit.tasks.generate.load import load_generator
    from cnnkit.tasks.generate.predict import predict

    _check_seed(args.seed)
    path = predict(load_generator(args.run), args.out, args.count, args.digit, args.seed)
    print(f"{path}: {args.count} digit{'' if args.count == 1 else 's'}")
    return 0
