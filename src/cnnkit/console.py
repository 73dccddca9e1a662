"""The one way cnnkit makes a rich Console: a terminal's own width, and no 80-column wrap in a pipe.

Written to a file or a CI log (stdout is not a terminal), rich would assume 80 columns and break
every wider table row across lines; there the width is :data:`PIPE_WIDTH` (or ``$COLUMNS``).
Text is printed as written: rich's markup (``[red]``) and emoji codes (``:bee:``) are off, so a
class or folder named so prints as its name. :func:`shown` is how a printed line writes a name.
"""

from __future__ import annotations

import json
import os
import sys

from rich.console import Console

PIPE_WIDTH = 250


def console(min_width: int = 0, **kwargs) -> Console:
    """A Console for stdout (``kwargs`` as rich's); at least ``min_width`` columns wide."""
    stream = kwargs.get("file") or sys.stdout
    if not (hasattr(stream, "isatty") and stream.isatty()) and "width" not in kwargs:
        kwargs["width"] = int(os.environ.get("COLUMNS") or PIPE_WIDTH)
    kwargs.setdefault("markup", False)  # a user's name ("[red]", "[bold]b") is text, not a style
    kwargs.setdefault("emoji", False)  # nor is ":bee:" a bee
    out = Console(**kwargs)
    if min_width and out.width < min_width:
        out = Console(**{**kwargs, "width": min_width})
    return out


def shown(name) -> str:
    """A name (a class, a file) as a printed line writes it, so that a program can read it back.

    The name as it is where it stands as one field of a line: every character printable (no newline,
    tab, other control or format character), no space at either end, no two spaces in a row and no
    ``": "`` (the separators of cnnkit's printed lines), and no double quote first. Any other name is
    written in double quotes with JSON's escapes (each character that is not printable escaped), which
    ``json.loads`` reads back.

    Example:
        >>> shown("a b"), shown("x: y")
        ('a b', '"x: y"')
    """
    text = str(name)
    plain = text.isprintable() and text == text.strip() and "  " not in text and ": " not in text
    if plain and text and not text.startswith('"'):
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in json.dumps(text, ensure_ascii=False))
