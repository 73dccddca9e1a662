"""The documentation is tested: its size, its voice, its links, the site build and its runnable commands.

A shell block in README.md or docs/ that follows a ``<!-- runnable -->`` line is run here, one
``cnnkit ...`` line at a time, with this checkout's cnnkit; keep such blocks to commands of seconds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
SRC = REPO / "src"

# words about who measured what, what else ran on the machine, or what was tried and dropped:
# such text belongs in docs/experiments/, not in the README, the guides or the code
HISTORY = re.compile(r"niced|this session|shared the (cpu|cores)|bench lock|not adopted|helpers'", re.IGNORECASE)
RUNNABLE = re.compile(r"<!--\s*runnable\s*-->\s*\n```(?:bash|sh|console)\n(.*?)```", re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _user_pages() -> list[Path]:
    """README.md and every Markdown page of docs/ except the dated experiment records."""
    return [README] + sorted(p for p in DOCS.rglob("*.md") if "experiments" not in p.relative_to(DOCS).parts)


def _history_lines(paths: list[Path]) -> list[str]:
    return [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in paths
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if HISTORY.search(line)
    ]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("NO_MKDOCS_2_WARNING", "1")
    return env


def _runnable_commands() -> list[tuple[str, str]]:
    """(where, command line) of every line in a block marked runnable."""
    found = []
    for page in _user_pages():
        for block in RUNNABLE.findall(page.read_text(encoding="utf-8")):
            for line in block.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append((str(page.relative_to(REPO)), line.strip()))
    return found


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; keep it to 250 and move detail into docs/"


def test_readme_starts_with_the_quick_start():
    text = README.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings[0] == "Quick start"
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/cnnkit train --data-dir ../shared/data" in quick
    assert ".venv/bin/python -m pytest -q" in quick


def test_no_history_words_in_readme_or_docs():
    found = _history_lines(_user_pages())
    assert not found, "history belongs in docs/experiments/ (dated), not here:\n" + "\n".join(found)


def test_no_history_words_in_source():
    found = _history_lines(sorted(SRC.rglob("*.py")))
    assert not found, "comments and docstrings say what and why, not how a number was found:\n" + "\n".join(found)


def test_local_links_resolve():
    """Every relative link of README.md and the pages points to a file that exists."""
    broken = []
    for page in _user_pages():
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_images_the_pages_show_exist():
    for name in [
        "serve_analyse.png",
        "training_curves.png",
        "gradcam_mnist_canvas.png",
        "gradcam_bee_finetuned.png",
        "segmentation_digits.png",
    ]:
        assert (DOCS / "images" / name).stat().st_size > 1000, name


def test_committed_cli_reference_is_current():
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))
    page = hooks.cli_reference()
    assert "## `cnnkit`" in page and "`cnnkit summary`" in page and "--batch" in page
    assert (DOCS / "reference" / "cli.md").read_text(encoding="utf-8") == page, (
        "docs/reference/cli.md is stale: run `python docs/hooks.py --write`"
    )
    config = hooks.config_reference([hooks._import(spec) for spec in hooks.task_configs()])
    assert "## `RunConfig`" in config and "`freeze_to`" in config
    assert (DOCS / "reference" / "config.md").read_text(encoding="utf-8") == config, (
        "docs/reference/config.md is stale: run `python docs/hooks.py --write`"
    )


def test_config_reference_renders_each_field_once():
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))

    @dataclasses.dataclass
    class Base:
        """Fields every task shares."""

        epochs: int = dataclasses.field(default=4, metadata={"help": "passes over the training set"})
        lr: float = dataclasses.field(default=0.1, metadata={"help": "peak learning rate"})

    @dataclasses.dataclass
    class Child(Base):
        """A task's own fields."""

        crop: int = dataclasses.field(default=24, metadata={"help": "training window | side in px"})
        tags: list = dataclasses.field(default_factory=list)

    page = hooks.config_reference([Base, Child])
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `epochs` | `int` | `4` | passes over the training set |",
        "| `lr` | `float` | `0.1` | peak learning rate |",
        "| `crop` | `int` | `24` | training window \\| side in px |",
        "| `tags` | `list` | `[]` |  |",
    ]
    with pytest.raises(TypeError):
        hooks.config_reference([int])


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings")),
    reason="mkdocs, mkdocs-material and mkdocstrings[python] are not installed",
)
def test_getting_started_names_the_shared_flags_each_command_leaves_out():
    # the table under "Flags every task takes" is each config class's `unsupported`, those of its flags
    import importlib

    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    section = page.split("## Flags every task takes", 1)[1]
    shared = set(re.findall(r"^\| `(--[a-z-]+)", section, re.MULTILINE))
    classes = {
        "classify train": ("classify", "TrainConfig"),
        "classify finetune": ("classify", "FinetuneConfig"),
        "detect train": ("detect", "DetectConfig"),
        "instance train": ("instance", "InstanceConfig"),
        "segment train": ("segment", "SegmentConfig"),
        "sequence train": ("sequence", "SequenceConfig"),
        "video train": ("video", "VideoConfig"),
        "video-predict train": ("video_predict", "PredictConfig"),
        "generate train": ("generate", "GenerateConfig"),
        "style train": ("style", "StyleTrainConfig"),
    }
    listed = {}
    for commands, flags in re.findall(r"^\| (`[a-z -]+`(?:, `[a-z -]+`)*) \| (.*) \|$", section, re.MULTILINE):
        for command in re.findall(r"`([a-z -]+)`", commands):
            listed[command] = set(re.findall(r"`(--[a-z-]+)`", flags))
    for command, (module, name) in classes.items():
        cls = getattr(importlib.import_module(f"cnnkit.tasks.{module}.config"), name)
        want = {"--" + f.replace("_", "-") for f in cls.unsupported} & shared
        assert listed.get(command, set()) == want, command


