"""Make the documentation's example figures in docs/images/ (about 15 s on one CPU core).

    python docs/make_images.py [--data-dir DIR]   # DIR holds mnist/ (default: $CNNKIT_DATA or ../shared/data)
    python docs/make_images.py --finetuned RUN    # also: Grad-CAM of a bee by a fine-tuned hymenoptera run
    python docs/make_images.py --detect RUN --segment RUN --instance RUN   # Penn-Fudan runs' test photos
    python docs/make_images.py --generate RUN     # a GAN run's digits (conditional: a row per class)

A small bias-free global-average-pooling CNN is trained for two epochs on 6,000 MNIST digits (the
same recipe as tests/test_explain.py), then: Grad-CAM on digits pasted on an 84x84 canvas, the feature
maps of one digit, filter patterns of its second convolution, and the training curves. With
``--finetuned RUN`` (``cnnkit classify finetune --model efficientnet_lite0 --weights imagenet --data
hymenoptera --out RUN``): Grad-CAM of the run's network on a hymenoptera/val bee photo. With
``--detect``, ``--segment``, ``--instance`` (runs of ``cnnkit detect train``, ``cnnkit segment
train``, ``cnnkit instance train`` on Penn-Fudan): what each predicts on the first three photos of its
test split, drawn by its own ``predict`` command, side by side. With ``--generate RUN`` (``cnnkit
generate train``): 100 digits of the run's generator; a conditional one's from the fixed noise of its
per-epoch grids, ten of each digit (``gan_mnist_cond.png``), an unconditional one's as it draws them
(``gan_mnist_uncond.png``).
"""

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit import plots
from cnnkit.data.idx import read_idx
from cnnkit.explain import feature_maps, filter_patterns, grad_cam

OUT = Path(__file__).resolve().parent / "images"


