"""The settings reference, generated from the shipped YAML and the ``Settings`` dataclass.

In a page::

    .. dedupgraph-settings::

       merge-equal: merge-equal

writes one entry per key of ``dedupgraph.yaml`` (config key, environment
variable, Python argument, type, default, and the YAML comment above the key
as its description), preceded by a summary table.  Each content line
``setting: label`` adds a link to the section (``.. _label:``) that explains
that setting at length.

Nothing is written by hand, so nothing can drift: a key without a comment, a
``Settings`` field without a key, or a YAML default that differs from the
dataclass's default stops the build with an error (and ``tests/test_docs.py``
checks the same without running Sphinx).  Only public names are imported:
``dedupgraph.Settings``, and the YAML is found inside the installed package.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

YAML_NAME = "dedupgraph.yaml"
SECTION = "dedupgraph"


class SettingsDrift(ValueError):
    """The YAML and the ``Settings`` dataclass disagree, or a key is undocumented."""


@dataclass(frozen=True)
class Setting:
    """One key of the ``dedupgraph`` config section, as the reference shows it."""

    name: str  #: the key within the section, ``min-bytes``
    yaml_default: Any  #: the value ``dedupgraph.yaml`` ships
    description: str  #: the comment above the key in ``dedupgraph.yaml``
    argument: str | None  #: the ``Settings`` field / keyword argument, ``min_bytes``; None: config only
    type: str | None  #: the field's annotation
    python_default: Any  #: the field's default (the YAML value, parsed as the config is)

    @property
    def key(self) -> str:
        return f"{SECTION}.{self.name}"

    @property
    def environment(self) -> str:
        """The variable dask reads this key from: ``DASK_DEDUPGRAPH__MIN_BYTES``."""
        return "DASK_" + self.key.replace(".", "__").replace("-", "_").upper()

    @property
    def yaml_text(self) -> str:
        """The default as it is written in the YAML."""
        text = yaml.safe_dump(self.yaml_default, default_flow_style=True).strip()
        return text.removesuffix("...").strip()


def yaml_path() -> pathlib.Path:
    """The ``dedupgraph.yaml`` shipped inside the installed ``dedupgraph`` package."""
    import dedupgraph

    root = pathlib.Path(dedupgraph.__file__).resolve().parent
    found = sorted(root.rglob(YAML_NAME))
    if len(found) != 1:
        raise SettingsDrift(f"expected one {YAML_NAME} inside {root}, found {[str(p) for p in found]}")
    return found[0]


def settings_class() -> type:
    """``dedupgraph.Settings``, by its public name."""
    from dedupgraph import Settings

    return Settings


_KEY = re.compile(r"^  ([a-z][a-z0-9-]*):")


def yaml_comments(text: str) -> dict[str, str]:
    """The comment block directly above each key of the section, joined into one text.

    >>> yaml_comments("dedupgraph:\\n  # Pickled size.\\n  # An int.\\n  min-bytes: 1\\n  other: 2\\n")
    {'min-bytes': 'Pickled size. An int.', 'other': ''}

    A comment line indented deeper than the first one of its block continues
    a list item (``#   immutable: ...``): its line break is kept.
    """
    comments: dict[str, str] = {}
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped[1:])
            continue
        match = _KEY.match(line)
        if match:
            comments[match.group(1)] = _join(block)
        block = []
    return comments


def _join(lines: list[str]) -> str:
    """Comment lines as text: lines indented under a ``name:`` line are its list items."""
    out: list[str] = []
    for raw in lines:
        body = raw[1:] if raw.startswith(" ") else raw
        if out and body.startswith(" "):  # an item of the list above, or its continuation
            out.append("\n" + body)
        elif out:
            out.append(" " + body.strip())
        else:
            out.append(body.strip())
    return "".join(out).strip()


def settings_reference(yaml_text: str | None = None, settings_cls: type | None = None) -> list[Setting]:
    """Every key of the ``dedupgraph`` section, in the YAML's order; raises :class:`SettingsDrift`.

    ``yaml_text`` and ``settings_cls`` default to the installed package's
    (``dedupgraph.yaml``, ``dedupgraph.Settings``); tests pass others.
    """
    if settings_cls is None:
        settings_cls = settings_class()
    if yaml_text is None:
        yaml_text = yaml_path().read_text()
    loaded = (yaml.safe_load(yaml_text) or {}).get(SECTION)
    if not isinstance(loaded, Mapping) or not loaded:
        raise SettingsDrift(f"{YAML_NAME} has no {SECTION!r} section of settings")
    comments = yaml_comments(yaml_text)
    fields = {field.name: field for field in dataclasses.fields(settings_cls)}
    problems = []
    for field_name in fields:
        if field_name.replace("_", "-") not in loaded:
            problems.append(f"Settings.{field_name} has no key {field_name.replace('_', '-')!r} in {YAML_NAME}")
    parsed = _parsed_defaults(loaded, fields, settings_cls, problems)
    out = []
    for name, value in loaded.items():
        description = comments.get(name, "")
        if not description:
            problems.append(f"{SECTION}.{name} has no comment above it in {YAML_NAME}: its description")
        field = fields.get(name.replace("-", "_"))
        if field is None:
            out.append(Setting(name, value, description, None, None, None))
            continue
        if field.default is dataclasses.MISSING:
            problems.append(f"Settings.{field.name} has no default")
        elif name in parsed and parsed[name] != field.default:
            problems.append(
                f"{SECTION}.{name}: {YAML_NAME} ships {value!r} (parsed: {parsed[name]!r}) "
                f"but Settings.{field.name} defaults to {field.default!r}"
            )
        out.append(Setting(name, value, description, field.name, _type_text(field.type), field.default))
    if problems:
        raise SettingsDrift("the settings reference would drift: " + "; ".join(problems))
    return out


def _parsed_defaults(
    loaded: Mapping[str, Any], fields: Mapping[str, Any], settings_cls: type, problems: list[str]
) -> dict[str, Any]:
    """The YAML values of the fields, parsed exactly as the pass parses its config (``from_config``)."""
    import dask.config

    values = {name: value for name, value in loaded.items() if name.replace("-", "_") in fields}
    from_config = getattr(settings_cls, "from_config", None)
    if from_config is None:
        return {}
    try:
        # nothing from this process's config or environment: only the YAML's values
        with dask.config.set({SECTION: {}}):
            settings = from_config(**values)
    except ValueError as e:
        problems.append(f"{YAML_NAME}'s defaults are refused by Settings: {e}")
        return {}
    return {name: getattr(settings, name.replace("-", "_")) for name in values}


def _type_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))


# -- reST ------------------------------------------------------------------


def label(name: str) -> str:
    """The reference label of one setting's entry: ``setting-min-bytes``."""
    return f"setting-{name}"


def render(settings: list[Setting], details: Mapping[str, str] | None = None) -> list[str]:
    """The reference as reST lines: a summary table, then one ``confval`` entry per key."""
    details = dict(details or {})
    unknown = sorted(set(details) - {s.name for s in settings})
    if unknown:
        raise SettingsDrift(f"details given for settings that do not exist: {unknown}")
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 25 20",
        "",
        "   * - config key",
        "     - argument",
        "     - default",
    ]
    for s in settings:
        lines += [
            f"   * - :ref:`{s.key} <{label(s.name)}>`",
            f"     - ``{s.argument}``" if s.argument else "     - (config only)",
            f"     - ``{s.yaml_text}``",
        ]
    lines.append("")
    for s in settings:
        lines += [f".. _{label(s.name)}:", "", f".. confval:: {s.key}"]
        if s.type:
            lines.append(f"   :type: ``{s.type}``")
        lines += [f"   :default: ``{s.yaml_text}``", ""]
        lines += _description(s.description)
        lines.append("")
        lines.append(f"   - environment variable: ``{s.environment}``")
        if s.argument:
            lines.append(
                f"   - argument: ``{s.argument}=`` (``{s.argument}={s.python_default!r}`` by default)"
            )
        else:
            lines.append("   - no argument: a key of the configuration only")
        if s.name in details:
            lines.append(f"   - details: :ref:`{details[s.name]}`")
        lines.append("")
    return lines


