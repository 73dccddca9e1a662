"""Predict & explain: an uploaded image, a listed run or a zoo model -> top classes and pictures.

Uploads are bounded twice: the request body in bytes (:class:`~cnnkit.serve.limits.Limits`) and the
image's width x height, read from its header *before* it is decoded (a small PNG that claims
50,000 x 50,000 pixels -- a decompression bomb -- is refused without being inflated). Nothing is
unpickled: runs load through :func:`cnnkit.load` (safetensors); zoo models get their ImageNet
weights where these are on the machine already (an installed weight package), else random weights --
the page never starts a download. The pictures are :mod:`cnnkit.plots` figures of :mod:`cnnkit.explain` results.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from collections import OrderedDict
from email.parser import BytesParser
from email.policy import HTTP

import torch

from cnnkit.errors import CnnkitError, brief, short_error
from cnnkit.serve.limits import Limits, Refused

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
METHODS = ("gradcam", "saliency", "featuremaps", "filters", "patterns")
MAX_NESTED = 8  # multipart parts within the body (a form's upload has none)
_NESTED = re.compile(rb"^content-type:[ \t]*multipart/", re.IGNORECASE | re.MULTILINE)


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes | str]:
    """A multipart/form-data body -> {field: str, or bytes for a file}, with the stdlib's MIME parser."""
    if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
        raise Refused("send the image as multipart/form-data with fields 'file' and 'model'", 415)
    # a part that is itself a multipart: the stdlib parser recurses (and slows) with each level, and a
    # browser's form never sends one; counted before parsing, a RecursionError caught after
    if len(_NESTED.findall(body)) > MAX_NESTED:
        raise Refused("the multipart body nests multiparts too deeply; send fields 'file' and 'model'")
    try:
        msg = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
        )
    except RecursionError:
        raise Refused("the multipart body nests multiparts too deeply; send fields 'file' and 'model'") from None
    if not msg.is_multipart():
        raise Refused("the multipart body could not be parsed; send fields 'file' and 'model'")
    fields: dict[str, bytes | str] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[name] = Upload(payload, filename) if filename is not None else payload.decode("utf-8", "replace")
    return fields


class Upload(bytes):
    """An uploaded file's bytes, with the name the browser gave it (for messages)."""

    def __new__(cls, data: bytes, filename: str | None = None):
        obj = super().__new__(cls, data)
        obj.filename = filename
        return obj


