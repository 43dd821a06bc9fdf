"""Every Python snippet the documentation shows runs as written, copied into a fresh interpreter.

The rule, for every page under ``docs/`` and for ``README.md``:

- **What runs.** The ``.. code-block:: python``, ``.. testcode::`` and
  ``.. doctest::`` blocks of a page (```` ```python ```` fences in the
  README), and the ``>>>`` examples of any other code block (a session shown
  as ``text``).  Shell, YAML and text without ``>>>`` are not Python.
- **How.** Each page in a new interpreter, its snippets in page order in one
  namespace, with nothing the page does not show: no ``testsetup`` block, no
  ``doctest_global_setup`` of ``docs/conf.py``.  So every import a reader
  needs is in a shown snippet.
- **Outputs.** Those of ``.. doctest::`` blocks are compared (with
  ``ELLIPSIS``), as the Sphinx doctest builder compares them.  Outputs shown
  in other blocks illustrate: their code runs, their text is not compared
  (pickled sizes vary with where a class is defined).
- **Not run.** Only a snippet whose first line is a comment ``# Needs ...``
  saying what it needs that a test cannot have (a cluster at some address, a
  gateway): the page tells the reader, in the snippet.  A ``# doctest: +SKIP``
  example must say the same on its line.

``make docs`` still builds the pages and runs their doctest blocks with
Sphinx; this test is the reader's view of the same pages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.rst")), ROOT / "README.md"]
PYTHON = ("python", "python3", "py", "pycon")
SKIP_MARK = "# Needs "


@dataclass(frozen=True)
class Snippet:
    line: int  #: where it starts in the page
    kind: str  #: "exec" (Python source), "doctest" (compared), "session" (>>> examples, output not compared)
    source: str
    skipped: str | None = None  #: what it needs, when not run


def _snippet(line: int, kind: str, source: str) -> Snippet:
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    if kind != "exec":
        first = first.removeprefix(">>>").strip()
    skipped = first.removeprefix("#").strip() if first.startswith(SKIP_MARK) else None
    return Snippet(line, kind, source, skipped)


def rst_snippets(text: str) -> list[Snippet]:
    """The Python snippets an ``.rst`` page shows, in order."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)\.\. (code-block|code|sourcecode|doctest|testcode|testsetup|testcleanup|testoutput)::\s*(\S*)", lines[i])
        if not match:
            i += 1
            continue
        indent, directive, argument = len(match.group(1)), match.group(2), match.group(3)
        start, i = i + 1, i + 1
        options = set()
        while i < len(lines) and re.match(r"^\s+:[\w-]+:", lines[i]):
            options.add(lines[i].strip().split(":")[1])
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        source = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        if directive in ("testsetup", "testcleanup", "testoutput") or "hide" in options:
            continue  # not shown (testoutput: compared by Sphinx, shown as output)
        if directive == "doctest":
            found.append(_snippet(start, "doctest", source))
        elif directive == "testcode" or argument in PYTHON:
            found.append(_snippet(start, "session" if source.lstrip().startswith(">>>") else "exec", source))
        elif ">>>" in source:
            found.append(_snippet(start, "session", source))
    return found


def markdown_snippets(text: str) -> list[Snippet]:
    """The Python snippets of a Markdown page: ```python fences, and ``>>>`` sessions in any fence."""
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        line = text[: match.start()].count("\n") + 2
        language, source = match.group(1), match.group(2)
        if language in PYTHON:
            found.append(_snippet(line, "session" if source.lstrip().startswith(">>>") else "exec", source))
        elif ">>>" in source:
            found.append(_snippet(line, "session", source))
    return found


def snippets(page: Path) -> list[Snippet]:
    text = page.read_text()
    return markdown_snippets(text) if page.suffix == ".md" else rst_snippets(text)


