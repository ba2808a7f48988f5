"""The documentation: the Sphinx site builds with warnings as errors, and every code snippet works.

Each code block of a page (README.md and docs/*.md) is checked by a test named after the page and the block's
line (Sybil, collected from `pages` below); see tests/doc_snippets.py for the rules (python runs, bash is
checked, anything else needs a marker).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from sybil import Example
from sybil.example import SybilFailure

from tests.doc_setups import SETUPS
from tests.doc_snippets import ROOT, SYBIL, DocPages, check_bash, close_page, errors_found

PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SITE_PAGES = ["index", "quickstart", "concepts", "pipeline", "recipes", "data", "synthetic", "distillation"]
SITE_PAGES += ["evaluation", "results", "auditing", "hub", "performance", "architecture", "api", "faq"]


@pytest.fixture(scope="module", autouse=True)
def sphinx_build(request, tmp_path_factory):
    """The site build, started first and in the background (it takes a while), when the site test is selected.

    It starts with the first test of this file; the page tests run meanwhile, and
    test_docs_site_builds_without_warnings, last in this file, waits for it.
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


def test_every_setup_function_is_used_by_a_page():
    used = {
        name
        for page in PAGES
        for e in SYBIL.parse(ROOT / page)
        for name in e.region.lexemes.get("setups", ())
    }
    assert set(SETUPS) - used == set(), f"setup functions no page uses: {sorted(set(SETUPS) - used)}"


def test_readme_test_command_is_the_ci_command():
    examples = list(SYBIL.parse(ROOT / "README.md"))
    assert not [e.parsed for e in examples if e.region.evaluator is errors_found]
    ci = " ".join(
        next(ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "python -m pytest" in ln).split()
    )
    bash = [" ".join(e.parsed.split()) for e in examples if e.region.evaluator is check_bash]
    assert [command for command in bash if "python -m pytest" in command] == [ci]


# ---------------------------------------------------------------------------------------------------
# The checker itself must be able to fail
# ---------------------------------------------------------------------------------------------------
def _check(markdown: str, tmp_path_factory, skip: Callable[[Example], bool] = lambda e: False):
    """Evaluate the examples of a page holding `markdown` as the page tests do: (failures, skip reasons)."""
    page = tmp_path_factory.mktemp("docs") / "fake.md"
    page.write_text(markdown)
    document = SYBIL.parse(page)
    document.namespace["tmp_path_factory"] = tmp_path_factory
    failures, skips = [], []
    try:
        for example in document.examples():
            try:
                if not skip(example):
                    example.evaluate()
            except SybilFailure as e:
                failures.append(e.result)
            except pytest.skip.Exception as e:
                skips.append(e.msg)
    finally:
        close_page(document.namespace)
    return failures, skips


def _errors(markdown: str, tmp_path_factory) -> list[str]:
    return _check(markdown, tmp_path_factory)[0]


def test_checker_rejects_unmarked_unrunnable_blocks(tmp_path_factory):
    errors = _errors("# Fake\n\nText.\n\n```bash\nmake deploy --everything\n```\n", tmp_path_factory)
    assert len(errors) == 1 and "fake.md:5" in errors[0] and "not a command" in errors[0]
    errors = _errors("```bash\npython3 -m venv .venv && pip install -e .\n```\n", tmp_path_factory)
    assert errors and "set-up only" in errors[0]
    errors = _errors(
        "```bash\naccelerate launch examples/run_dpkd.py --no_such_flag 3\n```\n", tmp_path_factory
    )
    assert errors and "run_dpkd.py --no_such_flag 3" in errors[0]
    errors = _errors(
        "```bash\naccelerate launch examples/run_dpkd.py --config recipes/missing.yaml\n```\n",
        tmp_path_factory,
    )
    assert errors and "no such recipe" in errors[0]
    errors = _errors("```bash\npython benchmarks/dp_overhead.py --no_such_flag\n```\n", tmp_path_factory)
    assert errors and "no flag --no_such_flag" in errors[0]
    errors = _errors("```bash\npython -m pytest -x\n```\n", tmp_path_factory)
    assert errors and "exactly .ci/run's" in errors[0]


