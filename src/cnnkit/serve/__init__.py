"""The cnnkit workbench: ``cnnkit serve``, a local web page to see a CNN.

Four pages over a JSON API: convolution arithmetic, the analyser (per-layer table, bar charts, the
memory timeline of a training step, textbook vs real, the fit panel), the training runs under
``--runs`` (curves that update while a run trains, overlaid), and predict & explain (top classes,
Grad-CAM, saliency, feature maps, filter patterns). The routes call the library; nothing here
computes what :mod:`cnnkit.analysis`, :mod:`cnnkit.explain` or :mod:`cnnkit.layers` already do.

Why the standard library's ``http.server`` (``ThreadingHTTPServer``) and no framework: the app has a
dozen routes, all JSON or static files, for one local user; routing them is a dict lookup, and the
one thing a framework would really add, multipart parsing, is twenty lines over :mod:`email`. A
framework (Flask, FastAPI + uvicorn, ...) would be a dependency to install, pin and audit for every
user, with its own error pages (tracebacks in debug mode) to switch off; here every response, errors
included, goes through one function (:meth:`Handler._send`). The charts are drawn by our own small
SVG code in ``static/common.js``: no chart library, no CDN, nothing fetched at run time.

- :mod:`.limits`  what is refused, and why (sizes, pixels, analysis cost); the HTTP error type
- :mod:`.conv`    convolution arithmetic, with :func:`cnnkit.layers.padding.same_pad`'s rule
- :mod:`.analyse` a zoo name or a typed YAML spec -> summary, timeline, fit, with a small cache
- :mod:`.runs`    the run folders under ``--runs``: only those listed can be named
- :mod:`.predict` uploads: multipart, image checks, top classes and explanations
- :mod:`.server`  the HTTP handler, the routes, ``make_server`` / ``serve``
"""

from cnnkit.serve.limits import Limits
from cnnkit.serve.server import Workbench, make_server, serve

__all__ = ["Limits", "Workbench", "make_server", "serve"]
