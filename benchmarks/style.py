"""Style transfer benchmark: the optimisation of one 512 px image, and the fast network.

    python benchmarks/style.py transfer --data-dir ../shared/data          # default steps at 512 px
    python benchmarks/style.py optimizers --data-dir ../shared/data --seconds 60   # adam vs lbfgs, equal time
    python benchmarks/style.py fast --data-dir ../shared/data --out runs/udnie-fast  # train, then time predict

``transfer`` runs ``cnnkit style transfer``'s defaults (EfficientNet-Lite0, robust Gram loss) on a
hymenoptera photo with Udnie at 512 px and reports the wall time, the process's CPU time and the
seconds per step. ``optimizers`` gives Adam and L-BFGS the same wall-clock budget each and reports
the loss each reached. ``fast`` trains ``cnnkit style train``'s network (``--model``) on the flower
photos (``--minutes`` stops before an epoch that would pass the budget), then stylises a 512 px photo
(median of 5) and scores its output at ``--score-size`` with the training loss's terms beside the
photo's own (content 0) and the optimised transfer's: how much of the style the network learnt. Every
report names the CPU, the torch threads and the load average beside the target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.style import StyleTrainConfig, TransferConfig, load_stylizer, stylize, train, transfer
from cnnkit.tasks.style.data import read_photo, write_image

TARGETS = "targets: 512 px transfer <= 120 s with the default steps; fast network < 1 s a 512 px photo after <= 30 min"
CONTENT = "hymenoptera/val/bees/1032546534_06907fe3b3.jpg"


def _machine(threads: int) -> str:
    return f"{cpu_name()}, {threads} torch thread(s), load average {os.getloadavg()[0]:.2f}"


def run_transfer(args) -> None:
    data = Path(args.data_dir)
    cfg = TransferConfig(size=args.size, steps=args.steps, threads=args.threads)
    content, style = read_photo(data / CONTENT), read_photo(data / "styles" / args.style)
    cpu = time.process_time()
    out = transfer(content, style, cfg, quiet=True)
    cpu = time.process_time() - cpu
    if args.save:
        write_image(out.image, args.save)
    last = out.history[-1]
    print(f"{_machine(torch.get_num_threads())}\n{TARGETS}")
    print(
        f"transfer {args.size} px, {cfg.steps} steps ({cfg.resolved().optimizer}): {out.seconds:.1f} s wall, "
        f"{cpu:.1f} s CPU, {out.seconds / cfg.steps:.3f} s/step; loss {out.history[0]['loss']:.4f} -> "
        f"{last['loss']:.4f} (style {out.history[0]['style']:.4f} -> {last['style']:.4f})"
    )


def run_optimizers(args) -> None:
    data = Path(args.data_dir)
    content, style = read_photo(data / CONTENT), read_photo(data / "styles" / args.style)
    print(f"{_machine(args.threads or torch.get_num_threads())}\n{args.seconds} s each at {args.size} px")
    for opt in ("adam", "lbfgs"):
        probe = transfer(content, style, TransferConfig(size=args.size, steps=5, optimizer=opt, threads=args.threads))
        steps = max(5, int(args.seconds / (probe.seconds / 5)))  # the budget in this optimizer's own steps
        out = transfer(content, style, TransferConfig(size=args.size, steps=steps, optimizer=opt, threads=args.threads))
        last = out.history[-1]
        print(
            f"{opt:>5}: {steps} steps in {out.seconds:.1f} s, loss {last['loss']:.4f} (content {last['content']:.4f}, "
            f"style {last['style']:.4f}, tv {last['tv']:.4f}); load average {os.getloadavg()[0]:.2f}"
        )


def run_fast(args) -> None:
    data = Path(args.data_dir)
    cfg = StyleTrainConfig(
        style=str(data / "styles" / args.style),
        data=str(data / args.photos),
        epochs=args.epochs,
        model=args.model,
        photos=args.limit,
        threads=args.threads,
        minutes=args.minutes,
        style_weight=args.style_weight,
        robust_layers=None if args.robust_layers is None else tuple(args.robust_layers),
        **({"crop": args.crop} if args.crop else {}),
    )
    tick = time.perf_counter()
    if not (Path(args.out) / "model.safetensors").is_file():
        result = train(cfg, args.out, quiet=args.quiet)
        print(f"trained {len(result.history)} epochs in {result.seconds:.0f} s ({result.images} crops)")
    print(f"training + set-up: {time.perf_counter() - tick:.0f} s")
    net = load_stylizer(args.out)
    x = read_photo(data / CONTENT, 512)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        y = stylize(net, x)
        times.append(time.perf_counter() - t)
    if args.save:
        write_image(y, args.save)
    print(f"{_machine(torch.get_num_threads())}\n{TARGETS}")
    print(
        f"fast network {net.info['arch']}: a {x.shape[-1]}x{x.shape[-2]} photo in "
        f"{statistics.median(times[1:]):.3f} s (median of 5 after one warm-up)"
    )
    _score(args, net)


def _score(args, net: torch.nn.Module) -> None:
    """The loss's content and style terms of the network's output on the bee photo at ``--score-size``,
    beside the photo itself and the optimised transfer (the defaults' steps) at the same size; when the
    run trained with other Gram kinds than the default loss, its own loss's style term too."""
    from cnnkit.tasks.style.transfer import perceptual_loss

    data = Path(args.data_dir)
    photo = read_photo(data / CONTENT, args.score_size)
    style = read_photo(data / "styles" / args.style, args.score_size)
    cfg = TransferConfig(size=args.score_size, steps=max(args.score_steps, 1), threads=args.threads)
    losses = {"style": perceptual_loss(cfg.resolved(), style)}
    own = tuple(net.info.get("config", {}).get("robust_layers") or ())
    if own != cfg.resolved().robust_layers:
        name = "own style (" + (", ".join(own) or "plain Gram") + ")"
        losses[name] = perceptual_loss(replace(cfg, robust_layers=own).resolved(), style)
    rows = [("the photo itself", photo), (f"fast network {net.info['arch']}", stylize(net, photo))]
    if args.score_steps:
        rows.append((f"optimised transfer, {args.score_steps} steps", transfer(photo, style, cfg, quiet=True).image))
    target = losses["style"].content_targets(photo)
    print(f"the bee photo at {args.score_size} px (content, style: relative errors, the training loss's terms):")
    for name, image in rows:
        with torch.no_grad():
            terms = {k: loss(image, target)[1] for k, loss in losses.items()}
        styles = "  ".join(f"{k} {float(t['style']):.3f}" for k, t in terms.items())
        print(f"  {name:<40} content {float(terms['style']['content']):.3f}  {styles}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["transfer", "optimizers", "fast"])
    parser.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA", "../shared/data"))
    parser.add_argument("--style", default="udnie.jpg")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="transfer: steps (default: the command's)")
    parser.add_argument("--seconds", type=float, default=60.0, help="optimizers: wall-clock budget of each")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--photos", default="flowers", help="fast: the training photos' folder under --data-dir")
    parser.add_argument("--limit", type=int, default=0, help="fast: the first N photos only (0: all)")
    parser.add_argument("--epochs", type=int, default=None, help="fast: at most this many epochs")
    parser.add_argument("--minutes", type=float, default=30.0, help="fast: training time budget (0: all epochs)")
    parser.add_argument("--model", default=None, help="fast: the transformation network (default: the command's)")
    parser.add_argument("--crop", type=int, default=None, help="fast: training crop side (px; default: the command's)")
    parser.add_argument(
        "--style-weight", type=float, default=None, help="fast: the style loss's weight (default: the command's)"
    )
    parser.add_argument(
        "--robust-layers",
        nargs="*",
        default=None,
        help="fast: style layers with the robust Gram (none given: plain Gram)",
    )
    parser.add_argument("--score-size", type=int, default=256, help="fast: the side the bee photo is scored at")
    parser.add_argument("--score-steps", type=int, default=100, help="fast: the optimised transfer's steps (0: none)")
    parser.add_argument("--out", default="runs/style-fast")
    parser.add_argument("--save", help="write the result image here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = TransferConfig().steps
    {"transfer": run_transfer, "optimizers": run_optimizers, "fast": run_fast}[args.part](args)


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
