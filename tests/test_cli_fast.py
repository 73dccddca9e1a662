"""``cnnkit --help`` answers without importing torch, for the command and every sub-command.

The parsers are built from torch-free config modules; the engine and the task packages re-export
their heavy modules lazily (:mod:`cnnkit._lazy`). Each check runs in a fresh interpreter, where
nothing has imported torch yet.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# every command path of the parser; --help of each; the paths after which torch was imported
_HELP_ALL = textwrap.dedent(
    """
    import argparse, contextlib, io, json, sys
    from cnnkit.cli import build_parser, main

    def paths(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield [*prefix, name]
                    yield from paths(sub, [*prefix, name])

    torch_after = []
    commands = [[]] + list(paths(build_parser(), []))
    if "torch" in sys.modules:
        torch_after.append("build_parser()")
    for path in commands:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main([*path, "--help"])
            except SystemExit as exc:
                assert exc.code == 0, (path, exc.code)
        assert out.getvalue().startswith("usage: cnnkit"), (path, out.getvalue()[:200])
        if "torch" in sys.modules and not torch_after:
            torch_after.append(" ".join(["cnnkit", *path, "--help"]))
    print(json.dumps({"commands": [" ".join(p) for p in commands], "torch_after": torch_after}))
    """
)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_help_of_every_command_imports_no_torch():
    out = _python(_HELP_ALL)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    commands = result["commands"]
    assert {"classify", "classify train", "detect train", "segment predict", "zoo", "serve"} <= set(commands)
    assert len(commands) > 30
    assert result["torch_after"] == [], f"torch imported by {result['torch_after'][0]}"


def test_help_exits_zero_without_torch():
    out = _python(
        "import sys\nfrom cnnkit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
        "    code = e.code\nprint(code, 'torch' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 False"
    assert "usage: cnnkit" in out.stdout


def test_lazy_name_survives_import_of_same_named_module(tmp_path, monkeypatch):
    """A package re-exporting ``train`` from ``train.py`` keeps the function even when the module is
    imported first (the import system binds the module on the package)."""
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from cnnkit._lazy import lazy_exports\n"
        "lazy_exports(__name__, {'train': ['train', 'Result'], 'config': ['Config']})\n"
        "__all__ = ['Config', 'Result', 'train']\n"
    )
    (pkg / "train.py").write_text("class Result: ...\ndef train():\n    return 'trained'\n")
    (pkg / "config.py").write_text("class Config: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("lazypkg")]:
        monkeypatch.delitem(sys.modules, name)
    package = importlib.import_module("lazypkg")
    assert "lazypkg.train" not in sys.modules  # nothing imported before first use
    module = importlib.import_module("lazypkg.train")
    assert package.train is module.train and package.train() == "trained"
    from lazypkg import Config, train

    assert train() == "trained" and Config.__module__ == "lazypkg.config"
    assert {"Config", "Result", "train"} <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        package.missing  # noqa: B018


@pytest.mark.parametrize(
    "name",
    ["cnnkit.engine"] + [f"cnnkit.tasks.{p.name}" for p in sorted((SRC / "cnnkit" / "tasks").iterdir()) if p.is_dir()],
)
def test_lazy_packages_export_what_all_names(name):
    """Every name of a lazy package's ``__all__`` is exported, and is the object its module defines."""
    package = importlib.import_module(name)
    if not hasattr(package, "__all__"):
        pytest.skip(f"{name} has no __all__")
    exports = package.__dict__["_exports"]
    assert set(exports) == set(package.__all__)
    for attr in package.__all__:
        value = getattr(package, attr)
        assert not isinstance(value, ModuleType), f"{name}.{attr} is a module"
        assert value is getattr(importlib.import_module(exports[attr]), attr)


def test_summary_and_memory_help_name_keras_files(capsys):
    """Both commands analyse a Keras file (tests/test_keras.py), and their help says so."""
    from cnnkit.cli import main

    for command in ("summary", "memory"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert ".keras/.h5" in " ".join(capsys.readouterr().out.split())


def test_train_help_shows_each_presets_defaults(capsys):
    # a flag a preset sets shows each preset's value, not the config class's own default
    from cnnkit.cli import main
    from cnnkit.tasks.classify.config import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    fast, best = PRESETS["fast"], PRESETS["best"]
    assert f"(default: fast {fast['epochs']}, best {best['epochs']})" in text
    assert f"(default: fast {fast['batch_size']}, best {best['batch_size']})" in text
    assert f"(default: fast {fast['prune']}, best 0.0)" in text  # a preset that leaves it keeps the class's
    assert "(default: 6)" not in text


@pytest.mark.parametrize(
    "command, config, examples",
    [
        (["detect", "train"], ("detect", "DetectConfig"), {"photos": "pennfudan", "digits": "digits"}),
        (["segment", "train"], ("segment", "SegmentConfig"), {"pennfudan": "pennfudan", "digits": "digits"}),
    ],
)
def test_a_data_dependent_default_shows_each_datas_value(capsys, command, config, examples):
    # "(default: the task's default)" tells a user nothing: the help resolves each kind of data
    from cnnkit.cli import main

    cls = getattr(importlib.import_module(f"cnnkit.tasks.{config[0]}.config"), config[1])
    epochs = {label: cls(data=data).resolved().epochs for label, data in examples.items()}
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(f"{label} {n}" for label, n in epochs.items()) in text
    assert "passes over the training split (default: the task's default)" not in text


def test_counts_are_said_in_the_singular_for_one():
    """A one-class detector's summary says '1 class' (counted), not '1 classes'."""
    from cnnkit.errors import counted

    assert [counted(1, "class"), counted(2, "class"), counted(1, "image"), counted(1200, "box")] == [
        "1 class",
        "2 classes",
        "1 image",
        "1,200 boxes",
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["classify", "finetune"],
        ["detect", "train"],
        ["segment", "train"],
        ["instance", "train"],
        ["sequence", "train"],
        ["video", "train"],
        ["video-predict", "train"],
        ["generate", "train"],
        ["style", "train"],
    ],
)
def test_threads_help_says_what_unset_means(capsys, command):
    """--threads left unset takes the free cores, as 0 does: the help says so, not "(default: none)" (no
    threads?) or "(default: the task's default)"."""
    from cnnkit.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    threads = text.split("--threads THREADS torch", 1)[1].split(" --", 1)[0]
    assert "unset:" in threads and "the free cores" in threads and "(default:" not in threads
    assert "the task's default" not in text  # every flag whose default depends on the data says what it is


def _every_flag_help():
    """(command, flag, help) of every option of every command of the parser."""
    import argparse

    from cnnkit.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*prefix, name])
            elif action.option_strings:
                yield " ".join(prefix), action.option_strings[-1], action.help or ""

    return list(walk(build_parser(), []))


