"""`tslab`: one command for everything the project does.

    tslab train ...      train a model (python -m timesformer.train)
    tslab evaluate ...   clip and 3-crop video accuracy of a checkpoint (python -m timesformer.evaluate)
    tslab explain ...    attention maps, rollout and diagrams of clips (python -m analysis.report)
    tslab cost ...       FLOPs and memory curves of the five schemes (python analysis/complexity.py)
    tslab export ...     a checkpoint as this project's or a HuggingFace folder (python -m timesformer.export)
    tslab app ...        the Streamlit app (streamlit run app/main.py)
    tslab bench NAME ... a benchmark of the repository's bench/ folder

`tslab COMMAND --help` describes each. The subcommands are the modules above: every documented
`python -m ...` form does the same thing.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

from . import __version__

ROOT = Path(__file__).resolve().parents[1]  # the repository of an editable install (`pip install -e .`)

# command → (what it does, "module:function" taking (argv, prog) and returning an exit code or None)
COMMANDS = {
    "train": ("train a model", "timesformer.train:cli"),
    "evaluate": ("clip and video accuracy of a checkpoint", "timesformer.evaluate:main"),
    "explain": ("attention maps, rollout, diagrams and numbers of clips", "analysis.report:main"),
    "cost": ("FLOPs and training memory of the five schemes", "analysis.cost.cli:main"),
    "export": ("a checkpoint as this project's folder or a HuggingFace one", "timesformer.export:main"),
    "app": ("the Streamlit app", "timesformer.cli:app"),
    "bench": ("a benchmark of the repository's bench/ folder", "timesformer.cli:bench"),
}


def at_least(low: int, most: int | None = None):
    """argparse type: an integer ≥ `low` (and ≤ `most` where given; an out-of-range value is a one-line usage
    error)."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (most is not None and value > most):
            wanted = f"≥ {low}" if most is None else f"from {low} to {most}"
            raise argparse.ArgumentTypeError(f"expected an integer {wanted}, got {text!r}")
        return value

    return integer


class OneLineErrors(argparse.ArgumentParser):
    """A parser whose usage errors are one line, "PROG: error: MESSAGE", without the usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.HelpFormatter):
    """`--help` that gives every option's default: "(default: X)" after its help, unless the help already says
    what the default is or there is none (None, False, an empty list). Every command's parser uses it."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default is argparse.SUPPRESS or default == []):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace, ranges: dict) -> None:
    """A one-line SystemExit for the first int or float flag of `parser` whose value in `args` is not a number
    of its type, or is out of its range in `ranges` (dest → (lowest, whether the lowest is allowed, the value
    it stays below or None)). Unset flags (None) pass."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if value is None or action.type not in (int, float):
            continue
        flag, integer = (action.option_strings or [action.dest])[-1], action.type is int
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise SystemExit(f"{flag} must be {'an integer' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):  # nan passes every comparison below
            raise SystemExit(f"{flag} must be a finite number, got {value}")
        low, inclusive, high = ranges.get(action.dest, (None, True, None))
        if low is not None and (value < low or (value == low and not inclusive)) or high is not None and value >= high:
            what = f"{'at least' if inclusive else 'above'} {low}" + (f" and below {high}" if high is not None else "")
            raise SystemExit(f"{flag} must be {what}, got {value}")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: tslab COMMAND [ARGS]   (tslab {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (what, _) in COMMANDS.items()]
    lines += ["", "`tslab COMMAND --help` describes each command's arguments."]
    return "\n".join(lines)


def app(argv=None, prog: str = "tslab app") -> int:
    """Start the Streamlit app from the repository root (so its .streamlit/config.toml applies)."""
    p = argparse.ArgumentParser(prog=prog, description="The TimeSformer Lab app on the shipped models "
                                "(http://localhost:8501). Other arguments go to `streamlit run`, e.g. "
                                "--server.port 8600 --server.headless true.")
    p.add_argument("--device", default=os.environ.get("TSLAB_DEVICE", "auto"),
                   help="where the app's models run: auto (the GPU where there is one, else the CPU), cpu, cuda, "
                        "cuda:N (default: $TSLAB_DEVICE, else auto)")
    args, rest = p.parse_known_args(argv)
    from .distributed import resolve_device

    try:
        resolve_device(args.device)
    except SystemExit as e:
        p.exit(2, f"{prog}: error: {e}\n")
    main_py = ROOT / "app" / "main.py"
    if not (main_py.is_file() and (ROOT / "pages").is_dir()):
        p.exit(2, f"{prog}: error: the app's scripts are not at {ROOT}: install the project from a checkout "
                  "with `pip install -e .`\n")
    # Streamlit runs in the repository (its .streamlit/config.toml); paths the user gives are taken from here
    env = {**os.environ, "TSLAB_DEVICE": args.device, "TSLAB_WORKDIR": os.getcwd()}
    return subprocess.call([sys.executable, "-m", "streamlit", "run", str(main_py), *rest], cwd=ROOT, env=env)


def benchmarks() -> dict[str, str]:
    """{name: first docstring paragraph, on one line} of the scripts in bench/."""
    out = {}
    for path in sorted((ROOT / "bench").glob("*.py")):
        text = path.read_text()
        doc = " ".join(text.split('"""')[1].strip().split("\n\n")[0].split()) if text.startswith('"""') else ""
        out[path.stem] = doc
    return out


def bench(argv=None, prog: str = "tslab bench") -> int:
    """Run `bench/NAME.py ARGS` with this Python, in the caller's folder (relative paths are the caller's)."""
    found = benchmarks()
    listing = "\n".join(f"  {name:<18} {doc}" for name, doc in found.items()) or "  (none: no bench/ folder)"
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run a benchmark of the repository's bench/ folder; "
                                            f"`{prog} NAME --help` gives its arguments.\n\nbenchmarks:\n{listing}")
    p.add_argument("name", help="the benchmark (a script in bench/)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # what there is to run, rather than "the following arguments are required"
        p.print_help(sys.stderr)
        return 2
    # everything after NAME is the script's, --help included
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    args = p.parse_args(argv[:at + 1])
    rest = argv[at + 1:]
    if args.name not in found:
        p.exit(2, f"{prog}: error: no benchmark {args.name!r} in {ROOT / 'bench'}; choose one of: "
                  f"{', '.join(found) or 'none'}\n")
    return subprocess.call([sys.executable, str(ROOT / "bench" / f"{args.name}.py"), *rest])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"tslab {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tslab: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][1].split(":")
    try:
        code = getattr(importlib.import_module(module), func)(rest, prog=f"tslab {name}")
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (tslab train says where its checkpoint is)
        print(f"tslab {name}: stopped by Ctrl-C", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
