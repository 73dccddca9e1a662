"""The run folders under ``--runs``: listed by the server, named by the page only by that listing.

A run is a folder (at most three levels below the root, never through a link that leaves it) that
holds ``metrics.csv`` or ``model.safetensors``; its metrics and figures are read only where they lie
under the root (a file that links elsewhere is neither read nor served). Its name is its path relative to the root, with
``/``; a request naming anything else -- a path, ``..``, a run that is not listed -- gets a 404.
Each run is listed with its task (the ``task`` of its metadata; ``classify`` when it names none):
the Predict page takes classification runs only, and refuses the others by name.
"""

from __future__ import annotations

import re
from pathlib import Path

from cnnkit.errors import CnnkitError, brief
from cnnkit.serve.limits import Refused

MAX_DEPTH = 3
MAX_RUNS = 500
PREDICT_TASKS = ("classify",)  # the tasks whose runs /api/predict and /api/explain accept
# what `cnnkit TASK predict RUN ...` takes after the run, for the tasks the Predict page refuses
PREDICT_ARGUMENTS = {
    "segment": "IMAGE --out DIR",
    "style": "IMAGE --out DIR",
    "sequence": "SERIES",
    "video": "CLIP",
    "video_predict": "CLIP --out DIR",
    "generate": "--out digits.png",
}
# the figures a run folder may hold (curves by `cnnkit train`, the others by `cnnkit plot`)
FIGURE = re.compile(r"^(curves|confusion_[A-Za-z0-9_]+|errors_[A-Za-z0-9_]+)\.png$")


class Runs:
    def __init__(self, root: str | Path | None):
        self.root = Path(root).resolve() if root else None

    def _scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if self.root is None or not self.root.is_dir():
            return found
        frontier = [self.root]
        for _ in range(MAX_DEPTH + 1):
            nxt = []
            for folder in frontier:
                try:
                    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue
                if (folder / "metrics.csv").is_file() or (folder / "model.safetensors").is_file():
                    rel = folder.relative_to(self.root).as_posix()
                    found[folder.name if rel == "." else rel] = folder  # --runs may name one run
                    if len(found) >= MAX_RUNS:
                        return found
                for child in children:
                    real = child.resolve()
                    if real.is_relative_to(self.root) and real != self.root:
                        nxt.append(child)
            frontier = nxt
        return found

    def _own(self, path: Path) -> bool:
        """Whether ``path`` is a file under the root: a link to a file elsewhere is not served."""
        return path.is_file() and path.resolve().is_relative_to(self.root)

    def _metrics(self, folder: Path) -> list[dict]:
        from cnnkit.tasks.classify.plot import read_metrics

        if not self._own(folder / "metrics.csv"):
            raise CnnkitError(f"{folder.name} has no metrics.csv of its own")
        return read_metrics(folder)

    def names(self) -> set[str]:
        return set(self._scan())

    def folder(self, name) -> Path:
        """The folder of a listed run; a 404 for any other name."""
        if not isinstance(name, str) or not name:
            raise Refused("name a run from /api/runs (?run=NAME)", 400)
        runs = self._scan()
        if name not in runs:
            raise Refused(f"no run named {brief(repr(name))}: name one that /api/runs lists", 404)
        return runs[name]

    def listing(self) -> list[dict]:
        out = []
        for name, folder in self._scan().items():
            item = {
                "name": name,
                "has_model": (folder / "model.safetensors").is_file(),
                "epochs": 0,
                "last": None,
                "model": None,
                "dataset": None,
                "task": None,
                "figures": sorted(p.name for p in folder.glob("*.png") if FIGURE.match(p.name) and self._own(p)),
            }
            try:
                rows = self._metrics(folder)
                item["epochs"], item["last"] = len(rows), rows[-1]
            except (CnnkitError, OSError, ValueError):
                pass
            if item["has_model"]:
                try:
                    info = self.info(folder)
                    item["task"] = task_of(info)
                    if info.get("ensemble"):
                        item["model"] = f"ensemble of {len(info['ensemble'])}"
                    else:  # a classifier names its network; a detector, its backbone
                        item["model"] = info.get("model") or info.get("backbone")
                    item["dataset"] = (info.get("dataset") or {}).get("name")
                    item["classes"] = info.get("classes")
                except (CnnkitError, OSError, ValueError, AttributeError, TypeError):
                    item["has_model"] = False
            out.append(item)
        return out

    @staticmethod
    def info(folder: Path) -> dict:
        """A run's metadata (from its model.safetensors header; no tensor is read)."""
        from cnnkit.engine.runfolder import read_info

        try:
            return read_info(folder)
        except (OSError, ValueError, RuntimeError) as exc:
            raise Refused(f"{folder.name}: the checkpoint cannot be read ({exc})") from None

    def metrics(self, name) -> dict:
        folder = self.folder(name)
        try:
            rows = self._metrics(folder)
        except CnnkitError:
            rows = []  # no epoch yet: the page keeps polling
        return {"run": name, "rows": rows}

    def figure(self, name, file) -> Path:
        folder = self.folder(name)
        if not isinstance(file, str) or not FIGURE.match(file) or not self._own(folder / file):
            raise Refused(f"run {name!r} has no figure {brief(repr(file))}", 404)
        return folder / file

    def plot(self, name) -> dict:
        """``cnnkit plot`` for a listed run: curves, and the confusion matrix when its data loads."""
        from cnnkit.tasks.classify.plot import plot_run

        written, notes = plot_run(self.folder(name))
        return {"run": name, "figures": [p.name for p in written], "notes": notes}

    def checkpoint(self, name) -> Path:
        """A listed run whose network is data (a zoo name or a spec), never Python code to import."""
        folder = self.folder(name)
        if not (folder / "model.safetensors").is_file():
            raise Refused(f"run {name!r} has no model.safetensors yet (it is still in its first epoch?)", 404)
        info = self.info(folder)
        task = task_of(info)
        if task not in PREDICT_TASKS:
            raise Refused(
                f"run {name!r} is a {task} run; the Predict page handles classification runs: "
                f"use `cnnkit {task.replace('_', '-')} predict {folder} {PREDICT_ARGUMENTS.get(task, 'IMAGE')}`",
                400,
            )
        members = info.get("ensemble") or [info]
        for m in members:
            if ".py:" in str(m.get("model", "")):
                raise Refused(
                    f"run {name!r} builds its network with Python code ({m['model']}); the "
                    "workbench runs no code: use `cnnkit explain` on the command line",
                    400,
                )
        return folder


def task_of(info: dict) -> str:
    """The task a run's metadata names (``classify`` when it names none, as classifier runs do)."""
    task = info.get("task", "classify")
    if not isinstance(task, str) or not task.isidentifier():
        raise Refused(f"the run's metadata names an unknown task {str(task)[:40]!r}; the file was edited?")
    return task
