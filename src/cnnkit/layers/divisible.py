"""Channel counts rounded to a multiple of 8, as the MobileNet family does (and timm's ``make_divisible``)."""

from __future__ import annotations


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """The multiple of ``divisor`` nearest to ``value``, at least ``min_value`` (default ``divisor``).

    If rounding down lost more than ``1 - round_limit`` of ``value``, one ``divisor`` is added
    back (torchvision's ``_make_divisible`` uses 0.9; timm's SE uses ``round_limit=0``: never).

    >>> make_divisible(32 * 0.75), make_divisible(16 // 4), make_divisible(20)
    (24, 8, 24)
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value