def _description(text: str) -> list[str]:
    """The YAML comment as a paragraph, its indented ``name: text`` lines as a list."""
    head, *items = text.split("\n")
    lines = ["   " + _literal_names(head.strip()), ""]
    bullets: list[str] = []
    for item in items:
        item = item.strip()
        name, sep, rest = item.partition(":")
        if sep and re.fullmatch(r"[a-z][a-z-]*", name):
            bullets.append(f"   - ``{name}``: {rest.strip()}")
        elif bullets:
            bullets[-1] += " " + item
        else:
            lines[0] += " " + item
    if bullets:
        lines += [*bullets, ""]
    return lines


def _literal_names(text: str) -> str:
    """Environment variables and example values in a YAML comment, as literals."""
    return re.sub(r"\b(DASK_[A-Z_]+=\S+?|DASK_[A-Z_]+)(?=[),.;]|\s|$)", r"``\1``", text)


# -- Sphinx ------------------------------------------------------------------


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class SettingsDirective(SphinxDirective):
        has_content = True

        def run(self) -> list[Any]:
            details = {}
            for line in self.content:
                if line.strip():
                    name, _, target = line.partition(":")
                    details[name.strip()] = target.strip()
            try:
                path = yaml_path()
                # rebuilt when either source changes
                self.env.note_dependency(str(path))
                self.env.note_dependency(inspect.getsourcefile(settings_class()))
                lines = render(settings_reference(path.read_text()), details)
            except SettingsDrift as e:
                raise self.error(str(e)) from e
            container = nodes.container()
            nested_parse_with_titles(self.state, StringList(lines, source=str(path)), container)
            return container.children

    app.add_directive("dedupgraph-settings", SettingsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
