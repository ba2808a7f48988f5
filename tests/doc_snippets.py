"""The code blocks of README.md and docs/*.md, checked with Sybil: python runs, bash is checked.

Sybil (https://sybil.readthedocs.io) reads the pages: `SnippetParser` turns each fenced block tagged
``python`` or ``bash``, with the markers written right before it, into a Sybil example, one test per block
(tests/test_docs.py collects one Sybil file per page). Every such block must be one of:

- **python, run.** A page's python blocks run in order in one namespace, like a notebook (Sybil's
  ``PythonEvaluator``), in one fresh process per page (``python -m tests.doc_snippets PAGE``), cwd a scratch
  folder: the page runs as a user's script would, offline with its caches in the scratch folder or pointed
  at a loopback Hub (the Hub clients read ``HF_ENDPOINT`` when imported), and its global state (accelerate,
  torch, Opacus hooks) is its own. Running a block first runs the page's earlier python blocks.
- **bash, checked.** Each command of ``examples/run_dpkd.py`` (continuations joined, split on ``&&`` /
  ``;``, ``accelerate launch [--config_file X]`` stripped) is parsed and validated by
  ``hf_dpkd.run_config.parse_run_config`` (nothing runs); a ``benchmarks/*.py`` or ``examples/audit.py``
  command has each of its ``--flags`` looked up in the script's ``--help``; a block running
  ``python -m pytest`` must be exactly the command of ``.ci/run``. ``python3 -m venv``,
  ``. .venv/bin/activate`` and ``pip install`` are set-up, allowed next to a checked command only.
- **not run**, by an explicit marker with a reason: a skipped test that gives the reason.

Markers are HTML comments right before a block (blank lines allowed between them and the block):

- ``<!-- snippet: setup NAME -->``: before a python block, run ``NAME(namespace)`` (a setup function of
  tests/doc_setups.py) to give the block the inputs its text talks about ("your model", ``tok``,
  ``members``), built for real from the embedded demo with tiny models. Setups marked ``@uses_hub`` run
  against a loopback Hub (tests/hub_server.py) that the page's process is pointed at.
- ``<!-- snippet: replace OLD => NEW -->``: exact text replacement in the next block only (realistic sizes
  that are too slow for a test, e.g. ``num_samples=100_000``); fails if OLD is absent.
- ``<!-- snippet: not-run (reason) -->``: the block is shown, not run or checked; the reason is required.

A wrong marker fails the test of its block, or a test at the marker's line. Untagged blocks (diagrams,
formulas, output) and blocks in other languages are text, not code.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sybil import Document, Example, Lexeme, Region, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

from tests.doc_setups import SETUPS

ROOT = Path(__file__).resolve().parents[1]
PYTHON_TAGS = {"python", "py", "python3"}
BASH_TAGS = {"bash", "sh", "shell", "console"}
HELP_CHECKED = re.compile(r"^(benchmarks/[\w-]+\.py|examples/audit\.py)$")
PIPELINE_SCRIPT = "examples/run_dpkd.py"
#: The most a page's python blocks may take, all together.
RUN_TIMEOUT_S = 600

_MARKER_LINE_RE = re.compile(r"^.*<!--\s*snippet.*$", re.MULTILINE)
_MARKER_RE = re.compile(r"\s*<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*")


# ---------------------------------------------------------------------------------------------------
# Parsing: Sybil's lexer finds the fenced blocks, the markers before them say what to do with them
# ---------------------------------------------------------------------------------------------------
def page_name(path: str | Path) -> str:
    """A page as messages name it: its path in the repository (e.g. "docs/hub.md"), else its file name."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return Path(path).name


def where(example: Example) -> str:
    """``page:line`` of the example's opening fence (or marker)."""
    return f"{page_name(example.path)}:{example.line}"