def gap_net() -> nn.Sequential:
    conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1, bias=False)  # noqa: E731
    return nn.Sequential(
        conv(1, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(16, 32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(32, 64),
        nn.ReLU(),
        conv(64, 64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10, bias=False),
    )


def main() -> None:
    default = os.environ.get("CNNKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default)
    parser.add_argument("--finetuned", help="a fine-tuned hymenoptera run: draw its Grad-CAM of a bee")
    for task in PENNFUDAN_TASKS:
        parser.add_argument(
            f"--{task}", metavar="RUN", help=f"a Penn-Fudan `cnnkit {task} train` run: draw its test photos"
        )
    parser.add_argument("--generate", metavar="RUN", help="a `cnnkit generate train` run: draw its digits")
    args = parser.parse_args()
    if args.generate:
        return gan_grid(args.generate)
    if args.finetuned:
        return finetuned_gradcam(args.finetuned, Path(args.data_dir))
    runs = {task: getattr(args, task) for task in PENNFUDAN_TASKS if getattr(args, task)}
    if runs:
        return pennfudan(runs, Path(args.data_dir))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    mnist = Path(args.data_dir) / "mnist"
    x = read_idx(mnist / "train-images-idx3-ubyte.gz")[:7000, None].float() / 255
    y = read_idx(mnist / "train-labels-idx1-ubyte.gz")[:7000].long()
    xt = read_idx(mnist / "t10k-images-idx3-ubyte.gz")[:1000, None].float() / 255
    yt = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[:1000].long()
    x, xv, y, yv = x[:6000], x[6000:], y[:6000], y[6000:]
    net = gap_net()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    history = []
    for epoch in range(1, 4):
        t0, net = time.time(), net.train()
        perm, total, correct = torch.randperm(6000, generator=gen), 0.0, 0
        for i in range(0, 6000, 64):
            b = perm[i : i + 64]
            shift = torch.randint(-3, 4, (2,), generator=gen).tolist()
            out = net(x[b].roll(shift, dims=(2, 3)))
            loss = F.cross_entropy(out, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            correct += int((out.argmax(1) == y[b]).sum())
        net.eval()
        with torch.no_grad():
            out = net(xv)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / 6000,
                "train_acc": correct / 6000,
                "val_loss": float(F.cross_entropy(out, yv)),
                "val_acc": float((out.argmax(1) == yv).float().mean()),
                "lr": 5e-3,
                "seconds": time.time() - t0,
            }
        )
    plots.training_curves(
        history, OUT / "training_curves.png", title="Training curves: a GAP CNN on 6,000 MNIST digits"
    )

    canvas = torch.zeros(1, 84, 84)
    canvas[:, 40:68, 12:40] = xt[0]  # a 7 pasted off-centre
    heat, cls = grad_cam(net, canvas)
    plots.heatmap_overlay(
        canvas,
        heat,
        OUT / "gradcam_mnist_canvas.png",
        title=f"Grad-CAM for class {cls} on an 84x84 canvas (digit pasted at rows 40-67, cols 12-39)",
    )
    maps = feature_maps(net, xt[0], layers=["1", "4", "9"])
    plots.feature_map_grid(
        maps,
        OUT / "feature_maps.png",
        max_channels=16,
        cols=16,
        title=f"Feature maps (after each ReLU) of a test digit {int(yt[0])}",
    )
    patterns = filter_patterns(net, "4", channels=list(range(16)), size=28)
    plots.pattern_grid(patterns, OUT / "filter_patterns.png", channels=range(16), layer="layer 4 (ReLU of conv 2)")
    for f in sorted(OUT.glob("*.png")):
        print(f"{f.relative_to(OUT.parent.parent)}  {f.stat().st_size // 1024} KB")


def gan_grid(run: str) -> None:
    from cnnkit.tasks.generate.load import load_generator
    from cnnkit.tasks.generate.predict import write_grid
    from cnnkit.tasks.generate.train import GRID_SEED, fixed_grid

    sampler = load_generator(run)
    if sampler.classes:  # a row per class, from the per-epoch grids' fixed noise
        out, images = OUT / "gan_mnist_cond.png", fixed_grid(sampler)
    else:  # 100 digits as the model draws them (a code or cluster drawn by its prior)
        out, images = OUT / "gan_mnist_uncond.png", sampler.eval().sample(100, seed=GRID_SEED)
    write_grid(images, out, cols=10)
    print(f"{out.relative_to(OUT.parent.parent)}  {out.stat().st_size // 1024} KB")


def finetuned_gradcam(run: str, data: Path) -> None:
    """Grad-CAM (at the last ReLU6: 7x7 at 224 px, 9x9 at 288) of a fine-tuned run on one hymenoptera/val bee photo."""
    import cnnkit
    from cnnkit.explain.hooks import default_cam_layer
    from cnnkit.models.preprocess import Preprocess, load_photo

    model = cnnkit.load(run)
    model.tta = ""
    photo = sorted((data / "hymenoptera" / "val" / "bees").glob("*.jpg"))[3]
    x = load_photo(photo, Preprocess(tuple(model.input_size), (0.5,) * 3, (0.5,) * 3, 0.875, "bicubic"))
    layer = default_cam_layer(model, x[None])
    heat, cls = grad_cam(model, x, None, layer)
    with torch.no_grad():
        p = float(model(x[None]).softmax(1)[0, cls])
    path = OUT / "gradcam_bee_finetuned.png"
    plots.heatmap_overlay(
        x,
        heat,
        path,
        label="Grad-CAM",
        title=f"Fine-tuned efficientnet_lite0: "
        f"{model.classes[cls]!r} p={p:.2f}, Grad-CAM at {layer[4:]} ({photo.name})",
    )
    print(f"{path.relative_to(OUT.parent.parent)}  {path.stat().st_size // 1024} KB")


PENNFUDAN_PHOTOS = 3  # the first three photos of a run's test split
# task: (its predict command's options, the output flag, the suffix of the drawn PNGs)
PENNFUDAN_TASKS = {
    "detect": (["--score", "0.5"], "--out-dir", "_boxes"),
    "segment": ([], "--out", "_overlay"),
    "instance": (["--score", "0.5"], "--out-dir", ""),
}


def pennfudan(runs: dict[str, str], data: Path) -> None:
    """Each run's ``predict`` output on the first test photos of its split, as one strip per task."""
    import json
    import tempfile

    from PIL import Image

    from cnnkit.cli import main as cnnkit

    for task, run in runs.items():
        test = json.loads((Path(run) / "split.json").read_text())["test"][:PENNFUDAN_PHOTOS]
        photos = [str(data / "pennfudan" / "PNGImages" / name) for name in test]
        options, flag, suffix = PENNFUDAN_TASKS[task]
        with tempfile.TemporaryDirectory() as tmp:
            if cnnkit([task, "predict", run, *photos, *options, flag, tmp]) != 0:
                raise SystemExit(f"cnnkit {task} predict failed")
            tiles = [Image.open(Path(tmp) / f"{Path(p).stem}{suffix}.png").convert("RGB") for p in photos]
        tiles = [t.resize((round(t.width * 360 / t.height), 360), Image.Resampling.LANCZOS) for t in tiles]
        strip = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), 360), "white")
        x = 0
        for t in tiles:
            strip.paste(t, (x, 0))
            x += t.width + 8
        path = OUT / f"pennfudan_{task}.jpg"
        strip.save(path, quality=88)
        print(f"{path.relative_to(OUT.parent.parent)}  {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