def test_site_builds_strict(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        check=False,
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("create_model", "list_models", "summary", "load", "to_fcn"):
        assert re.search(rf'id="cnnkit(\.\w+)*\.{name}"', api), f"no section for {name} in the API reference"
    roles = re.findall(r":(?:attr|class|data|exc|func|meth|mod|obj):<code>[^<]*", api)
    assert not roles, f"docstring roles shown as text on the API page: {roles[:5]}"


def _hooks():
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))
    return hooks


def test_api_page_documents_each_public_name_where_it_is_defined():
    # `::: cnnkit.analysis.summary` is the module summary.py, not the function: each block must name
    # the module that defines the object, and every name of cnnkit.__all__ gets one
    import importlib

    import cnnkit

    hooks = _hooks()
    assert sorted(hooks.PUBLIC_API) == sorted(n for n in cnnkit.__all__ if not n.startswith("_"))
    for name, block in zip(hooks.PUBLIC_API, hooks.api_blocks().split("\n\n")):
        module, _, attr = block.removeprefix("::: ").strip().rpartition(".")
        obj = getattr(cnnkit, name)
        assert attr == name and module == obj.__module__, (name, block)
        assert getattr(importlib.import_module(module), attr) is obj
    page = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    assert all(f"`cnnkit.{name}`" in page for name in hooks.PUBLIC_API)


