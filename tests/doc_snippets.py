"""The code blocks of README.md and docs/*.md: parse, check, run.

Every fenced block tagged ``python`` or ``bash`` is code and must be one of:

- **python, run.** A page's python blocks run in order in one namespace (like a notebook), in one fresh
  process per page (``python -m tests.doc_snippets SPEC``), cwd a scratch folder.
- **bash, checked.** Each command of ``examples/run_dpkd.py`` (continuations joined, split on ``&&`` /
  ``;``, ``accelerate launch [--config_file X]`` stripped) is parsed and validated by
  ``hf_dpkd.run_config.parse_run_config`` (nothing runs); a ``benchmarks/*.py`` or ``examples/audit.py``
  command has each of its ``--flags`` looked up in the script's ``--help``; a block running
  ``python -m pytest`` must be exactly the command of ``.ci/run``. ``python3 -m venv``,
  ``. .venv/bin/activate`` and ``pip install`` are set-up, allowed next to a checked command only.
- **not run**, by an explicit marker with a reason.

Markers are HTML comments right before a block (blank lines allowed between them and the block):

- ``<!-- snippet: setup NAME -->``: before a python block, run ``NAME(namespace)`` (a setup function of
  tests/doc_setups.py) to give the block the inputs its text talks about ("your model", ``tok``, ``members``), built
  for real from the embedded demo with tiny models. Setups marked ``@uses_hub`` run against a loopback Hub
  (tests/hub_server.py) that the page test starts.
- ``<!-- snippet: replace OLD => NEW -->``: exact text replacement in the next block only (realistic sizes
  that are too slow for a test, e.g. ``num_samples=100_000``); fails if OLD is absent.
- ``<!-- snippet: not-run (reason) -->``: the block is shown, not run or checked; the reason is required.

Untagged blocks (diagrams, formulas, output) and blocks in other languages are text, not code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.doc_setups import SETUPS

ROOT = Path(__file__).resolve().parents[1]
PYTHON_TAGS = {"python", "py", "python3"}
BASH_TAGS = {"bash", "sh", "shell", "console"}
HELP_CHECKED = re.compile(r"^(benchmarks/[\w-]+\.py|examples/audit\.py)$")
PIPELINE_SCRIPT = "examples/run_dpkd.py"
RUN_TIMEOUT_S = 600

_MARKER_RE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE_RE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One fenced block of a markdown page, with the snippet markers written right before it."""

    path: str  # as shown in messages, e.g. "docs/hub.md"
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    setups: list[str] = field(default_factory=list)
    replaces: list[tuple[str, str]] = field(default_factory=list)
    not_run: str | None = None
    marker_lines: list[int] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> str | None:
        if self.lang in PYTHON_TAGS:
            return "python"
        if self.lang in BASH_TAGS:
            return "bash"
        return None

    @property
    def has_markers(self) -> bool:
        return bool(self.setups or self.replaces or self.not_run is not None)

    def source(self) -> str:
        """The code with the replace markers applied (a missing OLD text raises ValueError)."""
        code = self.code
        for old, new in self.replaces:
            if old not in code:
                raise ValueError(f"{self.where}: replace marker: {old!r} does not occur in the block")
            code = code.replace(old, new)
        return code


def _apply_marker(pending: dict[str, Any], body: str, where: str, errors: list[str]) -> None:
    kind, _, rest = body.partition(" ")
    rest = rest.strip()
    if kind == "setup":
        if not re.fullmatch(r"[A-Za-z_]\w*", rest):
            errors.append(f"{where}: 'setup' needs one function name of tests/doc_setups.py, got {rest!r}")
        else:
            pending["setups"].append(rest)
    elif kind == "replace":
        old, sep, new = rest.partition(" => ")
        if not sep or not old:
            errors.append(f"{where}: 'replace' is written 'replace OLD => NEW', got {rest!r}")
        else:
            pending["replaces"].append((old, new))
    elif kind == "not-run":
        match = re.fullmatch(r"\((.*)\)", rest)
        if not match or not match.group(1).strip():
            errors.append(f"{where}: 'not-run' needs a reason in parentheses, e.g. not-run (a synopsis)")
        else:
            pending["not_run"] = match.group(1).strip()
    else:
        errors.append(
            f"{where}: unknown snippet marker {body!r} (setup NAME, replace OLD => NEW, not-run (why))"
        )


