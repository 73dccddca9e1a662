"""The one way cnnkit makes a rich Console: a terminal's own width, and no 80-column wrap in a pipe.

Written to a file or a CI log (stdout is not a terminal), rich would assume 80 columns and break
every wider table row across lines; there the width is :data:`PIPE_WIDTH` (or ``$COLUMNS``).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 250


def console(min_width: int = 0, **kwargs) -> Console:
    """A Console for stdout (``kwargs`` as rich's); at least ``min_width`` columns wide."""
    stream = kwargs.get("file") or sys.stdout
    if not (hasattr(stream, "isatty") and stream.isatty()) and "width" not in kwargs:
        kwargs["width"] = int(os.environ.get("COLUMNS") or PIPE_WIDTH)
    out = Console(**kwargs)
    if min_width and out.width < min_width:
        out = Console(**{**kwargs, "width": min_width})
    return out
