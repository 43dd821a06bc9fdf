"""The documentation cannot drift from the code: checked here without running Sphinx.

The settings reference (docs/settings.rst) is generated at build time by
docs/_ext/settings_reference.py from ``dedupgraph.yaml`` and the ``Settings``
dataclass; these tests read both independently and compare.  ``make docs``
builds the pages with warnings as errors and runs their examples.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

import dedupgraph

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load_generator():
    name = "_dedupgraph_docs_settings_reference"
    spec = importlib.util.spec_from_file_location(name, DOCS / "_ext" / "settings_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
YAML_TEXT = gen.yaml_path().read_text()
SHIPPED = yaml.safe_load(YAML_TEXT)["dedupgraph"]
FIELDS = {f.name: f for f in dataclasses.fields(dedupgraph.Settings)}


def test_the_yaml_read_is_the_one_dedupgraph_registers():
    import dask.config

    assert gen.yaml_path().is_relative_to(Path(dedupgraph.__file__).resolve().parent)
    assert any(defaults.get("dedupgraph") == SHIPPED for defaults in dask.config.defaults)


def test_one_entry_per_yaml_key_in_the_yamls_order():
    assert [s.name for s in gen.settings_reference()] == list(SHIPPED)


def test_every_settings_field_is_documented_with_its_argument_type_and_default():
    by_argument = {s.argument: s for s in gen.settings_reference() if s.argument}
    assert set(by_argument) == set(FIELDS)
    for name, field in FIELDS.items():
        entry = by_argument[name]
        assert entry.name == name.replace("_", "-")
        assert entry.python_default == field.default
        assert entry.type == (field.type if isinstance(field.type, str) else field.type.__name__)
        assert entry.yaml_default == SHIPPED[entry.name]


def test_the_yaml_defaults_are_the_dataclass_defaults():
    # what the generator checks, restated: the shipped YAML, parsed as config, gives Settings()
    overrides = {name: value for name, value in SHIPPED.items() if name.replace("-", "_") in FIELDS}
    import dask.config

    with dask.config.set({"dedupgraph": {}}):
        assert dedupgraph.Settings.from_config(**overrides) == dedupgraph.Settings()


def _comment_text(key: str) -> str:
    """The comment lines right above ``key`` in the YAML, whitespace-normalized."""
    lines = YAML_TEXT.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}:"))
    block = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        block.insert(0, line.strip().lstrip("#"))
    return " ".join(" ".join(block).split())


def test_descriptions_are_the_yaml_comments():
    for entry in gen.settings_reference():
        assert entry.description, entry.name
        assert " ".join(entry.description.split()) == _comment_text(entry.name)


def test_the_rendered_reference_names_every_key_variable_argument_and_default():
    text = "\n".join(gen.render(gen.settings_reference()))
    for entry in gen.settings_reference():
        assert f".. confval:: dedupgraph.{entry.name}\n" in text
        env = "DASK_DEDUPGRAPH__" + entry.name.replace("-", "_").upper()
        assert f"``{env}``" in text
        assert f"   :default: ``{entry.yaml_text}``" in text
        if entry.argument:
            assert f"``{entry.argument}=``" in text
    assert "DASK_DEDUPGRAPH__MIN_BYTES" in text and "``auto``" in text and "``4 KiB``" in text


def test_the_settings_page_is_generated_not_written():
    page = (DOCS / "settings.rst").read_text()
    assert ".. dedupgraph-settings::" in page
    assert ".. confval::" not in page  # every entry comes from the generator
    assert "settings_reference" in (DOCS / "conf.py").read_text()
    # the links to longer explanations name real settings (render() refuses others)
    block = page.split(".. dedupgraph-settings::", 1)[1]
    named = {line.split(":")[0].strip() for line in block.splitlines() if line.startswith("   ") and ":" in line}
    assert named <= set(SHIPPED)
    with pytest.raises(gen.SettingsDrift, match="no-such-setting"):
        gen.render(gen.settings_reference(), {"no-such-setting": "x"})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.replace("  min-count: 2\n", ""), "Settings.min_count has no key 'min-count'"),
        (lambda t: t.replace("floor-bytes: 4 KiB", "floor-bytes: 8 KiB"), "defaults to 4096"),
        (lambda t: t + "  brand-new: 1\n", "dedupgraph.brand-new has no comment"),
        (lambda t: t.replace("min-count: 2", "min-count: -1"), "refused by Settings"),
    ],
    ids=["field-without-key", "different-default", "undescribed-key", "invalid-default"],
)
def test_drift_stops_the_build(change, message):
    with pytest.raises(gen.SettingsDrift, match=message):
        gen.settings_reference(change(YAML_TEXT))


def test_a_new_settings_field_without_a_key_stops_the_build():
    @dataclasses.dataclass(frozen=True)
    class Wider(dedupgraph.Settings):
        extra_knob: int = 1

    with pytest.raises(gen.SettingsDrift, match="Settings.extra_knob has no key 'extra-knob'"):
        gen.settings_reference(YAML_TEXT, Wider)


def test_the_generators_own_examples():
    assert doctest.testmod(gen, optionflags=doctest.ELLIPSIS).failed == 0


def test_the_api_page_documents_exactly_the_public_names():
    page = (DOCS / "api.rst").read_text()
    documented = re.findall(r"^\.\. (?:auto(?:function|class|data)|py:data):: dedupgraph\.(\w+)$", page, re.M)
    assert sorted(documented) == sorted(dedupgraph.__all__)


def test_every_example_in_the_pages_runs_or_says_it_does_not():
    # sphinx.ext.doctest runs only the doctest directives (conf.py); a bare ">>>"
    # block would be shown but never run: it must be a doctest, or a code-block on purpose
    for page in sorted(DOCS.glob("*.rst")):
        directive, indent = None, -1
        for number, line in enumerate(page.read_text().splitlines(), 1):
            stripped = line.lstrip()
            depth = len(line) - len(stripped)
            if stripped and directive and depth <= indent:
                directive = None
            found = re.match(r"\.\. ([\w-]+)::", stripped)
            if found:
                directive, indent = found.group(1), depth
            elif stripped.startswith(">>>"):
                assert directive in ("doctest", "code-block", "testcode"), f"{page.name}:{number}: {line}"


README = (ROOT / "README.md").read_text()


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 300
    assert "DASK_DEDUPGRAPH__ENABLED=True" in README
    assert "dedupgraph.enable()" in README
    assert "docs/settings.rst" in README  # where each setting is explained


def test_the_readme_says_how_to_install_before_anything_else():
    sections = re.findall(r"^## (.+)$", README, re.M)
    assert sections[0] == "Install"
    install = README.split("## Install\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in install.split("```")[1].splitlines() if line.strip()]
    assert commands == ["pip install dedupgraph", "pip install ."]


def test_the_readmes_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in ci
    assert "```\nmake test\n```" in README


def test_the_readmes_relative_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert relative, "the README links into the docs"
    for link in relative:
        assert (ROOT / link).exists(), link
    linked = {Path(link).name for link in relative if link.startswith("docs/")}
    assert linked >= {p.name for p in DOCS.glob("*.rst")} - {"index.rst"}  # every page, from the front door