def parse_markdown(text: str, path: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of `text` with their markers, and the marker errors (file:line: message)."""
    blocks: list[Block] = []
    errors: list[str] = []
    lines = text.splitlines()

    def fresh() -> dict[str, Any]:
        return {"setups": [], "replaces": [], "not_run": None, "lines": []}

    pending = fresh()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE_RE.match(line)
        marker = _MARKER_RE.match(line)
        if marker:
            pending["lines"].append(i + 1)
            _apply_marker(pending, marker.group("body"), f"{path}:{i + 1}", errors)
        elif "<!-- snippet" in line or "<!--snippet" in line:
            errors.append(f"{path}:{i + 1}: malformed snippet marker (one line: <!-- snippet: ... -->)")
        elif fence:
            indent, mark = fence.group("indent"), fence.group("fence")
            info = fence.group("info").strip()
            lang = info.split()[0].lower() if info else ""
            body: list[str] = []
            j = i + 1
            close = re.compile(rf"^\s*{re.escape(mark[0])}{{{len(mark)},}}\s*$")
            while j < len(lines) and not close.match(lines[j]):
                content = lines[j]
                body.append(content[len(indent) :] if content.startswith(indent) else content.lstrip())
                j += 1
            if j >= len(lines):
                errors.append(f"{path}:{i + 1}: code block is never closed")
            blocks.append(
                Block(
                    path,
                    i + 1,
                    lang,
                    "\n".join(body) + "\n",
                    setups=pending["setups"],
                    replaces=pending["replaces"],
                    not_run=pending["not_run"],
                    marker_lines=pending["lines"],
                )
            )
            pending = fresh()
            i = j
        elif line.strip() and pending["lines"]:
            errors.append(
                f"{path}:{pending['lines'][0]}: snippet marker is not right before a code block (text follows it)"
            )
            pending = fresh()
        i += 1
    if pending["lines"]:
        errors.append(f"{path}:{pending['lines'][0]}: snippet marker at the end of the page, before no block")
    return blocks, errors


# ---------------------------------------------------------------------------------------------------
# bash: checked, never run
# ---------------------------------------------------------------------------------------------------
def shell_commands(code: str) -> list[list[str]]:
    """Commands of a bash block: continuations joined, comments dropped, split on && / ; / ||."""
    commands: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        current: list[str] = []
        for token in lex:
            if token in ("&&", ";", "||"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def _is_environment_setup(cmd: list[str]) -> bool:
    if cmd[:3] in (["python3", "-m", "venv"], ["python", "-m", "venv"]):
        return True
    if cmd[0] in (".", "source") and len(cmd) == 2 and cmd[1].endswith("bin/activate"):
        return True
    return cmd[:2] == ["pip", "install"] or cmd[:4] in (
        ["python", "-m", "pip", "install"],
        ["python3", "-m", "pip", "install"],
    )


def _ci_test_command() -> str:
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "python -m pytest" in ln]
    if len(lines) != 1:
        raise AssertionError(f".ci/run must hold exactly one 'python -m pytest' line, found {len(lines)}")
    return " ".join(lines[0].split())


_HELP_CACHE: dict[str, tuple[int, str]] = {}


def script_help(script: str) -> tuple[int, str]:
    """(exit status, output) of ``python SCRIPT --help`` in the repository root (cached)."""
    if script not in _HELP_CACHE:
        proc = subprocess.run(
            [sys.executable, script, "--help"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        _HELP_CACHE[script] = (proc.returncode, proc.stdout + proc.stderr)
    return _HELP_CACHE[script]


def _check_pipeline_args(args: list[str], where: str) -> list[str]:
    import contextlib
    import io

    from hf_dpkd.run_config import parse_run_config

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # recipe paths are relative to the repository root, as in the docs
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            parse_run_config(list(args))
    except SystemExit as e:
        if e.code == 0 and ("--help" in args or "-h" in args):
            return []
        return [f"{where}: {PIPELINE_SCRIPT} {' '.join(args)}: arguments rejected: {err.getvalue()[-800:]}"]
    except Exception as e:  # any failure of the argument parsing is a doc error
        return [f"{where}: {PIPELINE_SCRIPT} {' '.join(args)}: {type(e).__name__}: {e}"]
    finally:
        os.chdir(cwd)
    return []


def _check_help_flags(script: str, args: list[str], where: str) -> list[str]:
    if not (ROOT / script).is_file():
        return [f"{where}: {script} does not exist"]
    status, text = script_help(script)
    if status != 0:
        return [f"{where}: `python {script} --help` failed (exit {status}):\n{text[-1500:]}"]
    flags = sorted({m for a in args for m in re.findall(r"--[A-Za-z][\w-]*", a)})
    return [
        f"{where}: {script} has no flag {flag} (not in its --help)"
        for flag in flags
        if not re.search(rf"{re.escape(flag)}(?![\w-])", text)
    ]


def check_bash(block: Block) -> tuple[list[str], str]:
    """Errors of a bash block and what was checked ('args-checked', 'help-checked', 'ci-command')."""
    where = block.where
    try:
        code = block.source()
        commands = shell_commands(code)
    except ValueError as e:
        return [f"{where}: {e}"], ""
    if any(cmd[:3] == ["python", "-m", "pytest"] for cmd in commands):
        expected = _ci_test_command()
        given = " ".join(code.replace("\\\n", " ").split())
        if given != expected:
            return [f"{where}: the test command must be exactly .ci/run's:\n  {expected}\ngot\n  {given}"], ""
        return [], "ci-command"
    errors: list[str] = []
    checked: set[str] = set()
    for cmd in commands:
        if any(t in ("|", ">", ">>", "<", "&") for t in cmd):
            errors.append(f"{where}: pipes and redirections are not checked: {' '.join(cmd)}")
            continue
        if _is_environment_setup(cmd):
            continue
        args = list(cmd)
        if args[:2] == ["accelerate", "launch"]:
            args = args[2:]
            while args and not args[0].endswith(".py"):
                option = args.pop(0)
                if option == "--config_file":
                    if not args:
                        errors.append(f"{where}: --config_file needs a file")
                        break
                    config_file = args.pop(0)
                    if not (ROOT / config_file).is_file():
                        errors.append(f"{where}: accelerate --config_file {config_file} does not exist")
            script, args = (args[0], args[1:]) if args else ("", [])
        elif args[0] in ("python", "python3") and len(args) > 1 and args[1].endswith(".py"):
            script, args = args[1], args[2:]
        else:
            errors.append(f"{where}: not a command the docs test can check: {' '.join(cmd)}")
            continue
        if script == PIPELINE_SCRIPT:
            errors += _check_pipeline_args(args, where)
            checked.add("args-checked")
        elif HELP_CHECKED.match(script):
            errors += _check_help_flags(script, args, where)
            checked.add("help-checked")
        else:
            errors.append(f"{where}: no check for script {script!r}: {' '.join(cmd)}")
    if not checked and not errors:
        errors.append(f"{where}: a block of environment set-up only; show it with the command it prepares")
    return errors, "+".join(sorted(checked))


# ---------------------------------------------------------------------------------------------------
# A page: classify every block, check bash, run python
# ---------------------------------------------------------------------------------------------------
@dataclass
class PageResult:
    errors: list[str]
    statuses: list[tuple[str, str]]  # (file:line, run / args-checked / help-checked / not-run (reason))
    output: str = ""


def _setup_function(name: str) -> Callable[[dict[str, Any]], None] | None:
    return SETUPS.get(name)


def check_page(
    text: str,
    path: str,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    start_hub: Callable[[], dict[str, str]] | None = None,
) -> PageResult:
    """Check one markdown page; python blocks run in one subprocess in `workdir`.

    `start_hub` is called (once) when a setup of the page needs the loopback Hub; it returns the
    environment that points the snippet process at it.
    """
    blocks, errors = parse_markdown(text, path)
    statuses: list[tuple[str, str]] = []
    python_blocks: list[Block] = []
    for block in blocks:
        if block.kind is None:
            if block.has_markers:
                errors.append(f"{block.where}: snippet marker before a block that is not python or bash")
            continue
        if block.not_run is not None:
            if block.setups or block.replaces:
                errors.append(f"{block.where}: a not-run block takes no other marker")
            statuses.append((block.where, f"not-run ({block.not_run})"))
            continue
        if block.kind == "bash":
            if block.setups:
                errors.append(f"{block.where}: setup markers apply to python blocks only")
            bash_errors, what = check_bash(block)
            errors += bash_errors
            statuses.append((block.where, "failed" if bash_errors else what))
            continue
        python_blocks.append(block)
    python_errors = [
        f"{b.where}: setup {name!r} is not a setup function of tests/doc_setups.py"
        for b in python_blocks
        for name in b.setups
        if _setup_function(name) is None
    ]
    for b in python_blocks:
        try:
            b.source()
        except ValueError as e:
            python_errors.append(str(e))
    if any(getattr(_setup_function(n), "uses_hub", False) for b in python_blocks for n in b.setups):
        if start_hub is None:
            python_errors.append(f"{path}: a setup needs the loopback Hub but no start_hub was given")
    errors += python_errors
    output = ""
    if python_blocks and not python_errors:
        run_env = dict(env or os.environ)
        if any(getattr(_setup_function(n), "uses_hub", False) for b in python_blocks for n in b.setups):
            run_env.update(start_hub())
        ok, output = run_python_blocks(python_blocks, workdir, run_env)
        if not ok:
            errors.append(f"{path}: a python snippet failed (output tail below)\n{output[-6000:]}")
        statuses += [(b.where, "run" if ok else "failed") for b in python_blocks]
    statuses.sort(key=lambda s: int(s[0].rpartition(":")[2]))
    return PageResult(errors, statuses, output)


def snippet_env(workdir: Path) -> dict[str, str]:
    """The environment of a page's snippet process: offline, one thread, caches in `workdir`."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(workdir / "hf_home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        WANDB_DISABLED="true",
        MPLBACKEND="Agg",
        DS_ACCELERATOR="cpu",
    )
    return env