def test_checker_rejects_bad_markers_and_failing_python(tmp_path_factory):
    def error(markdown: str) -> str:
        return _errors(markdown, tmp_path_factory)[0]

    assert "reason" in error("<!-- snippet: not-run () -->\n```bash\nrm -rf /\n```\n")
    assert "does not occur" in error("<!-- snippet: replace 9 => 1 -->\n```python\nx = 1\n```\n")
    assert "not a setup function" in error("<!-- snippet: setup nope -->\n```python\nx = 1\n```\n")
    assert "not right before" in error("<!-- snippet: not-run (x) -->\ntext\n```bash\nls\n```\n")
    assert "unknown snippet marker" in error("<!-- snippet: skip -->\n```python\nx = 1\n```\n")
    assert "malformed" in error("<!-- snippet: not-run (x)\n```python\nx = 1\n```\n")
    assert "before no block" in error("```python\nx = 1\n```\n\n<!-- snippet: not-run (x) -->\n")
    assert "never closed" in error("```python\nx = 1\n")
    assert "not python or bash" in error("<!-- snippet: not-run (x) -->\n```yaml\nkey: 1\n```\n")
    assert "no other marker" in error(
        "<!-- snippet: not-run (x) -->\n<!-- snippet: setup audit_inputs -->\n```python\nx = 1\n```\n"
    )
    assert "python blocks only" in error("<!-- snippet: setup audit_inputs -->\n```bash\nls\n```\n")
    # Python blocks of a page share one namespace, in order; a failing one fails with its line, and the
    # blocks after it are not run.
    ok = "```python\nx = 41\n```\n\ntext\n\n<!-- snippet: replace x == 0 => x == 41 -->\n```python\nassert x == 0\n```\n"
    assert _errors(ok, tmp_path_factory) == []
    failing = "```python\nx = 1\n```\n\n```python\nassert x == 2, 'wrong'\n```\n\n```python\ny = x\n```\n"
    errors = _errors(failing, tmp_path_factory)
    assert len(errors) == 2 and "fake.md:5" in errors[0] and "AssertionError: wrong" in errors[0]
    assert "fake.md:9: not run: the block at line 5, before it, failed" in errors[1]
    # A block tested alone (the others deselected) runs after the page's earlier blocks.
    assert _check(ok, tmp_path_factory, skip=lambda e: e.line == 1) == ([], [])
    failures, _ = _check(failing, tmp_path_factory, skip=lambda e: e.line != 9)
    assert len(failures) == 1 and "fake.md:9: not run: a block before it failed" in failures[0]
    assert "AssertionError: wrong" in failures[0]
    # Untagged blocks and other languages are text; not-run with a reason is a skipped test.
    text = "```\nA -> B\n```\n\n```yaml\nkey: 1\n```\n\n<!-- snippet: not-run (a synopsis) -->\n```bash\nx [--y]\n```\n"
    assert _check(text, tmp_path_factory) == ([], ["fake.md:10: not run (a synopsis)"])


def test_every_page_is_collected(request):
    """tests/conftest.py turns `pages` below into one Sybil file per page, with a test per checked block."""
    files = request.node.parent.ihook.pytest_pycollect_makeitem(
        collector=request.node.parent, name="pages", obj=pages
    )
    assert [f.name for f in files] == PAGES
    assert [f.nodeid for f in files] == [f"tests/test_docs.py::{page}" for page in PAGES]
    assert len(list(files[0].collect())) == len(list(SYBIL.parse(ROOT / PAGES[0])))


#: The page tests: a test per python / bash block (or bad marker) of each page, e.g.
#: ``tests/test_docs.py::docs/hub.md::line:17,column:1``; they run while the site builds.
pages = DocPages(PAGES)


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
