"""Build a segmenter for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import contextlib

import torch

from cnnkit.data.segmentation import SegmentationSet
from cnnkit.engine.runfolder import load_run_model
from cnnkit.errors import CnnkitError
from cnnkit.export import MAX_SIDE_KEY, TEST_TIME_KEY, OnnxModel
from cnnkit.models.deploy import flip_tta
from cnnkit.tasks.segment.config import SegmentConfig, encoder_weights
from cnnkit.tasks.segment.data import _channels, input_stats
from cnnkit.tasks.segment.predict import Segmenter, scales, test_time_logits


def build_model(cfg: SegmentConfig, train: SegmentationSet) -> Segmenter:
    """The network (seeded init) wrapped with its input normalisation (:func:`input_stats`)."""
    from cnnkit.models.segmentation import create_segmenter

    torch.manual_seed(cfg.seed)
    net = create_segmenter(
        cfg.arch,
        cfg.model,
        train.num_classes,
        in_channels=_channels(train),
        output_stride=cfg.output_stride,
        weights=encoder_weights(cfg.weights),
        width=cfg.width,
        finest=cfg.finest,
        fcn_paper=cfg.fcn_paper,
    )
    mean, std = input_stats(cfg, train)
    return Segmenter(net, mean, std, train.classes, flip_tta(cfg.tta), cfg.test_scale)


def load_segmenter(path, device: str = "cpu") -> Segmenter:
    """A trained segmenter from a run folder or its ``model.safetensors``, rebuilt from data, never code.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit segment train``.
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Returns:
        The :class:`Segmenter` in eval mode, the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: not a segmentation run, or a damaged or crafted file.

    Example:
        >>> model = load_segmenter("runs/seg")                   # doctest: +SKIP
        >>> model.predict(torch.rand(1, 3, 320, 320)).shape      # doctest: +SKIP
        torch.Size([1, 320, 320])
    """
    return load_run_model(path, "segment", Segmenter.from_info, device)


class OnnxSegmenter(OnnxModel):
    """An exported segmenter run by ONNX Runtime, with the run's test-time procedure around the graph:
    the file holds one view (no flip, no rescaling) and, as ``cnnkit.test_time``, the run's ``tta``
    and ``test_scale``, applied here as :class:`Segmenter` applies them (:func:`test_time_logits`)."""

    tta: str = ""
    test_scale: tuple[float, ...] = (1.0,)

    @contextlib.contextmanager
    def without_tta(self):
        """A context in which the file answers on the image alone, as its graph does."""
        tta, scale = self.tta, self.test_scale
        self.tta, self.test_scale = "", (1.0,)
        try:
            yield self
        finally:
            self.tta, self.test_scale = tta, scale

    def __call__(self, x: torch.Tensor):
        if not self.tta and self.test_scale == (1.0,):
            return super().__call__(x)
        return test_time_logits(super().__call__, x, self.tta, self.test_scale)


def onnx_segmenter(path) -> OnnxModel:
    """A segmenter exported by ``cnnkit export --dynamic-size``, run by ONNX Runtime, for ``predict_image``.

    Args:
        path: the ``.onnx`` file.

    Returns:
        An :class:`OnnxSegmenter` with ``classes``, ``input_size``, ``info["config"]["max_side"]`` and
        the run's ``tta`` and ``test_scale`` (a file without ``cnnkit.test_time``: none).

    Raises:
        CnnkitError: onnxruntime is missing, the file is not an ONNX model, its metadata is damaged,
            or it is not a segmenter exported with its classes and a free image size.
    """
    model = OnnxSegmenter(path)
    size = model.input_size
    if model.task != "segment" or model.classes is None or size is None or len(size) != 3 or size[0] not in (1, 3):
        raise CnnkitError(
            f"{path} is not a segmenter exported by `cnnkit export` (task {model.task}, input {size}); "
            "export a `cnnkit segment train` run"
        )
    shape = model.session.get_inputs()[0].shape
    if len(shape) != 4 or isinstance(shape[2], int) or isinstance(shape[3], int):
        raise CnnkitError(
            f"{path} takes only {shape[2]}x{shape[3]} images; export the run with `cnnkit export RUN --dynamic-size`"
        )
    max_side = model.meta_value(MAX_SIDE_KEY, int)
    if max_side is not None and not 16 <= max_side <= 1 << 16:
        raise CnnkitError(f"{path}: metadata {MAX_SIDE_KEY} is {max_side}, not 16..65536; export the run again")
    model.info["config"] = {"max_side": max_side}
    test_time = model.meta_value(TEST_TIME_KEY, dict) or {}
    try:
        model.tta, model.test_scale = flip_tta(test_time.get("tta", "")), scales(test_time.get("test_scale", 1.0))
    except CnnkitError:
        raise model._bad(TEST_TIME_KEY, '{"tta": "" or "flip", "test_scale": [numbers from 0 to 4]}') from None
    return model
