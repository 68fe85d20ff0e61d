"""The package as a user installs it: the `tslab` command, the documented script forms, and the layout rules
(no sys.path edits, no import cycles, modules small enough to read whole)."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from timesformer import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("timesformer", "analysis", "app")
TSLAB = Path(sys.executable).parent / "tslab"


def run(*cmd, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_tslab_lists_every_command_and_each_has_help(tmp_path):
    assert TSLAB.exists(), "tslab is not installed: `pip install -e .`"
    top = run(TSLAB, "--help")
    assert top.returncode == 0
    for name in ("train", "evaluate", "explain", "cost", "export", "app", "bench"):
        assert re.search(rf"^\s+{name}\s", top.stdout, re.M), name
        sub = run(TSLAB, name, "--help", cwd=tmp_path)  # from any folder
        assert sub.returncode == 0, (name, sub.stderr)
        assert sub.stdout.startswith(f"usage: tslab {name}"), (name, sub.stdout[:200])
    bad = run(TSLAB, "fly")
    assert bad.returncode == 2 and "unknown command 'fly'" in bad.stderr and "Traceback" not in bad.stderr


class _Parsed(Exception):
    """What a benchmark's main() raises, carrying its parser, when it comes to parse its arguments."""


BENCHMARKS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if "\ndef main(" in p.read_text())


@pytest.mark.parametrize("module", ["timesformer.train", "timesformer.evaluate", "analysis.report",
                                    "analysis.cost.cli", "timesformer.export",
                                    *(f"bench/{name}" for name in BENCHMARKS)])
def test_every_flag_says_what_it_does_and_its_default(module, monkeypatch):
    """argparse's own ArgumentDefaultsHelpFormatter prints nothing for a flag without help, "(default: None)" for
    one whose default the help explains, and tuples as "(8, 16, 32)"; cli.HelpFormatter names each default once.
    The commands build their parser in build_parser(); a benchmark's is caught as its main() parses."""
    if module.startswith("bench/"):
        def caught(self, *args, **kwargs):
            raise _Parsed(self)

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
        monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", caught)
        monkeypatch.syspath_prepend(str(ROOT / "bench"))
        with pytest.raises(_Parsed) as parsed:
            importlib.import_module(module.removeprefix("bench/")).main([])
        parser = parsed.value.args[0]
    else:
        parser = importlib.import_module(module).build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:  # positionals, --help
            continue
        flag = action.option_strings[-1]
        assert action.help and not action.help.startswith("default"), f"{module}: {flag} does not say what it is"
        text = formatter._expand_help(action)
        assert "(default: None)" not in text and "(default: (" not in text, (flag, text)
        if not (action.default is None or action.default is False or action.default == []):
            assert "default" in text, f"{module}: the help of {flag} does not name its default: {text!r}"


def test_ctrl_c_in_any_command_is_one_line(monkeypatch, capsys):
    from timesformer import evaluate

    def interrupted(argv, prog):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "main", interrupted)
    assert cli.main(["evaluate", "run", "data"]) == 130
    assert capsys.readouterr().err == "tslab evaluate: stopped by Ctrl-C\n"


def test_tslab_app_refuses_a_device_that_is_not_there():
    """Checked before Streamlit starts: a one-line error, not an app that fails on its first page."""
    bad = run(TSLAB, "app", "--device", "tpu")
    assert bad.returncode == 2 and "tslab app: error: --device tpu: Expected one of" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_tslab_app_hands_the_device_to_the_app(monkeypatch, tmp_path):
    from timesformer import cli

    monkeypatch.chdir(tmp_path)  # and the folder it was started in: paths typed in the app are taken from it
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd, env: calls.append((cmd, env)) or 0)
    monkeypatch.setenv("TSLAB_DEVICE", "auto")
    assert cli.app(["--device", "cpu", "--server.port", "8600"]) == 0
    (cmd, env), = calls
    assert cmd[-2:] == ["--server.port", "8600"] and env["TSLAB_DEVICE"] == "cpu"
    assert env["TSLAB_WORKDIR"] == str(tmp_path)
    assert cli.app(["--server.headless", "true"]) == 0  # the environment's setting by default
    assert calls[-1][1]["TSLAB_DEVICE"] == "auto"


def test_tslab_bench_names_the_scripts_and_refuses_unknown_ones():
    listed = run(TSLAB, "bench", "--help").stdout
    for script in (ROOT / "bench").glob("*.py"):
        assert script.stem in listed
    bad = run(TSLAB, "bench", "nonexistent")
    assert bad.returncode == 2 and "no benchmark 'nonexistent'" in bad.stderr
    bare = run(TSLAB, "bench")  # what there is to run, not only "the following arguments are required"
    assert bare.returncode == 2 and "benchmarks:" in bare.stderr and "gpu" in bare.stderr
    missing = run(TSLAB, "bench", "explain", "--models", "no-such-model", "--clips", "1")
    assert missing.returncode == 2 and "no such checkpoint: no-such-model" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "bench").glob("*.py")))
def test_every_benchmark_explains_itself_without_running(name, tmp_path):
    """`tslab bench NAME --help` prints the script's usage and returns at once (no benchmark starts on --help)."""
    proc = run(TSLAB, "bench", name, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), (proc.stdout[:500], proc.stderr[-2000:])
    assert not proc.stdout.startswith("usage: tslab bench [-h] name"), proc.stdout[:300]  # the script's usage


@pytest.mark.parametrize("cmd", [
    ["timesformer/train.py", "--help"],
    ["timesformer/evaluate.py", "--help"],
    ["analysis/complexity.py", "--help"],
    ["-m", "timesformer.train", "--help"],
    ["-m", "timesformer.evaluate", "--help"],
    ["-m", "timesformer.export", "--help"],
    ["-m", "analysis.complexity", "--help"],
    ["-m", "analysis.report", "--help"],
    ["-m", "analysis.attention", "--help"],
])
def test_documented_script_forms_work_from_any_folder(cmd, tmp_path):
    args = [str(ROOT / c) if c.endswith(".py") else c for c in cmd]
    proc = run(sys.executable, *args, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports at module level or in functions (the static graph)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` inside package p is p.x
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_cycles_and_no_sys_path_edits():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # a package's __init__ importing its own modules is how re-exports work, not a cycle
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            pytest.fail("import cycle: " + " → ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph[node]):
            visit(dep, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])
    for path in modules.values():
        assert "sys.path" not in path.read_text(), f"{path} edits sys.path: the package is installed instead"


def test_modules_stay_small_enough_to_read_whole():
    sizes = {path: len(path.read_text().splitlines()) for path in _modules().values()}
    sizes |= {path: len(path.read_text().splitlines()) for path in (ROOT / "pages").glob("*.py")}
    big = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > 420}
    assert not big, big


def test_usage_names_every_command():
    text = cli.usage()
    assert all(name in text for name in cli.COMMANDS)