# Runs in the new interpreter: the page's snippets, one namespace, one JSON line per snippet.
RUNNER = r"""
import doctest, json, sys, traceback

class Illustration(doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        return True  # shown output of a session: illustrative; exceptions still fail

page, snippets = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
compared = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
shown = doctest.DocTestRunner(checker=Illustration(), optionflags=doctest.ELLIPSIS)
parser = doctest.DocTestParser()
for snippet in snippets:
    if snippet["skipped"]:
        continue
    name = f"{page}:{snippet['line']}"
    try:
        if snippet["kind"] == "exec":
            exec(compile(snippet["source"], name, "exec"), namespace)
            error = None
        else:
            runner = compared if snippet["kind"] == "doctest" else shown
            test = parser.get_doctest(snippet["source"], namespace, name, page, snippet["line"])
            report = []
            failed = runner.run(test, out=report.append, clear_globs=False).failed
            namespace.update(test.globs)  # a DocTest runs in a copy of the namespace it is given
            error = "".join(report)[-3000:] if failed else None
    except BaseException:
        error = traceback.format_exc()[-3000:]
    print(json.dumps({"line": snippet["line"], "error": error}), flush=True)
"""


def run_page(page: Path, found: list[Snippet]) -> dict[int, str | None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "DEDUPGRAPH_"))}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([str(page.relative_to(ROOT)), [asdict(s) for s in found]]),
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"line"')]
    return {r["line"]: r["error"] for r in results}


def _reader_finds_the_snippets() -> None:
    """The rule above, on a made-up page: what runs, what does not."""
    page = textwrap.dedent(
        """
        .. code-block:: python

           import dask

        .. testsetup::

           import hidden

        .. doctest::

           >>> 1 + 1
           2

        .. code-block:: text

           >>> print("shown")
           illustrative

        .. code-block:: bash

           echo not python

        .. code-block:: python

           # Needs a scheduler at tcp://scheduler:8786.
           client = Client("tcp://scheduler:8786")
        """
    )
    found = rst_snippets(page)
    assert [(s.line, s.kind, s.skipped) for s in found] == [
        (2, "exec", None),
        (10, "doctest", None),
        (15, "session", None),
        (24, "exec", "Needs a scheduler at tcp://scheduler:8786."),
    ]
    assert found[0].source == "import dask\n"
    assert [(s.kind, s.source) for s in markdown_snippets("x\n```python\nimport dedupgraph\n```\n```\nls\n```\n")] == [
        ("exec", "import dedupgraph\n")
    ]


def test_every_snippet_of_every_page_runs_as_written():
    _reader_finds_the_snippets()
    failed: dict[str, str] = {}
    for page in PAGES:
        found = snippets(page)
        for s in found:
            if s.skipped is not None:
                assert len(s.skipped) > len("Needs ") + 10, f"{page.name}:{s.line}: say what it needs"
            for line in s.source.splitlines():
                if "doctest: +SKIP" in line:
                    assert SKIP_MARK.strip() in line, f"{page.name}:{s.line}: a +SKIP without '# Needs ...': {line}"
        ran = [s for s in found if s.skipped is None]
        if not ran:
            continue
        errors = run_page(page, found)
        assert sorted(errors) == sorted(s.line for s in ran), f"{page.name}: the runner stopped early"
        failed.update({f"{page.name}:{line}": error for line, error in errors.items() if error})
    assert failed == {}, "\n\n".join(f"{where}\n{error}" for where, error in failed.items())


def test_the_shown_info_output_is_what_the_command_prints():
    """docs/diagnostics.rst shows ``DASK_DEDUPGRAPH__ENABLED=True dedupgraph info``."""
    page = (DOCS / "diagnostics.rst").read_text()
    block = page.split("   $ DASK_DEDUPGRAPH__ENABLED=True dedupgraph info\n", 1)[1].split("\n\n", 1)[0]
    shown = [line[3:] for line in block.splitlines()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "DEDUPGRAPH_"))}
    env["DASK_DEDUPGRAPH__ENABLED"] = "True"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dedupgraph"), "info"], env=env, capture_output=True, text=True, timeout=120
    )
    printed = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    # the versions and the interpreter's path are the machine's: their shape only
    version_line = r"dask \d[\w.]*, distributed \d[\w.]*, Python \d[\w.]* \(/\S+/bin/python[\d.]*\)"
    assert re.fullmatch(version_line, shown[1]) and re.fullmatch(version_line, printed[1])
    assert shown[:1] + shown[2:] == printed[:1] + printed[2:]
