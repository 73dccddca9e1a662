"""A COCO annotation's ``segmentation`` as a mask, without pycocotools: polygons, uncompressed and compressed RLE.

pycocotools (``COCO.annToMask``) is the reference, and the masks are its pixels:

- polygons (``[[x1, y1, x2, y2, ...], ...]``, the union of the polygons) are rasterised as its
  ``rleFrPoly`` does: the outline traced at 5 times the resolution, a pixel inside where the
  outline crosses its column above it an odd number of times;
- uncompressed RLE (``{"counts": [ints], "size": [h, w]}``) counts runs down the columns
  (column-major), zeros first;
- compressed RLE (``counts`` a string) is COCO's encoding of those counts: 5 bits a character
  offset by 48, a sixth bit for "more", each count after the second stored as the difference to
  the count two before.

Each check happens before anything of the mask's size is allocated; bad input raises one
:class:`~cnnkit.errors.CnnkitError` line beginning with ``where`` (the file and the annotation).
"""

from __future__ import annotations

import math

import numpy as np

from cnnkit.errors import CnnkitError

SCALE = 5  # rleFrPoly traces the outline at 5 times the resolution
OUTLINE_LIMIT = 100  # a polygon's outline is at most this many times the image's width + height
COUNT_CHARS = 8  # a compressed count takes at most this many characters (40 bits: past any image)


def segmentation_mask(segm, height: int, width: int, where: str) -> np.ndarray:
    """The (height, width) bool mask of a COCO ``segmentation``: what ``COCO.annToMask`` gives.

    Args:
        segm: a list of polygons, or an RLE dict (``counts`` a list of ints or COCO's string).
        height: the image's height.
        width: the image's width.
        where: the start of an error message (the file and the annotation).

    Returns:
        The mask, True on the object.

    Raises:
        CnnkitError: a polygon with an odd number of coordinates, fewer than 3 points, a coordinate
        that is not a finite number or lies more than the image's size outside it, an outline past
        ``OUTLINE_LIMIT`` times the image's width + height; an RLE whose ``size`` is not the image's,
        whose counts are not whole numbers >= 0 (or not COCO's string encoding) or do not sum to
        height x width.
    """
    if isinstance(segm, list):
        if not segm:
            raise CnnkitError(f"{where}: 'segmentation' is an empty list; give polygons [[x1, y1, x2, y2, ...]]")
        mask = np.zeros(height * width, dtype=bool)
        for k, poly in enumerate(segm):
            mask |= _polygon(poly, height, width, f"{where}: 'segmentation' polygon {k}")
        return mask.reshape(width, height).T
    if isinstance(segm, dict) and "counts" in segm:
        size = segm.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise CnnkitError(f"{where}: RLE 'size' must be [height, width]; received {_shown(size)}")
        if list(size) != [height, width]:
            raise CnnkitError(
                f"{where}: RLE 'size' {_shown(size)} is not its image's [height, width] [{height}, {width}]"
            )
        counts = segm["counts"]
        if isinstance(counts, str):
            counts = _string_counts(counts, where)
        elif not (isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts)):
            raise CnnkitError(
                f"{where}: RLE 'counts' must be whole numbers >= 0 or COCO's compressed string; "
                f"received {_shown(counts)}"
            )
        total = sum(counts)
        if total != height * width:
            raise CnnkitError(
                f"{where}: RLE counts sum to {total:,}, not the {height} x {width} = {height * width:,} "
                "pixels of its image"
            )
        return _runs(counts).reshape(width, height).T
    raise CnnkitError(
        f"{where}: 'segmentation' must be a list of polygons [[x1, y1, x2, y2, ...]] or an RLE "
        f"{{'counts': ..., 'size': [h, w]}}; received {_shown(segm)}"
    )


