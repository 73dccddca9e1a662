"""Build a transformation network for a run, and rebuild a trained one from its checkpoint (data, never code)."""

from __future__ import annotations

import torch.nn as nn

from cnnkit.engine.runfolder import load_run_model
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model, list_models


def build_network(name: str) -> nn.Module:
    """A zoo transformation network (task ``style``) by name.

    Raises:
        CnnkitError: a name that is not a style network of the zoo.
    """
    if name not in list_models("style"):
        raise CnnkitError(f"--model is {' or '.join(list_models('style'))}. Received: --model {str(name)[:60]}")
    return create_model(name)


def load_stylizer(path, device: str = "cpu") -> nn.Module:
    """A trained transformation network from a run folder or its ``model.safetensors``.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit style train``.
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Returns:
        The network in eval mode: float (B, 3, H, W) on [0, 1] -> the stylised images, same shape;
        the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: not a style run, or a damaged or crafted file.

    Example:
        >>> net = load_stylizer("runs/udnie")                     # doctest: +SKIP
        >>> net(torch.rand(1, 3, 512, 512)).shape                 # doctest: +SKIP
        torch.Size([1, 3, 512, 512])
    """
    return load_run_model(path, "style", lambda info: build_network(info["arch"]), device)
