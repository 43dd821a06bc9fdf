"""What is duplicated in a graph, and what the pass would do about it, without changing anything.

>>> import dask, dedupgraph
>>> table = bytes(range(256)) * 400  # 100 KiB, carried by each task
>>> report = dedupgraph.inspect([dask.delayed(bytes.count)(table, i) for i in range(3)])
>>> print(report)
object  size        tasks  where                saves       hoisted
bytes   100.01 kiB      3  positional argument  200.02 kiB  yes
1 object listed, carried by 3 of 3 tasks; 200.02 kiB of task payload duplicated.
With min-bytes auto (from floor-bytes 4.00 kiB, where the saving pays for the added dependencies), min-count 2: would hoist 1 object (100.01 kiB, bytes) shared by 3 tasks; 200.02 kiB of task payload would be saved.

In Jupyter the report renders as an HTML table; ``report.to_pandas()`` has
one row per content with every column.  Rows list each content of at least
the smallest size hoisted (``floor-bytes``, or a pinned ``min-bytes``), and
each smaller one (from 1 KiB) that several tasks carry.  A row not hoisted
says why: below that size, saving below cost (what it would save does not
clearly pay for the dependencies it would add), single use, below
``min-count``, excluded, unpicklable.
An object carried by tasks of DataFrames or array-expr arrays is marked
``yes*``: no optimizer hook reaches those, so ``enable()`` alone leaves them
as they are; the scheduler route (distributed) or ``dedupgraph.deduplicate()``
hoists them.
"""

from __future__ import annotations

import functools
import html
import types
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from dask.base import unpack_collections
from dask.utils import format_bytes

from dedupgraph.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from dask._task_spec import GraphNode

    from dedupgraph.core.candidates import Candidates
    from dedupgraph.core.plan import Apart, Plan, Summary


@dataclass(frozen=True)
class Row:
    """One distinct content (or, when it cannot be pickled, one object) that tasks carry."""

    label: str  #: the name in its hoisted key: ``Mapper``, ``Mapper-method``, ``partial-apply``
    type: str  #: fully qualified type name
    nbytes: int | None  #: pickled size; None when it cannot be pickled
    tasks: int  #: tasks that carry it
    where: tuple[str, ...]  #: where in those tasks it sits
    saved_bytes: int | None  #: task payload hoisting it saves: every copy but one
    hoisted: bool  #: whether the settings hoist it
    reason: str | None  #: why not: below min-bytes or floor-bytes, saving below cost, single use, below min-count, unpicklable, excluded
    key: str | None  #: the key it gets when hoisted
    copies: int = 1  #: distinct objects with this content that ``merge-equal`` keeps apart (one row each)
    #: the route it takes to hoist it, where ``enable()`` alone does not: the tasks of
    #: DataFrames and array-expr arrays (:data:`NEEDS_SCHEDULER_ROUTE`); None for the others
    needs: str | None = None


#: what hoists an object that DataFrame or array-expr tasks carry (they have no optimizer hook)
NEEDS_SCHEDULER_ROUTE = "the scheduler route (distributed) or dedupgraph.deduplicate()"


