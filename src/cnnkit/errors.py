"""The one exception type that means "the user gave us something we cannot use".

The CLI turns a :class:`CnnkitError` into a single line on stderr and exit code 2;
anything else is a bug in cnnkit and keeps its traceback.
"""


class CnnkitError(ValueError):
    """Bad input: the message names what was wrong, the value received, and the fix."""
