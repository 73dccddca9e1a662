"""Rebuild a trained generator from its checkpoint (data, never code)."""

from __future__ import annotations

from cnnkit.engine.runfolder import load_run_model
from cnnkit.tasks.generate.predict import Sampler


def load_generator(path, device: str = "cpu") -> Sampler:
    """A trained generator from a run folder or its ``model.safetensors``, rebuilt from data, never code.

    Args:
        path: a run folder or its ``model.safetensors`` written by ``cnnkit generate train``.
        device: where the model goes (``"cpu"``, ``"cuda"``).

    Returns:
        The :class:`Sampler` in eval mode, the checkpoint's metadata as ``.info``.

    Raises:
        CnnkitError: not a generator's run, or a damaged or crafted file.

    Example:
        >>> sampler = load_generator("runs/gan")               # doctest: +SKIP
        >>> sampler.sample(16).shape                           # doctest: +SKIP
        torch.Size([16, 1, 28, 28])
    """
    return load_run_model(path, "generate", Sampler.from_info, device)