@dataclass(frozen=True)
class Report:
    """The duplicated payload of one graph: prints as a table, renders as HTML, converts to pandas."""

    rows: tuple[Row, ...]  #: largest saving first
    tasks: int  #: tasks in the graph
    carrying_tasks: int  #: tasks that carry at least one row's object
    settings: Settings
    summary: Summary  #: what the settings hoist, in the numbers of the pass's INFO line
    apart: tuple[Apart, ...] = ()  #: equal copies kept apart by ``merge-equal``, and what merging would save

    @property
    def duplicated_bytes(self) -> int:
        """Task payload repeated across tasks: what hoisting every row would save."""
        return sum(r.saved_bytes or 0 for r in self.rows)

    def totals(self) -> str:
        """The lines under the table."""
        s = self.settings
        verdict = self.summary.message(would=True) if self.summary.objects else "would hoist nothing"
        settings = f"With {s.hoisting_rule()}: {verdict}."
        settings += "".join(f"\nAlso {kept.message(s.merge_equal)}." for kept in self.apart)
        if any(r.hoisted and r.needs for r in self.rows):
            settings += (
                f"\n* in DataFrame or array-expr tasks: needs {NEEDS_SCHEDULER_ROUTE}; "
                "enable() alone covers arrays, delayed values and bags."
            )
        if not self.rows:
            return f"Nothing listed in {self.tasks} tasks: nothing duplicated.\n{settings}"
        n = len(self.rows)
        return (
            f"{n} object{'' if n == 1 else 's'} listed, carried by {self.carrying_tasks} of {self.tasks} tasks; "
            f"{format_bytes(self.duplicated_bytes)} of task payload duplicated.\n{settings}"
        )

    def to_text(self, max_rows: int = 30) -> str:
        """A plain-text table of the first ``max_rows`` rows, then the totals."""
        header = ("object", "size", "tasks", "where", "saves", "hoisted")
        cells = [(c[0], *c[2:]) for c in map(_cells, self.rows[:max_rows])]  # all but the type
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
        lines = [
            "  ".join(c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in [header, *cells]
        ]
        if len(self.rows) > max_rows:
            lines.append(f"... and {len(self.rows) - max_rows} more rows (report.to_pandas() has them all)")
        return "\n".join([*(lines if self.rows else []), self.totals()])

    def __str__(self) -> str:
        return self.to_text()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        header = ("object", "type", "size", "tasks", "where", "saves", "hoisted")
        head = "".join(f"<th>{h}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in self.rows
        )
        totals = html.escape(self.totals()).replace("\n", "<br>")
        return (
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f'<tfoot><tr><td colspan="{len(header)}">{totals}</td></tr></tfoot></table>'
        )

    def to_pandas(self) -> pd.DataFrame:
        """One row per content with every column of :class:`Row`; the totals in ``.attrs``."""
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.rows], columns=[f.name for f in fields(Row)])
        frame["where"] = frame["where"].map(", ".join)
        # sizes are unknown (None) for what cannot be pickled
        frame = frame.astype({"nbytes": "Int64", "saved_bytes": "Int64"})
        frame.attrs.update(
            tasks=self.tasks,
            carrying_tasks=self.carrying_tasks,
            duplicated_bytes=self.duplicated_bytes,
            summary=asdict(self.summary),
            settings=asdict(self.settings),
            apart=[asdict(kept) for kept in self.apart],
        )
        return frame


def _cells(r: Row) -> tuple[str, ...]:
    """object, type, size, tasks, where, saves, hoisted: as a person reads them."""
    return (
        r.label,
        r.type,
        "?" if r.nbytes is None else format_bytes(r.nbytes),
        str(r.tasks),
        ", ".join(r.where),
        "?" if r.saved_bytes is None else format_bytes(r.saved_bytes),
        ("yes*" if r.needs else "yes") if r.hoisted else f"no: {r.reason}",
    )


def inspect(*args: Any, traverse: bool = True, **settings: Any) -> Report:
    """The duplicated payload in the graphs of ``args``, which stay as they are.

    >>> report = inspect(arr, df, min_bytes="1 MiB")  # doctest: +SKIP
    >>> report.to_pandas()  # doctest: +SKIP

    The graph is the one computing ``args`` together would run: each
    collection's own optimization, the pass excepted.  Any collection that
    :func:`dedupgraph.deduplicate` accepts works; lists, tuples and dicts are
    looked into.  ``settings`` as for ``enable``; the report says what they
    would hoist, and, for DataFrames and array-expr arrays, which route it
    takes (:data:`NEEDS_SCHEDULER_ROUTE`).
    """
    from dask._expr import Expr

    from dedupgraph.compat import MISSING_INTERNALS
    from dedupgraph.routes.materialize import materialize, resolve_client

    chosen = Settings.from_config(**settings)
    if MISSING_INTERNALS:
        raise RuntimeError(f"dedupgraph.inspect cannot read this dask's graphs: it lacks {', '.join(MISSING_INTERNALS)}")
    collections, _ = unpack_collections(*args, traverse=traverse)
    # the graph that will run: a distributed Client does not fuse dask-expr graphs
    fuse = resolve_client(None) is None
    # materialized apart, as computing them together does: the expression collections' tasks are
    # those no optimizer hook reaches
    expressions = [c for c in collections if isinstance(getattr(c, "expr", None), Expr)]
    others = [c for c in collections if not isinstance(getattr(c, "expr", None), Expr)]
    graph = dict(materialize(others, fuse=fuse).graph) if others else {}
    expression_graph = materialize(expressions, fuse=fuse).graph if expressions else {}
    graph.update(expression_graph)
    return graph_report(graph, chosen, frozenset(expression_graph))