def _polygon(poly, h: int, w: int, where: str) -> np.ndarray:
    """One polygon's pixels, flat in column-major order (index x * h + y), as pycocotools' ``rleFrPoly``."""
    if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
        raise CnnkitError(f"{where} must be a list of numbers [x1, y1, x2, y2, ...]; received {_shown(poly)}")
    if len(poly) % 2:
        raise CnnkitError(f"{where} has {len(poly)} coordinates, an odd number; a polygon is x, y pairs")
    if len(poly) < 6:
        raise CnnkitError(f"{where} has {len(poly) // 2} point(s); a polygon has at least 3")
    for v in poly:
        if not _finite(v):
            raise CnnkitError(f"{where} has a coordinate that is not a finite number: {_shown(v)}")
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    far = (xy[:, 0] < -w) | (xy[:, 0] > 2 * w) | (xy[:, 1] < -h) | (xy[:, 1] > 2 * h)
    if far.any():
        x, y = xy[int(np.argmax(far))].tolist()
        raise CnnkitError(f"{where} has the point ({x:g}, {y:g}), farther outside its {w} x {h} image than its size")
    # the vertices at 5x, rounded as C's (int)(v + .5) does (towards zero), the first repeated at the end
    x = np.trunc(SCALE * xy[:, 0] + 0.5).astype(np.int64)
    y = np.trunc(SCALE * xy[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    xs, xe, ys, ye = x[:-1], x[1:], y[:-1], y[1:]
    dx, dy = np.abs(xe - xs), np.abs(ye - ys)
    steps = np.maximum(dx, dy)
    if int(steps.sum()) > OUTLINE_LIMIT * SCALE * (w + h):
        raise CnnkitError(
            f"{where}: its outline is {steps.sum() / SCALE:,.0f} pixels long, more than {OUTLINE_LIMIT} times its "
            f"{w} x {h} image's width + height; not an object's outline"
        )
    # each edge traced from its lower end along its longer axis, one point a step (both ends included)
    along_x = dx >= dy
    flip = (along_x & (xs > xe)) | (~along_x & (ys > ye))
    xs, xe, ys, ye = np.where(flip, xe, xs), np.where(flip, xs, xe), np.where(flip, ye, ys), np.where(flip, ys, ye)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(along_x, (ye - ys) / dx, (xe - xs) / dy)
    slope = np.nan_to_num(slope)  # a point-long edge: its one point lies on the vertex either way
    n = steps + 1
    edge = np.repeat(np.arange(len(n)), n)
    d = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    t = np.where(flip[edge], steps[edge] - d, d)
    ax, s, x0, y0 = along_x[edge], slope[edge], xs[edge], ys[edge]
    u = np.where(ax, t + x0, np.trunc(x0 + s * t + 0.5).astype(np.int64))
    v = np.where(ax, np.trunc(y0 + s * t + 0.5).astype(np.int64), t + y0)
    # where the traced outline moves to another column: a crossing of that column, at the pixel below it
    moved = np.nonzero(u[1:] != u[:-1])[0] + 1
    col = np.where(u[moved] < u[moved - 1], u[moved], u[moved] - 1)
    xd = (col + 0.5) / SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = (np.minimum(v[moved], v[moved - 1]) + 0.5) / SCALE - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    at = (xd[keep] * h + yd[keep]).astype(np.int64)
    # a pixel is inside where an odd number of crossings lie at or above it (crossings past the last pixel drop)
    at, times = np.unique(at[at < h * w], return_counts=True)
    edges = at[times % 2 == 1]
    return _runs(np.diff(edges, prepend=0, append=h * w))


def _runs(counts) -> np.ndarray:
    """Run lengths of 0, 1, 0, ... -> the flat bool array they spell."""
    return np.repeat(np.arange(len(counts)) % 2 == 1, counts)


def _string_counts(text: str, where: str) -> list[int]:
    """COCO's compressed RLE string -> the run lengths (pycocotools' ``rleFrString``), checked."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p == len(text):
                raise CnnkitError(f"{where}: RLE 'counts' string ends inside a number; it is cut short")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise CnnkitError(
                    f"{where}: RLE 'counts' string holds {text[p]!r} at {p}; COCO's compressed counts use "
                    "the characters '0' to 'o'"
                )
            if k == COUNT_CHARS:
                raise CnnkitError(f"{where}: RLE 'counts' string holds a number of over {COUNT_CHARS} characters")
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise CnnkitError(f"{where}: RLE 'counts' string gives the negative run {x} (run {len(counts)})")
        counts.append(x)
    return counts


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    """A JSON number that is a finite float; an integer past the float range (JSON allows 10**400) is not."""
    try:
        return _is_number(v) and math.isfinite(v)
    except OverflowError:
        return False


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