class _Named(io.BytesIO):
    """The upload as a file object whose ``str`` names it, as messages about a path would."""

    def __init__(self, data: bytes):
        super().__init__(data)
        name = getattr(data, "filename", None)
        self.label = f"the upload {name[:80]!r}" if name else "the uploaded file"

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def open_image(data: bytes, limits: Limits):
    """Check an upload's format and pixel count from its header; the decoded PIL image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise Refused("no image: send the file in the 'file' field")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            fmt, (w, h) = probe.format, probe.size
            frames = getattr(probe, "n_frames", 1)
    except Image.DecompressionBombError as exc:  # Pillow's own bound, far above ours
        raise Refused(
            f"the image is refused as a decompression bomb ({short_error(exc, clause=True)}); upload an image of "
            f"at most {limits.image_pixels:,} pixels",
            413,
        ) from None
    except (UnidentifiedImageError, OSError):
        raise Refused("the file is not an image that can be read; upload a PNG or JPEG", 415) from None
    if fmt not in IMAGE_FORMATS:
        raise Refused(f"{fmt} images are not accepted; upload a PNG or JPEG", 415)
    if w * h > limits.image_pixels or frames > 1 and w * h * frames > limits.image_pixels:
        raise Refused(
            f"the image is {w:,} x {h:,} pixels{f' x {frames} frames' if frames > 1 else ''}; at "
            f"most {limits.image_pixels:,} pixels are accepted (decompression bombs are refused)",
            413,
        )
    return data


def _png(fig) -> str:
    from cnnkit.plots import png_bytes

    return base64.b64encode(png_bytes(fig, dpi=100)).decode("ascii")


class Models:
    """Loaded models (a few, least recently used dropped), and one explanation at a time."""

    def __init__(self, runs, size: int = 4):
        self.runs = runs
        self.size = size
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.busy = threading.Lock()  # one explanation at a time: their hooks go on shared modules

    def get(self, name):
        from cnnkit.models import list_models
        from cnnkit.models.weights import installed
        from cnnkit.tasks.classify.explain import load_explainable

        if not isinstance(name, str) or not name:
            raise Refused("name the model: a run from /api/runs or a zoo name")
        with self._lock:
            if name in self.runs.names():
                folder = self.runs.checkpoint(name)
                key = (name, (folder / "model.safetensors").stat().st_mtime_ns)  # a run still training saves anew
                kind = "run"
            elif name in list_models():
                weights = "imagenet" if installed(name) else None  # never a download from the page
                folder, key = None, (name, weights)
                kind = "zoo (ImageNet weights)" if weights else "zoo (random weights)"
            else:
                raise Refused(
                    f"no run or zoo model named {brief(repr(name))}: name a run from /api/runs or a model from `cnnkit zoo`",
                    404,
                )
            if key not in self._cache:
                self._cache[key] = (
                    load_explainable(str(folder) if folder else name, weights=None if folder else key[1]),
                    kind,
                )
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            return self._cache[key]


def _image_tensor(target, data: bytes) -> torch.Tensor:
    """The upload as `cnnkit predict` reads a file for the model (:func:`~cnnkit.tasks.classify.explain.read_input`)."""
    from cnnkit.tasks.classify.explain import read_input

    return read_input(target, _Named(data))


def top_classes(target, x: torch.Tensor, top: int = 5) -> list[dict]:
    """Probabilities of the deployable model (its test-time augmentation included, as `cnnkit predict`)."""
    model = target.model
    tta = (getattr(model, "info", None) or {}).get("tta", "")
    had = getattr(model, "tta", None)
    try:
        if had is not None:
            model.tta = tta
        with torch.no_grad():
            probs = model(x[None]).float().softmax(1)[0]
    finally:
        if had is not None:
            model.tta = had
    p, i = probs.topk(min(top, probs.numel()))
    names = target.classes
    return [
        {"class": int(k), "name": names[k] if k < len(names) else str(k), "probability": float(v)}
        for v, k in zip(p.tolist(), i.tolist())
    ]


def predict(models: Models, fields: dict, limits: Limits) -> dict:
    """Top classes and the Grad-CAM overlay (base64 PNG) of the upload in ``fields``."""
    from cnnkit import plots
    from cnnkit.explain import grad_cam
    from cnnkit.explain.hooks import default_cam_layer

    data = fields.get("file")
    if not isinstance(data, bytes):
        raise Refused("no image: send it as the file field 'file'")
    open_image(data, limits)
    target, kind = models.get(fields.get("model"))
    x = _image_tensor(target, data)
    with models.busy:
        top = top_classes(target, x)
        layer = default_cam_layer(target.model, x[None])
        heat, cls = grad_cam(target.model, x, top[0]["class"], layer)
    fig = plots.heatmap_overlay(
        x, heat, label="Grad-CAM", title=f"Grad-CAM for class {top[0]['name']} at {target.user_name(layer)}"
    )
    return {
        "model": fields.get("model"),
        "kind": kind,
        "top": top,
        "layer": target.user_name(layer),
        "gradcam_png": _png(fig),
        "input_size": list(target.input_size),
        "layers": conv_layers(target),
    }


def conv_layers(target) -> list[str]:
    """The convolutions of the network, by the names users give (for the page's layer menu)."""
    from cnnkit.explain import layer_names
    from cnnkit.explain.hooks import is_conv

    return [n for n in layer_names(target.net) if is_conv(target.net.get_submodule(n))]


def explain(models: Models, fields: dict, limits: Limits) -> dict:
    """One of saliency, feature maps, filters, filter patterns, Grad-CAM (``method``) for the upload."""
    method = fields.get("method", "saliency")
    if method not in METHODS:
        raise Refused(f"method must be one of {', '.join(METHODS)}; received: {brief(repr(method))}")
    target, _ = models.get(fields.get("model"))
    with models.busy:
        return _explain(target, method, fields, limits)


def _explain(target, method: str, fields: dict, limits: Limits) -> dict:
    from cnnkit import plots
    from cnnkit.explain import (
        feature_maps,
        filter_patterns,
        filters,
        grad_cam,
        saliency,
    )
    from cnnkit.explain.hooks import default_cam_layer

    data = fields.get("file")
    convs = conv_layers(target)
    layer = fields.get("layer") or None
    layer = target.layer(layer) if layer else None
    out = {"method": method, "layers": convs}
    if method == "filters":
        name = target.user_name(layer) if layer else (convs[0] if convs else None)
        if name is None:
            raise Refused("the model has no convolution: name a layer")
        out["png"] = _png(
            plots.filter_grid(filters(target.net, name), max_filters=16, max_inputs=4, title=f"Filters of {name}")
        )
        out["layer"] = name
        return out
    if method == "patterns":
        if not convs and layer is None:
            raise Refused("the model has no convolution: name a layer")
        name = layer or target.prefix + convs[-1]
        c, h, w = target.input_size
        size = (min(h, 64), min(w, 64))
        try:  # the first 8 filters (a layer with fewer: all of them)
            pats = filter_patterns(target.model, name, channels=list(range(8)), size=size, steps=20)
        except CnnkitError:
            pats = filter_patterns(target.model, name, size=size, steps=20)
        out["png"] = _png(plots.pattern_grid(pats, layer=target.user_name(name)))
        out["layer"] = target.user_name(name)
        return out
    if not isinstance(data, bytes):
        raise Refused("no image: send it as the file field 'file'")
    open_image(data, limits)
    x = _image_tensor(target, data)
    if method == "featuremaps":
        name = layer or (target.prefix + convs[0] if convs else None)
        if name is None:
            raise Refused("the model has no convolution: name a layer")
        maps = feature_maps(target.model, x, [name])
        out["png"] = _png(
            plots.feature_map_grid({target.user_name(k): v for k, v in maps.items()}, max_channels=16, cols=8)
        )
        out["layer"] = target.user_name(name)
    elif method == "saliency":
        heat, cls = saliency(target.model, x)
        out["png"] = _png(plots.heatmap_overlay(x, heat, label="saliency", title=f"Saliency for class {cls}"))
    else:
        name = layer or default_cam_layer(target.model, x[None])
        heat, cls = grad_cam(target.model, x, None, name)
        out["png"] = _png(plots.heatmap_overlay(x, heat, title=f"Grad-CAM for class {cls}"))
        out["layer"] = target.user_name(name)
    return out