def graph_report(
    graph: Mapping[Hashable, GraphNode], settings: Settings, expression_keys: frozenset[Hashable] = frozenset()
) -> Report:
    """A :class:`Report` of a graph of ``GraphNode``s; ``expression_keys``: the tasks of DataFrames and array-expr arrays."""
    # the stages are imported where used: a dask without the internals they
    # need must still be able to import dedupgraph (see dedupgraph.compat)
    from dedupgraph.core.candidates import find_candidates
    from dedupgraph.core.fingerprint import FingerprintMemo, is_excluded
    from dedupgraph.core.immutability import merge_policy
    from dedupgraph.core.plan import NOTABLE_BYTES, plan_hoists

    floor = min(NOTABLE_BYTES, settings.smallest_hoisted)
    # exclusions are judged per content below, so that their size shows
    memo = FingerprintMemo(floor, frozenset(settings.exclude), judge_exclusions=False)
    may_merge = merge_policy(settings.merge_equal)
    found = find_candidates(graph, memo, record_from_bytes=floor, record_inline=True, may_merge=may_merge)
    exclude = frozenset(settings.exclude)
    excluded = {g for g, value in found.values.items() if is_excluded(value, exclude)}
    plan = plan_hoists(found, settings, excluded)
    rows = [*_content_rows(found, plan, excluded, settings, expression_keys), *_inline_rows(found, expression_keys)]
    rows.sort(key=lambda r: (-(r.saved_bytes or 0), -(r.nbytes or 0), r.label))
    carriers = {k for g in _shown_groups(found, settings) for k in found.keys[g]}
    carriers.update(k for obj in found.inline.values() for k in obj.keys)
    return Report(tuple(rows), len(graph), len(carriers), settings, plan.summary(), plan.apart)


def _shown_groups(found: Candidates, settings: Settings) -> list[str]:
    # contents that reach min-bytes, and smaller ones only where they repeat
    return [
        g
        for g, fp in found.fingerprints.items()
        if fp.nbytes >= settings.smallest_hoisted or len(found.keys[g]) > 1
    ]


def _needs(keys: Any, expression_keys: frozenset[Hashable]) -> str | None:
    return NEEDS_SCHEDULER_ROUTE if expression_keys and not expression_keys.isdisjoint(keys) else None


def _content_rows(
    found: Candidates, plan: Plan, excluded: set[str], settings: Settings, expression_keys: frozenset[Hashable]
) -> list[Row]:
    from dedupgraph.core.fingerprint import EXCLUDED
    from dedupgraph.core.plan import why_inline

    rows = []
    for group in _shown_groups(found, settings):
        fp, value, ntasks = found.fingerprints[group], found.values[group], len(found.keys[group])
        hoisted = group in plan.hoists
        reason = None if hoisted else EXCLUDED if group in excluded else why_inline(fp.nbytes, ntasks, settings)
        rows.append(
            Row(
                label=fp.label,
                type=_type_name(value),
                nbytes=fp.nbytes,
                tasks=ntasks,
                where=_where(found.positions[group], value),
                saved_bytes=fp.nbytes * (ntasks - 1),
                hoisted=hoisted,
                reason=reason,
                key=plan.hoists[group].key if hoisted else None,
                copies=len(found.apart.get(fp.digest, (group,))),
                needs=_needs(found.keys[group], expression_keys),
            )
        )
    return rows


def _inline_rows(found: Candidates, expression_keys: frozenset[Hashable]) -> list[Row]:
    from dedupgraph.core.fingerprint import label_of

    return [
        Row(
            label=label_of(obj.value),
            type=_type_name(obj.value),
            nbytes=None,
            tasks=len(obj.keys),
            where=_where(obj.positions, obj.value),
            saved_bytes=None,
            hoisted=False,
            reason=obj.reason,
            key=None,
            needs=_needs(obj.keys, expression_keys),
        )
        for obj in found.inline.values()
    ]


def _type_name(value: Any) -> str:
    typ = type(value)
    return f"{typ.__module__}.{typ.__qualname__}"


def _where(positions: set[str], value: Any) -> tuple[str, ...]:
    """Positions as a person names them, with what kind of callable it is, if one."""
    kind = _callable_kind(value)
    names = sorted(_POSITION_NAMES.get(p, p) for p in positions)
    return tuple(f"{name} ({kind})" if kind else name for name in names)


# How stage 1's positions (dedupgraph.core.transform) read in a report.
_POSITION_NAMES = {
    "function": "function",
    "argument": "positional argument",
    "keyword": "keyword argument",
    "container": "nested container",
    "fused subgraph": "fused subgraph",
    "fused subgraph input": "fused subgraph input",
}


def _callable_kind(value: Any) -> str | None:
    # what makes a callable large: its instance, its bound arguments, its closure
    if isinstance(value, types.MethodType):
        return "bound method"
    if isinstance(value, functools.partial):
        return "partial"
    if isinstance(value, types.FunctionType):
        return "closure" if value.__closure__ else None
    return None