def test_readme_feature_table_commands_parse_and_name_every_command():
    import argparse
    import contextlib
    import io

    from cnnkit.cli import build_parser

    text = README.read_text(encoding="utf-8").split("## What cnnkit does", 1)[1].split("\n## ", 1)[0]
    cells = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| [")]
    commands = [c for cell in cells for c in re.findall(r"`(cnnkit [^`]+)`", cell)]
    refused = []
    for command in commands:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                build_parser().parse_args(shlex.split(command)[1:])
            except SystemExit:
                refused.append(f"`{command}`: {err.getvalue().strip().splitlines()[-1]}")
    assert not refused, "README.md feature table commands that do not run as written:\n" + "\n".join(refused)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    shown = {shlex.split(c)[1] for c in commands}
    missing = sorted(set(sub.choices) - shown - {"train", "eval", "predict"})  # classify's short forms
    assert not missing, f"README.md feature table names no `cnnkit {missing}`"


def test_security_page_counts_the_fuzz_cases_that_run():
    # hypothesis stops a test early once a finite strategy is exhausted, so a test's max_examples
    # counts only when its strategy holds that many cases
    import importlib.util

    pytest.importorskip("hypothesis")
    spec = importlib.util.spec_from_file_location("_fuzz_count", REPO / "tests" / "test_fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    counts = {
        name: fn._hypothesis_internal_use_settings.max_examples
        for name, fn in vars(fuzz).items()
        if name.startswith("test_") and hasattr(fn, "_hypothesis_internal_use_settings")
    }
    train_cases = sum(len(values) for values in fuzz.ABSURD_TRAIN.values())
    assert counts["test_cli_train_refuses_absurd_values_before_any_work"] <= train_cases
    page = (DOCS / "security.md").read_text(encoding="utf-8")
    stated = int(re.search(r"runs ([\d,]+) generated cases", page)[1].replace(",", ""))
    assert stated == sum(counts.values()), counts


def test_package_docstring_names_every_task_package():
    import pkgutil

    import cnnkit
    import cnnkit.tasks

    doc = " ".join(cnnkit.__doc__.split())
    tasks = [m.name for m in pkgutil.iter_modules(cnnkit.tasks.__path__) if m.ispkg]
    assert not [name for name in tasks if f"``{name}``" not in doc and f"cnnkit.tasks.{name}`" not in doc]


def test_package_docstrings_name_each_of_their_modules():
    """The packages whose docstring maps their files (the list of tasks, every task package, the
    engine, ...) name each module they hold, so that a new file gets its line for the next reader."""
    import pkgutil

    import cnnkit.tasks

    tasks = [f"cnnkit.tasks.{m.name}" for m in pkgutil.iter_modules(cnnkit.tasks.__path__) if m.ispkg]
    packages = ["cnnkit.analysis", "cnnkit.data", "cnnkit.engine", "cnnkit.layers", "cnnkit.metrics"]
    missing = []
    for name in [*packages, "cnnkit.serve", "cnnkit.tasks", *tasks]:
        package = importlib.import_module(name)
        doc = package.__doc__ or ""
        missing += [
            f"{name}.{m.name}"
            for m in pkgutil.iter_modules(package.__path__)
            if not m.name.startswith("_") and not re.search(rf"\b{m.name}\b", doc)
        ]
    assert not missing, "name these modules in their package's docstring:\n" + "\n".join(missing)


def test_api_page_shows_docstring_roles_as_code():
    hooks = _hooks()

    class Page:
        class file:
            src_uri = "reference/api.md"

    html = "<p>see :func:<code>cnnkit.load</code>, :class:<code>~cnnkit.engine.task.Task</code> and :meth:<code>to_dict</code></p>"
    out = hooks.on_page_content(html, Page, None, None)
    assert out == "<p>see <code>cnnkit.load</code>, <code>Task</code> and <code>to_dict</code></p>"


def test_some_commands_are_marked_runnable():
    commands = [c for _, c in _runnable_commands()]
    assert "cnnkit summary resnet50 --batch 32" in commands
    assert "cnnkit --help" in commands


# runs every command in one interpreter, so that PyTorch is imported once
_DRIVER = """
import contextlib, io, json, sys
from cnnkit.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    results.append({"code": code, "stderr": err.getvalue()[-2000:]})
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def test_runnable_commands_succeed(tmp_path):
    """Every ``cnnkit`` line of a block marked runnable exits 0 with this checkout's cnnkit."""
    import json

    where: dict[str, str] = {}
    for page, command in _runnable_commands():
        where.setdefault(command, page)
    argvs = []
    for command, page in where.items():
        args = shlex.split(command, comments=True)
        assert args[0] == "cnnkit", f"{page}: only cnnkit commands may be marked runnable: {command}"
        argvs.append(args[1:])
    report = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(argvs), str(report)],
        cwd=REPO,
        check=False,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    failed = [
        f"{page}: `{command}` exited {r['code']}\n{r['stderr']}"
        for (command, page), r in zip(where.items(), json.loads(report.read_text()))
        if r["code"] != 0
    ]
    assert not failed, "\n".join(failed)


NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _shape(line: str) -> str:
    """A printed line with its numbers masked: what a shown output keeps from one run to the next."""
    return NUMBER.sub("#", line.strip())