def run_python_blocks(blocks: list[Block], workdir: Path, env: dict[str, str]) -> tuple[bool, str]:
    """Run `blocks` in order in one namespace in a fresh process (cwd `workdir`): (success, output)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "snippets.json"
    spec.write_text(
        json.dumps(
            [
                {
                    "path": b.path,
                    "file": str(ROOT / b.path),
                    "line": b.line,
                    "source": b.source(),
                    "setups": b.setups,
                }
                for b in blocks
            ]
        )
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.doc_snippets", str(spec)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        return False, f"timed out after {RUN_TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}"
    output = proc.stdout + proc.stderr
    return proc.returncode == 0 and "SNIPPETS OK" in proc.stdout, output


def _main(spec_path: str) -> int:
    """Snippet process: run the blocks of SPEC in one namespace; tracebacks name the markdown line."""
    import time

    start = time.perf_counter()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for block in json.loads(Path(spec_path).read_text()):
        where = f"{block['path']}:{block['line']}"
        try:
            for name in block["setups"]:
                print(f"--- [{time.perf_counter() - start:.1f} s] setup {name} for {where}", flush=True)
                SETUPS[name](namespace)
            print(f"--- [{time.perf_counter() - start:.1f} s] run {where}", flush=True)
            # Blank lines in front, so that tracebacks give the line numbers of the markdown file.
            code = compile("\n" * block["line"] + block["source"], block["file"], "exec")
            exec(code, namespace)
        except BaseException:  # report any failure with the block it came from
            traceback.print_exc()
            print(f"FAILED: {where}", file=sys.stderr, flush=True)
            return 1
    print(f"--- [{time.perf_counter() - start:.1f} s] done", flush=True)
    print("SNIPPETS OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