def test_flag_helps_say_what_each_flag_takes():
    """A required setting says so, not "(default: )"; a help states the flags it names rightly."""
    helps = {(command, flag): text for command, flag, text in _every_flag_help()}
    assert [k for k, text in helps.items() if "(default: )" in text] == []
    assert "(required)" in helps["style train", "--style"] and "(required)" in helps["style train", "--data"]
    assert helps["explain", "--weights"].startswith("zoo models: imagenet")  # what the explain note tells users to pass
    assert "the generator's last" not in helps["generate train", "--width"]  # its last maps have 2 * width channels
    assert "0: the free cores" in helps["style transfer", "--threads"]
    for command in ("generate eval", "video eval", "video-predict eval"):
        assert helps[command, "--data-dir"].endswith("(default: the run's)") and helps[command, "--format"]
    assert ("style train", "--data-dir") not in helps  # it reads no built-in data set
    for (command, flag), text in helps.items():  # --resume names only the flags the command has
        if flag == "--resume":
            named = re.findall(r"--[a-z-]+", text.split("refused", 1)[1])
            assert named and all((command, f) in helps for f in named), (command, named)


def test_every_command_with_a_format_says_what_it_chooses():
    """--format is one flag (cli.add_format) with one help text wherever a command prints a table or JSON."""
    from cnnkit.cli import build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            for sub in getattr(action, "choices", None).values() if isinstance(action.choices, dict) else ():
                yield from parsers(sub)

    found = 0
    for p in parsers(build_parser()):
        for action in p._actions:
            if "--format" in action.option_strings and "onnx" not in action.choices:
                found += 1
                assert action.help and action.help.endswith("(default: table)"), (p.prog, action.help)
    assert found >= 12


def test_output_cut_short_by_its_reader_ends_quietly():
    """`cnnkit summary ... --format json | head -c 10`: the pipe closes early; exit 141 (SIGPIPE's), no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "summary", "resnet152", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.read(10)
    proc.stdout.close()  # the reader goes away with most of the 180 kB unread
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize(
    "argv, usage", [(["segment", "train", "--bogus", "1"], "cnnkit segment train"), (["--bogus"], "cnnkit")]
)
def test_an_unknown_flag_is_refused_with_its_commands_usage(capsys, argv, usage):
    from cnnkit.cli import main

    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith(f"usage: {usage} [-h]"), err[:200]
    assert err.strip().endswith(f"{usage}: error: unrecognized arguments: {' '.join(argv[len(usage.split()) - 1 :])}")
