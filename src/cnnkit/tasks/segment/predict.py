"""The deployable :class:`Segmenter` and its label maps on images, drawn as overlays."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.export import model_device
from cnnkit.models.deploy import Classifier

MAX_TEST_SCALE = 4  # the image resized by more would need gigabytes, as detect's and instance's cap


def scales(value) -> tuple[float, ...]:
    """A segmenter's test scales as a tuple of floats: one number (a run's older metadata) or several.

    Raises:
        CnnkitError: none, or a value that is not a positive number.
    """
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    ok = values and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= MAX_TEST_SCALE for v in values
    )  # NaN fails the comparison
    if not ok:
        raise CnnkitError(
            f"--test-scale takes positive numbers up to {MAX_TEST_SCALE:g}; received --test-scale {value!r}"
        )
    return tuple(float(v) for v in values)


class Segmenter(Classifier):
    """A segmentation network with its input normalisation: float (B, C, H, W) in [0, 1] -> logits (B, K, H, W).

    The classifier's wrapper (same buffers) with a per-pixel :meth:`predict`. In eval mode it
    answers by its test-time procedure: the image resized by each factor of ``test_scale`` (the
    answers resized back to (H, W), their probabilities averaged over the factors), and with
    ``tta="flip"`` the probabilities of the image and of its mirror image (mirrored back) averaged.
    ``without_tta()`` turns both off (per-epoch validation). Every image the network sees, in training
    too, is first padded at the bottom and right with black (as training crops are padded) to a
    multiple of the network's ``size_multiple``, and its scores cropped back: the encoder's maps then
    line up with the decoder's as they do on the training crops
    (:mod:`cnnkit.models.segmentation`).

    Args:
        net: the segmentation network (``create_segmenter``); its ``config`` rebuilds it.
        mean: per-channel mean of the input normalisation, on [0, 1] pixels.
        std: per-channel standard deviation of the input normalisation.
        classes: the class names, background first.
        tta: ``""`` or ``"flip"``.
        test_scale: the factor, or factors, the image is resized by before the network in eval mode.

    Attributes:
        net: the network.
        classes: the class names.
        config: the arguments that rebuild ``net``.
        input_size: ``(C,)``: any H, W.
        tta: ``""`` | ``"flip"``.
        test_scale: the factors, a tuple of floats.
        size_multiple: the network's ``size_multiple`` (1 for a network without one).

    Raises:
        CnnkitError: an unknown ``tta`` or a ``test_scale`` that is not positive numbers.
    """

    def __init__(self, net: nn.Module, mean, std, classes: list[str], tta: str = "", test_scale: float | tuple = 1.0):
        if tta not in ("", "flip"):
            raise CnnkitError(f"a segmenter's test-time augmentation is '' or 'flip'. Received: tta={tta!r}")
        super().__init__(net, mean, std, classes, (len(mean),), tta)
        self.test_scale = scales(test_scale)
        self.config = dict(getattr(net, "config", {}))
        self.size_multiple = int(getattr(net, "size_multiple", 1))

    @contextlib.contextmanager
    def without_tta(self):
        """A context in which the segmenter answers on the image alone: no flip, no rescaling."""
        scale, self.test_scale = self.test_scale, (1.0,)
        try:
            with super().without_tta():
                yield self
        finally:
            self.test_scale = scale

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits on one view, padded to ``size_multiple`` and cropped back:
        float (B, C, H, W) in [0, 1] -> (B, K, H, W)."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        x = F.pad(x, (0, -w % m, 0, -h % m))  # black, at the bottom and right
        return self.net((x - self.mean) / self.std)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or (not self.tta and self.test_scale == (1.0,)):
            return self.scores(x)
        return test_time_logits(self.scores, x, self.tta, self.test_scale)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) floats in [0, 1] -> (B, H, W) int64 class indices."""
        return self(x).argmax(1)

    def describe(self) -> dict:
        """The checkpoint's metadata that :meth:`from_info` rebuilds the module from."""
        return {
            "task": "segment",
            "segmenter": self.config,
            "classes": self.classes,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "tta": self.tta,
            "test_scale": list(self.test_scale),
        }

    @classmethod
    def from_info(cls, info: dict) -> Segmenter:
        """The (untrained) module a checkpoint's metadata describes; load its state dict after."""
        from cnnkit.models.segmentation import create_segmenter

        if info.get("task") != "segment" or "segmenter" not in info:
            raise CnnkitError("this checkpoint is not a segmentation model (no 'segmenter' in its metadata)")
        cfg = dict(info["segmenter"], weights=None)  # the trained weights come from the file
        return cls(
            create_segmenter(**cfg),
            info["mean"],
            info["std"],
            info["classes"],
            info.get("tta", ""),
            info.get("test_scale", 1.0),
        )


def test_time_logits(scores, x: torch.Tensor, tta: str, test_scale: tuple[float, ...]) -> torch.Tensor:
    """A segmenter's test-time procedure around ``scores`` (one view -> logits): the image resized by
    each factor of ``test_scale`` and, with ``tta="flip"``, mirrored; the probabilities averaged and
    their log returned at the image's size (B, K, H, W). :class:`Segmenter` runs it around its
    network, an exported file's :class:`~cnnkit.tasks.segment.load.OnnxSegmenter` around ONNX Runtime."""
    from cnnkit.layers.upsample import resize

    h, w = x.shape[-2:]
    answers = []
    for scale in test_scale:
        y = x
        if scale != 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        probs = scores(y).float().softmax(1)  # (B, K, h', w')
        if tta == "flip":
            probs = (probs + scores(y.flip(-1)).float().softmax(1).flip(-1)) / 2
        answers.append(probs)
    if len(answers) == 1:
        return resize(answers[0].clamp_min(1e-12).log(), (h, w), "bilinear")  # (B, K, H, W)
    probs = torch.stack([resize(p, (h, w), "bilinear") for p in answers]).mean(0)
    return probs.clamp_min(1e-12).log()


