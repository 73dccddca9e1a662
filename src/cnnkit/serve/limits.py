"""What the workbench refuses, and the one error type its routes raise (a 4xx with a message)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnkit.errors import CnnkitError, nested_deeper_than, plain_int


class Refused(CnnkitError):
    """Bad or too large a request: sent back as ``{"error": message}`` with ``status`` (4xx/503)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (the defaults suit one person on a laptop)."""

    body_bytes: int = 8 * 2**20  # largest request body, an image upload included
    json_bytes: int = 256 * 2**10  # largest JSON body (a typed spec is inside it)
    image_pixels: int = 16_000_000  # width x height of an upload, checked before decoding
    spec_bytes: int = 64 * 2**10  # largest YAML spec text
    spec_layers: int = 500  # layers in a spec
    spec_number: int = 1 << 16  # largest integer in a spec (filters, units, kernel...)
    batch: int = 4096  # largest analysed batch
    input_elements: int = 3 * 1024 * 1024  # C x H x W of one analysed sample
    params: int = 2_000_000_000  # parameters of an analysed network
    ops: int = 20_000  # ATen ops of one inference pass (trace time grows with it)
    sample_bytes: int = 128 * 2**20  # the largest tensor of one sample (convolutions run for real
    # at batch 3 to measure the backend: this bounds their memory)
    macs_per_sample: int = 40_000_000_000  # forward MACs of one sample (ResNet-50: 4.1 G, VGG-16: 15.5 G)
    analysis_seconds: float = 120.0  # an analysis still running then is answered with 503
    busy_seconds: float = 30.0  # how long a request waits for the one analysis slot
    connection_seconds: float = 30.0  # a connection silent this long (half a request, a body that
    # stops, an answer not read) is dropped
    nesting: int = 64  # deepest nesting of lists/mappings in a JSON body or YAML spec

    def check_body(self, lengths: list[str] | None, multipart: bool) -> int:
        """The body's length from its ``Content-Length`` header(s), refused unless it is one plain
        non-negative integer within the cap (checked before a byte of the body is read).

        Raises:
            Refused: 411 without the header, 400 for a malformed or repeated one, 413 over the cap.
        """
        if not lengths:
            raise Refused("the request needs a Content-Length header", 411)
        if len(set(lengths)) > 1:
            raise Refused(f"the request has {len(lengths)} different Content-Length headers; send one")
        length = plain_int(lengths[0], 20)
        if length is None:
            raise Refused(
                f"bad Content-Length {lengths[0][:40]!r}: it must be the body's size in bytes, a non-negative integer"
            )
        cap = self.body_bytes if multipart else self.json_bytes
        if length > cap:
            raise Refused(
                f"the request body is {length:,} bytes; the workbench accepts at most {cap:,}"
                + (" (upload a smaller image)" if multipart else ""),
                413,
            )
        return length

    def check_nesting(self, obj, what: str) -> None:
        """Refuse lists/dicts nested deeper than ``nesting`` (:func:`~cnnkit.errors.nested_deeper_than`)."""
        if nested_deeper_than(obj, self.nesting):
            raise Refused(f"{what} is nested more than {self.nesting} levels deep; flatten it")
