"""The HTTP side: one handler over ``ThreadingHTTPServer``, a table of routes, one way to answer.

Every answer goes through :meth:`Handler._send`: JSON (or a PNG, or a static file) with a
Content-Security-Policy that allows nothing from outside (``default-src 'self'``). Errors are
``{"error": message}`` with a 4xx (or 503 when busy/too slow); an unexpected exception is logged on
the server's stderr and answered with a 500 that names only its type -- never a traceback.
Requests whose Host is not the server's own name are refused (no DNS rebinding), and so are POSTs
from a page of another origin. A body is read only after its ``Content-Length`` passed the caps, and
a JSON route reads only a body sent as ``application/json`` (415 for a form's or a text body), a
connection silent for :attr:`Limits.connection_seconds` is dropped, and a client that hangs up is one
log line.
"""

from __future__ import annotations

import html
import ipaddress
import json
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cnnkit.engine.runfolder import json_text
from cnnkit.errors import CnnkitError, brief
from cnnkit.serve import analyse, conv, predict
from cnnkit.serve.limits import Limits, Refused
from cnnkit.serve.runs import Runs

STATIC = Path(__file__).with_name("static")
# path -> (page: static/<page>.part.html is its content, static/<page>.js its script; title)
PAGES = {
    "/conv": ("conv", "Convolution arithmetic"),
    "/analyse": ("analyse", "Analyse"),
    "/runs": ("runs", "Runs"),
    "/predict": ("predict", "Predict & explain"),
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class Workbench:
    """The app: the routes and what they share (limits, the runs root, caches). No global state."""

    def __init__(self, runs: str | Path | None = None, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.runs = Runs(runs)
        self.analyser = analyse.Analyser(self.limits)
        self.models = predict.Models(self.runs)
        # what may be served: the scripts and the stylesheet, and the pages (one layout around each part)
        self.static = {p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css")}
        layout = (STATIC / "layout.html").read_text(encoding="utf-8")
        self.pages = {
            path: layout.replace("{title}", html.escape(title))
            .replace("{page}", page)
            .replace("{main}", (STATIC / f"{page}.part.html").read_text(encoding="utf-8"))
            .encode()
            for path, (page, title) in PAGES.items()
        }
        self.pages["/"] = self.pages["/conv"]
        L = self.limits
        self.get_routes = {
            "/api/runs": lambda q: {
                "root": str(self.runs.root) if self.runs.root else None,
                "runs": self.runs.listing(),
            },
            "/api/runs/metrics": lambda q: self.runs.metrics(q.get("run")),
            "/api/zoo": lambda q: self._zoo(),
            "/api/limits": lambda q: {
                "upload_bytes": L.body_bytes,
                "image_pixels": L.image_pixels,
                "spec_bytes": L.spec_bytes,
                "batch": L.batch,
            },
        }
        self.post_json = {
            "/api/conv": conv.conv_arithmetic,
            "/api/analyse": lambda b: self.analyser.run("summary", b, analyse.summary_json),
            "/api/timeline": lambda b: self.analyser.run("timeline", b, analyse.timeline_json),
            "/api/fit": lambda b: self.analyser.run("fit", b, analyse.fit_json(b, L)),
            "/api/runs/plot": lambda b: self.runs.plot(b.get("run") if isinstance(b, dict) else None),
        }
        self.post_multipart = {
            "/api/predict": lambda f: predict.predict(self.models, f, L),
            "/api/explain": lambda f: predict.explain(self.models, f, L),
        }

    @staticmethod
    def _zoo() -> dict:
        from cnnkit.models import list_models, model_info

        return {"models": [{"name": n, "input_size": list(model_info(n).input_size or [])} for n in list_models()]}

    def close(self) -> None:
        self.analyser.close()


class Handler(BaseHTTPRequestHandler):
    server_version = "cnnkit"
    sys_version = ""
    app: Workbench  # set on the subclass made by make_server

    def log_message(self, format, *args):  # one short line per request, on stderr
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def handle_one_request(self) -> None:
        """The stdlib's, with a client that hangs up (at any moment) logged as one line."""
        try:
            super().handle_one_request()
        except ConnectionError as exc:  # BrokenPipeError, ConnectionResetError, ConnectionAbortedError
            self.close_connection = True
            self.log_message("client hung up (%s)", type(exc).__name__)

    # ------------------------------------------------------------------ answering
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json_text(obj).encode(), "application/json")  # NaN as null: JSON.parse reads it

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": status})

    def _guarded(self, fn) -> None:
        try:
            self._check_host()
            fn()
        except Refused as exc:
            self._error(exc.status, str(exc))
        except (ConnectionError, TimeoutError):
            raise  # the client is gone or silent: nothing to answer (handle_one_request logs it)
        except CnnkitError as exc:
            self._error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 -- a bug: logged here, never sent to the page
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"internal error ({type(exc).__name__}); the server's log has the details")

    def _check_host(self) -> None:
        allowed = self.server.allowed_hosts
        host = (self.headers.get("Host") or "").lower()
        if allowed is not None and host not in allowed:
            raise Refused(f"unexpected Host {host!r}: open the workbench at http://{self.server.home}/", 421)
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin and urlsplit(origin).netloc.lower() != host:
            raise Refused("cross-origin requests are refused", 403)

    # ------------------------------------------------------------------ verbs
    def do_GET(self) -> None:
        self._guarded(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        app = self.app
        if path in app.pages:
            return self._send(200, app.pages[path], TYPES[".html"])
        if path.startswith("/static/"):
            file = app.static.get(path[len("/static/") :])
            if file is None:
                raise Refused(f"no such file: {path}", 404)
            return self._send(200, file.read_bytes(), TYPES[file.suffix])
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if path == "/api/runs/figure":
            file = app.runs.figure(query.get("run"), query.get("file"))
            return self._send(200, file.read_bytes(), "image/png")
        route = app.get_routes.get(path)
        if route is None:
            raise Refused(f"no such page or API: {path}", 404)
        self._json(200, route(query))

    def _read_body(self, multipart: bool) -> bytes:
        """The body, after its Content-Length passed the caps; never more bytes than that, never a wait
        longer than the connection timeout."""
        if self.headers.get("Transfer-Encoding"):
            raise Refused("a Transfer-Encoding (chunked) body is not accepted; send a Content-Length", 411)
        n = self.app.limits.check_body(self.headers.get_all("Content-Length"), multipart)
        try:
            body = self.rfile.read(n)
        except TimeoutError:
            raise Refused(f"the request body did not arrive within {self.timeout:g} s", 408) from None
        if len(body) < n:
            raise Refused(f"the request body ended after {len(body):,} of the {n:,} bytes its Content-Length announced")
        return body

    def _post(self) -> None:
        path = urlsplit(self.path).path
        app = self.app
        ctype = self.headers.get("Content-Type", "")
        if path in app.post_multipart:
            fields = predict.parse_multipart(ctype, self._read_body(True))
            return self._json(200, app.post_multipart[path](fields))
        route = app.post_json.get(path)
        if route is None:
            raise Refused(f"no such API: POST {path}", 404)
        raw = self._read_body(False)
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise Refused(
                f"the body of POST {path} is JSON: send it with Content-Type: application/json (received: "
                f"{brief(repr(ctype)) if ctype else 'none'}; with curl: -H 'Content-Type: application/json')",
                415,
            )
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(f"the body is not valid JSON ({exc})") from None
        except RecursionError:
            raise Refused(f"the JSON body is nested more than {app.limits.nesting} levels deep; flatten it") from None
        if not isinstance(body, dict):
            raise Refused("the body must be a JSON object")
        app.limits.check_nesting(body, "the JSON body")
        self._json(200, route(body))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allowed_hosts: set[str] | None = None
    # connections the kernel holds until they are accepted: with the stdlib's 5, a burst of uploads
    # while the explanations keep both cores busy is answered with connection resets
    request_queue_size = 64
    home: str = ""  # host:port of the address it listens on, as `serve` prints it


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning printed when the workbench listens beyond this machine, else None."""
    if is_loopback(host):
        return None
    return (
        f"warning: listening on {host}: anyone who can reach this machine can use the workbench "
        "(analyses, uploads, your runs). Use the default --host 127.0.0.1 unless you mean it."
    )


def make_server(runs=None, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None):
    """A ready (not yet serving) server; ``port=0`` picks a free port (``server.server_address``)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise CnnkitError(f"--port must be an integer from 0 to 65535 (0 picks a free one). Received: --port {port}")
    app = Workbench(runs, limits)
    # `timeout` is the socket timeout of each connection (StreamRequestHandler.setup applies it)
    handler = type("WorkbenchHandler", (Handler,), {"app": app, "timeout": app.limits.connection_seconds})
    try:
        server = _Server((host, port), handler)
    except OSError as exc:
        raise CnnkitError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port, or a --host this "
            "machine has (127.0.0.1, 0.0.0.0)"
        ) from None
    server.app = app
    bound = server.server_address[1]
    server.home = f"{host}:{bound}"
    if is_loopback(host):  # the page and the API answer only to the names of this machine
        names = {"127.0.0.1", "localhost", "[::1]", host.lower()}  # host: 127.0.0.2, say, loopback too
        server.allowed_hosts = {f"{h}:{bound}" for h in names}
    return server


def serve(runs=None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C. A host other than the loopback is announced with a warning."""
    if runs is not None and not Path(runs).is_dir():
        raise CnnkitError(f"--runs {runs}: no such folder; give the folder that holds your run folders")
    server = make_server(runs, host, port)
    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(
        f"cnnkit workbench on http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:"
        f"{server.server_address[1]}/  (runs: {server.app.runs.root or 'none'}; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.app.close()