@dataclass
class _Marker:
    """One ``<!-- snippet: ... -->`` line (outside code blocks), or a malformed one (`body` None)."""

    start: int
    end: int
    line: int
    body: str | None
    kind: str = ""
    value: Any = None
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.body is None:
            self.errors.append("malformed snippet marker (one line: <!-- snippet: ... -->)")
            return
        self.kind, _, rest = self.body.partition(" ")
        rest = rest.strip()
        if self.kind == "setup":
            if re.fullmatch(r"[A-Za-z_]\w*", rest):
                self.value = rest
            else:
                self.errors.append(f"'setup' needs one function name of tests/doc_setups.py, got {rest!r}")
        elif self.kind == "replace":
            old, sep, new = rest.partition(" => ")
            if sep and old:
                self.value = (old, new)
            else:
                self.errors.append(f"'replace' is written 'replace OLD => NEW', got {rest!r}")
        elif self.kind == "not-run":
            match = re.fullmatch(r"\((.*)\)", rest)
            if match and match.group(1).strip():
                self.value = match.group(1).strip()
            else:
                self.errors.append("'not-run' needs a reason in parentheses, e.g. not-run (a synopsis)")
        else:
            self.errors.append(
                f"unknown snippet marker {self.body!r} (setup NAME, replace OLD => NEW, not-run (why))"
            )


def _values(markers: list[_Marker], kind: str) -> list[Any]:
    return [m.value for m in markers if m.kind == kind and not m.errors]


def _markers(text: str) -> Iterator[_Marker]:
    for match in _MARKER_LINE_RE.finditer(text):
        marker = _MARKER_RE.fullmatch(match.group())
        line = text.count("\n", 0, match.start()) + 1
        yield _Marker(match.start(), match.end(), line, marker.group("body") if marker else None)


class _FenceLexer(FencedCodeBlockLexer):
    """Sybil's lexer of fenced blocks with any info string (``language``: all of it); notes unclosed blocks."""

    def __init__(self) -> None:
        super().__init__(language=r"[^\n]*")

    def make_region(self, opening, document, closing):  # noqa: ANN001, ANN201 (Sybil's signature)
        region = super().make_region(opening, document, closing)
        if region is not None:
            region.lexemes["closed"] = closing is not None
        return region


def errors_found(example: Example) -> str:
    """Sybil evaluator of a block or marker that is wrong: the errors the parser found."""
    return example.parsed


def _not_run(example: Example) -> None:
    import pytest

    pytest.skip(f"{where(example)}: not run ({example.parsed})")


def check_bash(example: Example) -> str | None:
    """Sybil evaluator of a bash block: its errors, or None."""
    errors, _ = bash_errors(example.parsed, where(example))
    return "\n".join(errors) or None