@torch.no_grad()
def predict_masks(model: nn.Module, images, batch_size: int = 32) -> list[torch.Tensor] | torch.Tensor:
    """Class-index maps for uint8 images, one per image at its own size.

    The model runs in eval mode (its test-time procedure included); its own mode is restored.

    Args:
        model: a :class:`Segmenter` (or any float (B, C, H, W) in [0, 1] -> (B, K, H, W) logits).
        images: stacked uint8 (N, C, H, W), or a list of uint8 (C, H, W) photos of any sizes.
        batch_size: stacked images per forward pass (a list goes one photo at a time).

    Returns:
        (N, H, W) int64 for stacked images, a list of (H, W) int64 for a list.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if isinstance(images, torch.Tensor):
            return torch.cat(
                [
                    model(images[i : i + batch_size].to(device).float().div_(255)).argmax(1).cpu()
                    for i in range(0, images.shape[0], batch_size)
                ]
            )
        return [model(im[None].to(device).float().div_(255)).argmax(1)[0].cpu() for im in images]
    finally:
        model.train(was_training)


def palette(n: int) -> torch.Tensor:
    """(n, 3) uint8 colours: 0 black, then PASCAL VOC's colour map (bits of the index spread over R, G, B)."""
    colours = torch.zeros(n, 3, dtype=torch.uint8)
    for c in range(n):
        r = g = b = 0
        v = c
        for shift in range(7, -1, -1):  # bit 3k of the index -> bit (7 - k) of R, 3k + 1 of G, 3k + 2 of B
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        colours[c] = torch.tensor([r, g, b])
    return colours


def overlay(image: torch.Tensor, mask: torch.Tensor, num_classes: int, alpha: float = 0.5) -> torch.Tensor:
    """(C, H, W) uint8 image and (H, W) class map -> (3, H, W) uint8: each class's colour blended in
    (background left as it is)."""
    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    colour = palette(max(num_classes, int(mask.max()) + 1))[mask.long()].permute(2, 0, 1).float()  # (3, H, W)
    fg = (mask > 0)[None]
    blended = torch.where(fg, (1 - alpha) * rgb.float() + alpha * colour, rgb.float())
    return blended.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def image_logits(model: Segmenter, image: torch.Tensor, max_side: int | None = None) -> torch.Tensor:
    """The class scores of one photo, at the photo's size: what :func:`predict_image` takes the
    label map from (its log-probabilities when the model averages flips or scales).

    Args:
        model: a :class:`Segmenter` (put in eval mode), or its exported file
            (:func:`cnnkit.tasks.segment.load.onnx_segmenter`).
        image: uint8 (C, H, W).
        max_side: the network sees the photo shrunk so its longer side is at most this, and its
            logits are resized back (None: as it is).

    Returns:
        (K, H, W) float scores on the CPU.

    Example:
        >>> probs = image_logits(load_segmenter("runs/seg"), read_pixels("street.jpg"), 384).softmax(0)  # doctest: +SKIP
    """
    from cnnkit.layers.upsample import resize

    h, w = image.shape[1:]
    x = image[None].float().div_(255)
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        x = F.interpolate(
            x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False, antialias=True
        )
    device = model_device(model)
    return resize(model.eval()(x.to(device)).float(), (h, w), "bilinear")[0].cpu()  # (K, H, W)


def predict_image(model: Segmenter, image: torch.Tensor, max_side: int | None = None) -> torch.Tensor:
    """The class map of one photo, at the photo's size: the argmax of :func:`image_logits`.

    Args:
        model: as for :func:`image_logits`.
        image: uint8 (C, H, W).
        max_side: as for :func:`image_logits`.

    Returns:
        (H, W) int64 class indices.

    Example:
        >>> mask = predict_image(load_segmenter("runs/seg"), read_pixels("street.jpg"), max_side=384)  # doctest: +SKIP
    """
    return image_logits(model, image, max_side).argmax(0)


def write_prediction(image: torch.Tensor, mask: torch.Tensor, num_classes: int, out_dir, stem: str):
    """Write a class map as a grey PNG of class indices and as a colour overlay on the image.

    Args:
        image: uint8 (C, H, W).
        mask: (H, W) class indices, 0 = background.
        num_classes: the number of classes (at most 256: a grey PNG holds 0-255).
        out_dir: the folder (created if missing).
        stem: the files' name without extension.

    Returns:
        (``out_dir/<stem>.png``, ``out_dir/<stem>_overlay.png``).

    Raises:
        CnnkitError: more than 256 classes.
    """

    from PIL import Image

    from cnnkit.engine.runfolder import save_png
    from cnnkit.errors import output_folder

    out_dir = output_folder(out_dir, "--out")
    if num_classes > 256:
        raise CnnkitError(f"a grey PNG holds class indices up to 255; this model has {num_classes} classes")
    grey, colour = out_dir / f"{stem}.png", out_dir / f"{stem}_overlay.png"
    save_png(Image.fromarray(mask.to(torch.uint8).numpy()), grey)  # 2-D uint8: mode L
    save_png(Image.fromarray(overlay(image, mask, num_classes).permute(1, 2, 0).numpy()), colour)
    return grey, colour