def _shown_output(page: Path, command: str) -> list[str]:
    """The non-empty lines of the ```text block that follows the shell block holding ``command``."""
    text = page.read_text(encoding="utf-8")
    pattern = re.escape(command) + r"\n```\n(?:(?!```).*\n)*?```text\n([\s\S]*?)```"
    found = re.search(pattern, text)
    assert found, f"{page.relative_to(REPO)}: no ```text block after `{command}`"
    return [line for line in found[1].splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_shows_what_a_training_run_prints_after_its_summary(data_dir, tmp_path, monkeypatch, capsys):
    # the README's first training command on fewer images, on a CPU without native bf16 (the
    # README's hardware): every line after the summary, numbers masked, is the one the README shows
    from cnnkit.cli import main
    from cnnkit.engine import precision

    shown = _shown_output(README, "cnnkit train --data-dir ../shared/data --subset 10000 --epochs 2 --out runs/mnist")
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    monkeypatch.delenv("COLUMNS", raising=False)  # the README's lines unwrapped, as in a pipe (xdist sets 80)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data-dir", str(data_dir), "--subset", "1000", "--epochs", "2", "--out", "runs/mnist"]
    assert main([*argv, "--threads", "1"]) in (0, None)
    printed = capsys.readouterr().out.splitlines()
    # the summary ends with its "why they differ" paragraph and an empty line
    why = max(i for i, line in enumerate(printed) if line.startswith("why they differ:"))
    end = next(i for i in range(why, len(printed)) if not printed[i].strip())
    after = [line for line in printed[end:] if line.strip()]
    assert [_shape(line) for line in after] == [_shape(line) for line in shown]


def test_workbench_page_names_every_field_a_json_route_reads():
    # a script written from the route table gets what the table says: each JSON route is run on a
    # body that records the keys it reads, and each key is named in that route's row (or the row it
    # says it is "as")
    from cnnkit.serve import analyse, conv
    from cnnkit.serve.limits import Limits

    class Recording(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.read: set = set()

        def get(self, key, default=None):
            self.read.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            self.read.add(key)
            return super().__getitem__(key)

    page = (DOCS / "guides" / "workbench.md").read_text(encoding="utf-8")
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(/api/[a-z/]+)` \| [^|]+ \| ([^|]*) \|", page, re.MULTILINE)}

    def documented(route: str) -> set:
        cell = rows[route]
        named = set(re.findall(r"`([a-z_]+)`", cell))
        for other in re.findall(r"as `(/api/[a-z/]+)`", cell):
            named |= documented(other)
        return named

    limits = Limits()
    analyser = analyse.Analyser(limits)
    spec = {"target": "keras_mnist_convnet", "input": "1x28x28", "batch": 2, "dtype": "float32", "optimizer": "sgd"}
    bodies = {
        "/api/conv": (Recording(input=[8, 8], kernel=3, stride=2, padding="same", dilation=1), conv.conv_arithmetic),
        "/api/analyse": (Recording(spec), lambda b: analyser.run("summary", b, analyse.summary_json)),
        "/api/timeline": (Recording(spec), lambda b: analyser.run("timeline", b, analyse.timeline_json)),
        "/api/fit": (
            Recording(spec, memory="8MB", fit_batch=64),
            lambda b: analyser.run("fit", b, analyse.fit_json(b, limits)),
        ),
    }
    unnamed = {}
    try:
        for route, (body, call) in bodies.items():
            call(body)
            if body.read - documented(route):
                unnamed[route] = sorted(body.read - documented(route))
    finally:
        analyser.close()
    assert not unnamed, f"docs/guides/workbench.md's route table leaves out fields the routes read: {unnamed}"


def test_zoo_task_help_names_every_task():
    import argparse

    from cnnkit.cli import build_parser
    from cnnkit.models import list_models, model_info

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    task = next(a for a in sub.choices["zoo"]._actions if "--task" in a.option_strings)
    named = set(re.findall(r"[a-z_]+", task.help.split(":", 1)[1])) - {"default"}
    assert named == {model_info(name).task for name in list_models(task=None)} | {"all"}, task.help