class SnippetParser:
    """Sybil parser of a page: an example per python / bash block, its markers applied, and per bad marker.

    `run_python` evaluates the python blocks: in the test process it hands them to the page's process, in
    the page's process it runs them.
    """

    def __init__(self, run_python) -> None:  # noqa: ANN001 (a Sybil evaluator)
        self.run_python = run_python

    def __call__(self, document: Document) -> Iterator[Region]:
        text = document.text
        blocks: list[Region] = []
        for region in sorted(_FenceLexer()(document), key=lambda r: (r.start, -r.end)):
            if not blocks or region.start >= blocks[-1].end:  # a fence inside a block is its text
                blocks.append(region)
        markers = [m for m in _markers(text) if not any(b.start <= m.start < b.end for b in blocks)]
        pending: list[_Marker] = []
        last = 0
        for item in sorted([*markers, *blocks], key=lambda item: item.start):
            if pending and text[last : item.start].strip():
                pending[0].errors.append("snippet marker is not right before a code block (text follows it)")
                pending = []
            if isinstance(item, _Marker):
                if item.body is not None:
                    pending.append(item)
                last = item.end
            else:
                if self._block(document, item, pending):
                    yield item
                pending, last = [], item.end
        if pending:
            pending[0].errors.append("snippet marker at the end of the page, before no block")
        page = page_name(document.path)
        for marker in markers:
            if marker.errors:
                message = "\n".join(f"{page}:{marker.line}: {error}" for error in marker.errors)
                yield Region(marker.start, marker.end, message, errors_found)

    def _block(self, document: Document, region: Region, markers: list[_Marker]) -> bool:
        """Give `region` (a fenced block) what to evaluate and how; False if it is text, not a test."""
        info = region.lexemes["language"].split()
        tag = info[0].lower() if info else ""
        kind = "python" if tag in PYTHON_TAGS else "bash" if tag in BASH_TAGS else None
        setups, replaces = _values(markers, "setup"), _values(markers, "replace")
        not_run = (_values(markers, "not-run") or [None])[-1]
        errors = [] if region.lexemes["closed"] else ["code block is never closed"]
        code = region.lexemes["source"]
        if kind is None:
            if markers:
                errors.append("snippet marker before a block that is not python or bash")
        elif not_run is not None:
            if setups or replaces:
                errors.append("a not-run block takes no other marker")
        elif kind == "bash" and setups:
            errors.append("setup markers apply to python blocks only")
        else:
            unknown = [name for name in setups if name not in SETUPS]
            errors += [f"setup {name!r} is not a setup function of tests/doc_setups.py" for name in unknown]
            for old, new in replaces:
                if old not in code:
                    errors.append(f"replace marker: {old!r} does not occur in the block")
                code = code.replace(old, new)
        line = document.text.count("\n", 0, region.start) + 1
        if errors:
            region.parsed = "\n".join(f"{page_name(document.path)}:{line}: {e}" for e in errors)
            region.evaluator = errors_found
        elif kind is None:
            return False
        elif not_run is not None:
            region.parsed, region.evaluator = not_run, _not_run
        else:
            region.parsed = Lexeme(
                code, region.lexemes["source"].offset, region.lexemes["source"].line_offset
            )
            region.lexemes["setups"] = setups
            region.evaluator = self.run_python if kind == "python" else check_bash
        return True


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


def bash_errors(code: str, where: str) -> tuple[list[str], str]:
    """Errors of a bash block and what was checked ('args-checked', 'help-checked', 'ci-command')."""
    try:
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
# python: one fresh process per page
# ---------------------------------------------------------------------------------------------------
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


def _python_examples(document: Document) -> list[Example]:
    return [e for e in document.examples() if e.region.evaluator is run_in_page_process]


class PageProcess:
    """The process in which one page's python blocks run, in order, in one namespace (cwd ``base/work``).

    It asks the process (``python -m tests.doc_snippets PAGE``) for one block at a time, by the line of its
    fence; the process writes its output, tracebacks included, to ``base/work/snippets.log``.
    """

    def __init__(self, document: Document, base: Path) -> None:
        work = base / "work"
        work.mkdir(parents=True, exist_ok=True)
        env = snippet_env(work)
        self.hub = None
        examples = _python_examples(document)
        if any(getattr(SETUPS[n], "uses_hub", False) for e in examples for n in e.region.lexemes["setups"]):
            from tests.hub_server import HubServer, client_env

            self.hub = HubServer(base / "hub_store").start()
            env.update(client_env(self.hub, base / "hub_home"))
        self.log = work / "snippets.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.doc_snippets", document.path],
                cwd=work,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.deadline = time.monotonic() + RUN_TIMEOUT_S
        self.examples = examples
        self.done: dict[int, str | None] = {}  # line of a block that ran -> its failure, or None

    def run(self, example: Example) -> str | None:
        """Run `example`, after the page's earlier python blocks that have not run yet: the failure, or None."""
        for block in [e for e in self.examples if e.line <= example.line]:
            if block.line in self.done:
                continue
            failed = next((line for line, error in self.done.items() if error), None)
            if failed is None:
                self.done[block.line] = self._run(block)
            else:
                self.done[block.line] = (
                    f"{where(block)}: not run: the block at line {failed}, before it, failed"
                )
            if block.line != example.line and self.done[block.line]:
                return f"{where(example)}: not run: a block before it failed\n{self.done[block.line]}"
        return self.done[example.line]

    def _run(self, example: Example) -> str | None:
        start = self.log.stat().st_size
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is None:
            self.proc.stdin.write(f"{example.line}\n")
            self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, self.deadline - time.monotonic()))
        reply = self.proc.stdout.readline() if ready else ""
        if reply == "ok\n":
            return None
        output = self.log.read_bytes()[start:].decode(errors="replace")
        if not ready:
            self.proc.kill()
            failure = f"timed out: the page's python blocks took more than {RUN_TIMEOUT_S} s"
        elif not reply:
            failure = f"the page's process ended (exit {self.proc.wait()})"
        else:
            failure = "failed"
        return f"{where(example)}: {failure} (output tail below)\n{output[-6000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the process ends when no more blocks can come
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.hub is not None:
            self.hub.stop()


