"""What the workbench refuses, and the one error type its routes raise (a 4xx with a message)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.errors import CnnkitError


class Refused(CnnkitError):
    """Bad or too large a request: sent back as ``{"error": message}`` with ``status`` (4xx/503)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (the defaults suit one person on a laptop)."""

    body_bytes: int = 8 * 2**20            # largest request body, an image upload included
    json_bytes: int = 256 * 2**10          # largest JSON body (a typed spec is inside it)
    image_pixels: int = 16_000_000         # width x height of an upload, checked before decoding
    spec_bytes: int = 64 * 2**10           # largest YAML spec text
    spec_layers: int = 500                 # layers in a spec
    spec_number: int = 1 << 16             # largest integer in a spec (filters, units, kernel...)
    batch: int = 4096                      # largest analysed batch
    input_elements: int = 3 * 1024 * 1024  # C x H x W of one analysed sample
    params: int = 2_000_000_000            # parameters of an analysed network
    ops: int = 20_000                      # ATen ops of one inference pass (trace time grows with it)
    sample_bytes: int = 128 * 2**20        # the largest tensor of one sample (convolutions run for real
                                           # at batch 3 to measure the backend: this bounds their memory)
    macs_per_sample: int = 40_000_000_000  # forward MACs of one sample (ResNet-50: 4.1 G, VGG-16: 15.5 G)
    analysis_seconds: float = 120.0        # an analysis still running then is answered with 503
    busy_seconds: float = 30.0             # how long a request waits for the one analysis slot

    def check_body(self, length: int | None, multipart: bool) -> None:
        if length is None:
            raise Refused("the request needs a Content-Length header", 411)
        cap = self.body_bytes if multipart else self.json_bytes
        if length > cap:
            raise Refused(f"the request body is {length:,} bytes; the workbench accepts at most {cap:,}"
                          + (" (upload a smaller image)" if multipart else ""), 413)
