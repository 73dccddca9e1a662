"""Make the style transfer guide's figure: docs/images/style_transfer.jpg.

    python docs/style_images.py [--data-dir DIR] [--fast RUN] [--size 512] [--steps N] [--threads N]

One row per style image of DIR/styles/ (Udnie, mosaic): the content photo (a hymenoptera/val bee),
the style image, the result of ``cnnkit style transfer`` with its defaults (EfficientNet-Lite0
features, robust Gram loss) and, with ``--fast RUN``, the photo through the transformation network
of a ``cnnkit style train`` run (RUN's own style; other rows show "-"). Panels are 256 px high.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from cnnkit.tasks.style import TransferConfig, load_stylizer, stylize, transfer
from cnnkit.tasks.style.data import read_photo

OUT = Path(__file__).resolve().parent / "images"
CONTENT = "hymenoptera/val/bees/1032546534_06907fe3b3.jpg"
HEIGHT = 256


def _pil(x: torch.Tensor) -> Image.Image:
    arr = x[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    im = Image.fromarray(arr)
    return im.resize((round(im.width * HEIGHT / im.height), HEIGHT), Image.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA", "../shared/data"))
    parser.add_argument("--fast", help="a `cnnkit style train` run folder")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="default: cnnkit style transfer's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    data = Path(args.data_dir)
    content = read_photo(data / CONTENT)
    fast = load_stylizer(args.fast) if args.fast else None
    rows = []
    for style_file in sorted((data / "styles").glob("*.jpg")):
        style = read_photo(style_file)
        cfg = TransferConfig(size=args.size, threads=args.threads, **({"steps": args.steps} if args.steps else {}))
        tick = time.perf_counter()
        out = transfer(content, style, cfg)
        print(f"{style_file.name}: {out.history[-1]['step']} steps in {time.perf_counter() - tick:.0f} s", flush=True)
        panels = [_pil(read_photo(data / CONTENT, args.size)), _pil(style), _pil(out.image)]
        if fast is not None:
            same = fast.info.get("style") == style_file.name
            panels.append(_pil(stylize(fast, read_photo(data / CONTENT, args.size))) if same else None)
        rows.append(panels)
    width = max(sum(p.width if p else HEIGHT for p in r) + 8 * (len(r) - 1) for r in rows)
    sheet = Image.new("RGB", (width, len(rows) * HEIGHT + 8 * (len(rows) - 1)), "white")
    for i, panels in enumerate(rows):
        x = 0
        for p in panels:
            if p is None:
                ImageDraw.Draw(sheet).text((x + HEIGHT // 2, i * (HEIGHT + 8) + HEIGHT // 2), "-", fill="black")
                x += HEIGHT + 8
                continue
            sheet.paste(p, (x, i * (HEIGHT + 8)))
            x += p.width + 8
    OUT.mkdir(exist_ok=True)
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=88)
    (OUT / "style_transfer.jpg").write_bytes(buf.getvalue())
    print(f"wrote {OUT / 'style_transfer.jpg'}")


if __name__ == "__main__":
    main()
