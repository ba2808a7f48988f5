"""The documentation: the Sphinx site builds with warnings as errors, and every code snippet works.

Each page's snippets (README.md and docs/*.md) are checked by one test named after the page; see
tests/doc_snippets.py for the rules (python runs, bash is checked, anything else needs a marker).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_setups import SETUPS
from tests.doc_snippets import ROOT, check_page, parse_markdown, snippet_env

PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SITE_PAGES = ["index", "quickstart", "concepts", "pipeline", "recipes", "data", "synthetic", "distillation"]
SITE_PAGES += ["evaluation", "results", "auditing", "hub", "performance", "architecture", "api", "faq"]


@pytest.fixture(scope="module", autouse=True)
def sphinx_build(request, tmp_path_factory):
    """The site build, started first and in the background (it takes a while), when the site test is selected.

    The page tests run meanwhile; test_docs_site_builds_without_warnings, last in this file, waits for it.
    """
    selected = any(item.name == "test_docs_site_builds_without_warnings" for item in request.session.items)
    if not selected:
        yield None
        return
    out = tmp_path_factory.mktemp("site") / "html"
    log = out.parent / "sphinx.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield proc, out, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def loopback_hub(tmp_path):
    """Starts a loopback Hub on demand; yields the starter, stops the server at teardown."""
    from tests.hub_server import HubServer, client_env

    servers: list[HubServer] = []

    def start() -> dict[str, str]:
        server = HubServer(tmp_path / "hub_store").start()
        servers.append(server)
        return client_env(server, tmp_path / "hub_home")

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets(page, tmp_path, loopback_hub):
    text = (ROOT / page).read_text(encoding="utf-8")
    work = tmp_path / "work"
    result = check_page(text, page, work, env=snippet_env(work), start_hub=loopback_hub)
    if result.errors:
        pytest.fail("\n\n".join(result.errors), pytrace=False)


def test_readme_test_command_is_the_ci_command():
    blocks, errors = parse_markdown((ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    assert not errors
    ci = " ".join(
        next(ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "python -m pytest" in ln).split()
    )
    commands = [" ".join(b.code.split()) for b in blocks if b.kind == "bash" and "python -m pytest" in b.code]
    assert commands == [ci]


# ---------------------------------------------------------------------------------------------------
# The runner itself must be able to fail
# ---------------------------------------------------------------------------------------------------
def _errors(markdown: str, tmp_path: Path) -> list[str]:
    return check_page(markdown, "docs/fake.md", tmp_path / "work", env=snippet_env(tmp_path)).errors


def test_runner_rejects_unmarked_unrunnable_blocks(tmp_path):
    errors = _errors("# Fake\n\nText.\n\n```bash\nmake deploy --everything\n```\n", tmp_path)
    assert len(errors) == 1 and "docs/fake.md:5" in errors[0] and "not a command" in errors[0]
    errors = _errors("```bash\npython3 -m venv .venv && pip install -e .\n```\n", tmp_path)
    assert errors and "set-up only" in errors[0]
    errors = _errors("```bash\naccelerate launch examples/run_dpkd.py --no_such_flag 3\n```\n", tmp_path)
    assert errors and "run_dpkd.py --no_such_flag 3" in errors[0]
    errors = _errors(
        "```bash\naccelerate launch examples/run_dpkd.py --config recipes/missing.yaml\n```\n", tmp_path
    )
    assert errors and "no such recipe" in errors[0]
    errors = _errors("```bash\npython benchmarks/dp_overhead.py --no_such_flag\n```\n", tmp_path)
    assert errors and "no flag --no_such_flag" in errors[0]
    errors = _errors("```bash\npython -m pytest -x\n```\n", tmp_path)
    assert errors and "exactly .ci/run's" in errors[0]


def test_runner_rejects_bad_markers_and_failing_python(tmp_path):
    assert "reason" in _errors("<!-- snippet: not-run () -->\n```bash\nrm -rf /\n```\n", tmp_path)[0]
    assert (
        "does not occur" in _errors("<!-- snippet: replace 9 => 1 -->\n```python\nx = 1\n```\n", tmp_path)[0]
    )
    assert (
        "not a setup function"
        in _errors("<!-- snippet: setup nope -->\n```python\nx = 1\n```\n", tmp_path)[0]
    )
    assert (
        "not right before" in _errors("<!-- snippet: not-run (x) -->\ntext\n```bash\nls\n```\n", tmp_path)[0]
    )
    assert "unknown snippet marker" in _errors("<!-- snippet: skip -->\n```python\nx = 1\n```\n", tmp_path)[0]
    # Python blocks of a page share one namespace, in order; a failing one fails the page with its line.
    ok = "```python\nx = 41\n```\n\ntext\n\n<!-- snippet: replace x == 0 => x == 41 -->\n```python\nassert x == 0\n```\n"
    assert _errors(ok, tmp_path) == []
    errors = _errors("```python\nx = 1\n```\n\n```python\nassert x == 2, 'wrong'\n```\n", tmp_path)
    assert len(errors) == 1 and "docs/fake.md:5" in errors[0] and "AssertionError: wrong" in errors[0]
    # Untagged blocks and other languages are text; not-run with a reason is accepted.
    text = "```\nA -> B\n```\n\n```yaml\nkey: 1\n```\n\n<!-- snippet: not-run (a synopsis) -->\n```bash\nx [--y]\n```\n"
    result = check_page(text, "docs/fake.md", tmp_path / "w2", env=snippet_env(tmp_path))
    assert result.errors == [] and result.statuses == [("docs/fake.md:10", "not-run (a synopsis)")]


def test_every_setup_function_is_used_by_a_page():
    used = set()
    for page in PAGES:
        blocks, _ = parse_markdown((ROOT / page).read_text(encoding="utf-8"), page)
        used |= {name for b in blocks for name in b.setups}
    assert set(SETUPS) - used == set(), f"setup functions no page uses: {sorted(set(SETUPS) - used)}"


# Last: the page tests above ran while the site was building.
def test_docs_site_builds_without_warnings(sphinx_build):
    """`python -m sphinx -W --keep-going -b html docs <tmp>/html` (started by the `sphinx_build` fixture)."""
    proc, out, log = sphinx_build
    try:
        status = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("the sphinx build took more than 10 minutes", pytrace=False)
    if status != 0:
        pytest.fail(f"sphinx failed (exit {status}):\n{log.read_text()[-6000:]}", pytrace=False)
    for page in SITE_PAGES:
        assert (out / f"{page}.html").is_file(), f"{page}.html was not built (missing from the toctree?)"
    api = (out / "api.html").read_text(encoding="utf-8")
    for name in ("DPConfig", "DPTrainer", "DistillationConfig", "DistillationTrainer"):
        assert re.search(rf'<dt class="sig sig-object py" id="hf_dpkd\.{name}">', api), (
            f"{name} not documented"
        )
    for entry in (
        "hf_dpkd.DPTrainer.privacy_report",
        "hf_dpkd.DPConfig.target_epsilon",
        "hf_dpkd.DistillationConfig.alpha_kd",
        "hf_dpkd.privacy.accounting.PrivacyLedger",
        "hf_dpkd.evaluation.perplexity",
        "hf_dpkd.hub.push_folder_to_hub",
        "hf_dpkd.audit.run_membership_inference",
        "hf_dpkd.data.demo.make_demo_dataset",
    ):
        assert f'id="{entry}"' in api, f"{entry} is missing from api.html"
    # Inherited TrainingArguments fields are not repeated in the reference.
    assert 'id="hf_dpkd.DPConfig.learning_rate"' not in api
    # Every page of the toctree is reachable from the index.
    index = (out / "index.html").read_text(encoding="utf-8")
    for page in SITE_PAGES[1:]:
        assert f'href="{page}.html"' in index, f"{page} is not linked from the index"