def run_in_page_process(example: Example) -> str | None:
    """Sybil evaluator of a python block in the test process: run it in the page's process."""
    page = example.namespace.get("page_process")
    if page is None:
        base = example.namespace["tmp_path_factory"].mktemp(Path(example.path).stem)
        page = example.namespace["page_process"] = PageProcess(example.document, base)
    return page.run(example)


def close_page(namespace: dict[str, Any]) -> None:
    """Sybil teardown of a page: stop its process (and its loopback Hub)."""
    page = namespace.pop("page_process", None)
    if page is not None:
        page.close()


#: The pages' Sybil: one example per python / bash / not-run block or bad marker.
SYBIL = Sybil(
    parsers=[SnippetParser(run_in_page_process)], fixtures=["tmp_path_factory"], teardown=close_page
)


@dataclass
class DocPages:
    """Pages as pytest collectors, one Sybil file each, named by their path under the test module.

    A ``DocPages`` object in a test module is collected by tests/conftest.py (``pytest_pycollect_makeitem``):
    the pages live outside tests/, and their tests run with the module's, e.g. while its Sphinx build runs.
    """

    pages: list[str]

    def collect(self, module: Any) -> list[Any]:
        from sybil.integration.pytest import SybilFile

        return [
            SybilFile.from_parent(
                module, path=ROOT / page, name=page, nodeid=f"{module.nodeid}::{page}", sybils=[SYBIL]
            )
            for page in self.pages
        ]


# ---------------------------------------------------------------------------------------------------
# The page's process
# ---------------------------------------------------------------------------------------------------
_START = time.perf_counter()


def _log(message: str) -> None:
    print(f"--- [{time.perf_counter() - _START:.1f} s] {message}", flush=True)


def run_here(example: Example) -> None:
    """Sybil evaluator of a python block in the page's process: its setups, then the block itself."""
    for name in example.region.lexemes["setups"]:
        _log(f"setup {name} for {where(example)}")
        SETUPS[name](example.namespace)
    _log(f"run {where(example)}")
    PythonEvaluator()(example)


def _serve(path: str) -> int:
    """Run the blocks of the page at `path` that the test process asks for (a fence line per stdin line).

    Replies ``ok`` or ``failed`` on stdout; everything else (the blocks' output, tracebacks) goes to stderr.
    """
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    document = Document.parse(path, SnippetParser(run_here))
    document.namespace["__name__"] = "__main__"
    examples = {example.line: example for example in document.examples()}
    for request in sys.stdin:
        example = examples[int(request)]
        try:
            example.evaluate()
            reply = "ok"
        except BaseException:  # report any failure with the block it came from
            traceback.print_exc()
            print(f"FAILED: {where(example)}", file=sys.stderr)
            reply = "failed"
        _log("done")
        sys.stderr.flush()
        replies.write(reply + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
