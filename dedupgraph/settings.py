"""Settings of the pass: one frozen dataclass, read from ``dask.config``.

>>> Settings.from_config(min_bytes="1 MiB").min_bytes
1048576

Defaults live in ``dedupgraph.yaml`` and are registered with dask's config on
import, so ``DASK_DEDUPGRAPH__MIN_BYTES=1MiB`` in the environment and
``dask.config.set({"dedupgraph.min-bytes": "1 MiB"})`` both work.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import dask.config
import yaml
from dask.utils import format_bytes, parse_bytes

CONFIG_KEY = "dedupgraph"
_DEFAULTS_FILE = pathlib.Path(__file__).with_name("dedupgraph.yaml")


def invalid_setting(setting: str, message: str) -> ValueError:
    """The error for a value dedupgraph refuses: a ``ValueError`` whose ``setting`` names the setting.

    >>> error = invalid_setting("min-count", "dedupgraph setting 'min-count' must be >= 1, got 0")
    >>> error.setting, isinstance(error, ValueError)
    ('min-count', True)

    A plain ``ValueError`` (tracebacks read ``ValueError: dedupgraph setting
    ...``, as always); the attribute lets each setting be reported once
    (:func:`first_report`).
    """
    error = ValueError(message)
    error.setting = setting  # type: ignore[attr-defined]
    return error


# The settings whose invalid value this process has reported: a warn-once flag per
# setting (never more names than there are settings), shared by every route, so
# that one mistake makes one warning, whoever meets it first.
_reported: set[str] = set()
_reported_lock = threading.Lock()


def first_report(error: BaseException) -> bool:
    """Whether ``error`` is this process's first report of the invalid setting it names.

    >>> error = invalid_setting("example", "dedupgraph setting 'example' ...")
    >>> first_report(error), first_report(error)
    (True, False)

    Errors that name no setting count as one kind per exception type.
    """
    name = getattr(error, "setting", None) or f"<{type(error).__qualname__}>"
    with _reported_lock:
        if name in _reported:
            return False
        _reported.add(name)
        return True


def warn_invalid(error: BaseException, outcome: str, stacklevel: int = 2) -> None:
    """A ``RuntimeWarning``: ``error``, then ``outcome``; once per setting and process.

    >>> warn_invalid(invalid_setting("example-2", "dedupgraph setting 'example-2' ..."), "graphs run as plain dask")  # doctest: +SKIP
    RuntimeWarning: dedupgraph setting 'example-2' ...; graphs run as plain dask
    """
    if first_report(error):
        warnings.warn(f"{error}; {outcome}", RuntimeWarning, stacklevel=stacklevel + 1)


def register_defaults() -> None:
    """Register the shipped YAML defaults with ``dask.config`` (idempotent)."""
    with _DEFAULTS_FILE.open() as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the pass hoists.

    >>> Settings(min_bytes=1024, min_count=3)
    Settings(min_bytes=1024, min_count=3, dry_run=False, exclude=(), hint_bytes=10485760, merge_equal='immutable', share='process', share_min_bytes=1048576, share_limit=0.5, check_mutation=False, floor_bytes=4096, reuse_limit=0.1)

    ``min_bytes``: ``None`` (``"auto"`` in config, the default): a repeated
    object of at least ``floor_bytes`` is hoisted where what it saves pays for
    the dependencies it adds (``dedupgraph.core.plan.pays``); a size pins
    the rule instead: every repeated object of at least that size is hoisted.
    ``floor_bytes``: with ``min_bytes`` auto, the smallest pickled size hoisted.
    ``min_count``: how many tasks must carry the same content.
    ``dry_run``: plan and log what would be hoisted, but leave the graph unchanged.
    ``exclude``: fully qualified type names (``"mypackage.Model"``) never hoisted.
    ``hint_bytes``: while the pass is off, duplicated payload in one graph from
    which a hint to switch it on is logged (once per process); None: never.
    ``merge_equal``: whether distinct objects with equal pickles share one key:
    ``"immutable"`` only where no task can change what another sees (bytes,
    str, read-only arrays...), ``"always"``, or ``"never"`` (by identity only).
    ``share``: ``"process"`` (one copy per worker process) or ``"host"`` (large
    buffers of hoisted objects in shared memory, one copy per host).
    ``share_min_bytes``: out-of-band buffer bytes from which ``share="host"`` applies.
    ``share_limit``: the most that dedupgraph's segments may take of a host's
    shared memory: a fraction (``0 < f <= 1``) of ``/dev/shm``'s size, or a
    byte size of at least 1 MiB (``"8 GiB"``, ``1048576``); a smaller number,
    which could be meant either way, is refused.
    ``check_mutation``: each task that receives a hoisted mutable object digests
    it before and after its function runs, and a change is logged (one WARNING
    per function and process): a check to run before production.
    ``reuse_limit``: on distributed, how much of its hoisted objects a
    scheduler keeps after a computation, for later ones to reuse by content: a
    fraction (``0 < f <= 1``) of the smallest worker's memory limit or of the
    scheduler's memory, whichever is smaller, or a byte size of at least 1 MiB;
    ``0``: nothing kept.
    """

    min_bytes: int | None = None
    min_count: int = 2
    dry_run: bool = False
    exclude: tuple[str, ...] = ()
    hint_bytes: int | None = 10 * 2**20
    merge_equal: str = "immutable"
    share: str = "process"
    share_min_bytes: int = 2**20
    share_limit: float | int = 0.5
    check_mutation: bool = False
    floor_bytes: int = 4 * 1024  # after the others: the fields before it keep their positions
    reuse_limit: float | int = 0.1

    def __post_init__(self) -> None:
        if self.min_bytes is not None:
            _check_int("min-bytes", self.min_bytes, minimum=0, also="'auto'")
        _check_int("floor-bytes", self.floor_bytes, minimum=0)
        _check_int("min-count", self.min_count, minimum=1)
        if self.hint_bytes is not None:
            _check_int("hint-bytes", self.hint_bytes, minimum=0)
        _check_bool("dry-run", self.dry_run)
        _check_bool("check-mutation", self.check_mutation)
        _check_choice("merge-equal", self.merge_equal, MERGE_EQUAL_CHOICES)
        _check_choice("share", self.share, SHARE_CHOICES)
        _check_int("share-min-bytes", self.share_min_bytes, minimum=0)
        _check_share_limit(self.share_limit)
        _check_reuse_limit(self.reuse_limit)
        if not isinstance(self.exclude, tuple) or not all(
            isinstance(name, str) and name.strip() for name in self.exclude
        ):
            raise invalid_setting(
                "exclude",
                "dedupgraph setting 'exclude' must be a list of fully qualified type "
                f"names such as 'mypackage.Model', got {self.exclude!r}"
            )

    @property
    def smallest_hoisted(self) -> int:
        """The smallest pickled size the pass may hoist: ``min_bytes`` if pinned, else ``floor_bytes``.

        >>> Settings().smallest_hoisted, Settings.from_config(min_bytes="auto").smallest_hoisted, Settings(min_bytes=10).smallest_hoisted
        (4096, 4096, 10)

        Stage 1 records nothing smaller, and judges smaller text and arrays without pickling them.
        """
        return self.floor_bytes if self.min_bytes is None else self.min_bytes

    def hoisting_rule(self) -> str:
        """Which repeated objects these settings hoist, in the words of reports and logs.

        >>> Settings().hoisting_rule()
        'min-bytes auto (from floor-bytes 4.00 kiB, where the saving pays for the added dependencies), min-count 2'
        >>> Settings(min_bytes=65536, min_count=3).hoisting_rule()
        'min-bytes 64.00 kiB, min-count 3'
        """
        if self.min_bytes is None:
            size = (
                f"min-bytes auto (from floor-bytes {format_bytes(self.floor_bytes)}, "
                "where the saving pays for the added dependencies)"
            )
        else:
            size = f"min-bytes {format_bytes(self.min_bytes)}"
        return f"{size}, min-count {self.min_count}"

    @classmethod
    def from_config(cls, **overrides: Any) -> Settings:
        """Settings from ``dask.config["dedupgraph"]``, with ``overrides`` on top.

        >>> Settings.from_config(min_count=5).min_count
        5

        Overrides use Python names (``min_bytes``) or config names (``min-bytes``).
        Unknown names and bad values raise ``ValueError`` naming the setting.
        """
        configured = dask.config.get(CONFIG_KEY, default={}) or {}
        if not isinstance(configured, Mapping):
            raise invalid_setting(
                CONFIG_KEY,
                f"dask config {CONFIG_KEY!r} must be a mapping of settings, "
                f"got {configured!r}"
            )
        values = {**_normalized(configured, "dask config"), **_normalized(overrides, "argument")}
        return cls(**values)

    def as_config(self) -> dict[str, Any]:
        """These settings as a ``dask.config.set`` mapping.

        >>> Settings(min_bytes=10, hint_bytes=None).as_config()["dedupgraph.hint-bytes"] is None
        True
        >>> Settings().as_config()["dedupgraph.min-bytes"]
        'auto'
        """
        return {
            f"{CONFIG_KEY}.{field.name.replace('_', '-')}": (
                "auto" if field.name == "min_bytes" and self.min_bytes is None else getattr(self, field.name)
            )
            for field in dataclasses.fields(self)
        }


_FIELDS = {field.name for field in dataclasses.fields(Settings)}
# Config keys under ``dedupgraph.`` that are not settings: ``enabled`` is read
# from the environment by the startup hook (dedupgraph_startup), nowhere else.
NON_PASS_KEYS = frozenset({"enabled"})


def _normalized(values: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Map config-style names to field names and parse byte strings."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if origin == "dask config" and str(name).replace("_", "-") in NON_PASS_KEYS:
            continue
        field = str(name).replace("-", "_")
        if field not in _FIELDS:
            known = ", ".join(sorted(f"{CONFIG_KEY}.{f.replace('_', '-')}" for f in _FIELDS))
            raise invalid_setting(
                str(name),
                f"unknown dedupgraph setting {name!r} (from {origin}); known settings: {known}"
            )
        if field == "hint_bytes" and _means_off(value):
            value = None  # DASK_DEDUPGRAPH__HINT_BYTES=False switches the hint off
        if field == "min_bytes" and _means_auto(value):
            value = None
        if field in _BYTE_FIELDS and isinstance(value, str):
            value = _parse_byte_string(_BYTE_FIELDS[field], value)
        if field in ("dry_run", "check_mutation") and isinstance(value, str):
            value = _parse_bool_string(value)
        if field == "exclude":
            if origin == "argument" and isinstance(value, str):
                raise invalid_setting(
                    "exclude",
                    f"dedupgraph setting 'exclude' must be a list of fully qualified type names, "
                    f"got the string {value!r}: pass a list, like exclude=[{value!r}] (a comma-separated "
                    "string is read only from dask config and DASK_DEDUPGRAPH__EXCLUDE)",
                )
            value = _type_names(value)
        if field in ("merge_equal", "share") and isinstance(value, str):
            value = value.strip().lower()
        if field == "share_limit":
            value = _share_limit(value)
        if field == "reuse_limit":
            value = _reuse_limit(value)
        if isinstance(value, float) and value.is_integer() and field not in ("share_limit", "reuse_limit"):
            # "1e6" in an environment variable arrives as a float
            value = int(value)
        out[field] = value
    return out


_BYTE_FIELDS = {
    "min_bytes": "min-bytes",
    "floor_bytes": "floor-bytes",
    "hint_bytes": "hint-bytes",
    "share_min_bytes": "share-min-bytes",
}
MERGE_EQUAL_CHOICES = ("immutable", "always", "never")
SHARE_CHOICES = ("process", "host")


def _means_auto(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "auto")


def _means_off(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() in ("none", "false", "off", "never"))


def _parse_byte_string(name: str, text: str) -> int:
    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError) as e:
        auto = " or 'auto'" if name == "min-bytes" else ""
        raise invalid_setting(
            name,
            f"dedupgraph setting {name!r} must be a number of bytes or a byte "
            f"string like '64 KiB'{auto}, got {text!r}"
        ) from e


def _type_names(value: Any) -> Any:
    # DASK_DEDUPGRAPH__EXCLUDE=a.B,c.D arrives as one string; YAML gives a list
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(value)
    return value


_BOOL_STRINGS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _parse_bool_string(text: str) -> bool | str:
    # DASK_DEDUPGRAPH__DRY_RUN=true arrives as the string "true"
    return _BOOL_STRINGS.get(text.strip().lower(), text)


def _share_limit(value: Any) -> Any:
    # "0.5" is a fraction, "8 GiB" a size: both arrive as strings from the environment
    if isinstance(value, str):
        try:
            return float(value) if "." in value else _parse_byte_string("share-limit", value)
        except ValueError:
            return _parse_byte_string("share-limit", value)
    return value


# The smallest byte count share-limit and reuse-limit take: a smaller number is surely a
# fraction (0, 1) or a size whose unit was forgotten (2 for 2 GiB), not a limit that could
# hold one segment or one kept object (share-min-bytes defaults to 1 MiB).
SHARE_LIMIT_MIN_BYTES = 2**20


def _check_share_limit(value: object) -> None:
    _check_fraction_or_size(
        "share-limit",
        value,
        "dedupgraph setting 'share-limit' must be a fraction of /dev/shm's size, 0 < f <= 1 "
        f"(like 0.5), or a byte size of at least {SHARE_LIMIT_MIN_BYTES} bytes (like '8 GiB', "
        f"'1 MiB' or {SHARE_LIMIT_MIN_BYTES}), got {value!r}",
    )


def _check_fraction_or_size(name: str, value: object, accepted: str, zero: bool = False) -> None:
    """A fraction ``0 < f <= 1``, or an int of at least ``SHARE_LIMIT_MIN_BYTES`` (or 0, with ``zero``)."""
    fraction = isinstance(value, float) and 0 < value <= 1
    size = isinstance(value, int) and not isinstance(value, bool) and (value >= SHARE_LIMIT_MIN_BYTES or zero and value == 0)
    if not (fraction or size):
        raise invalid_setting(name, accepted)


def _reuse_limit(value: Any) -> Any:
    # 0, false and off keep nothing; "10%" and "0.1" are fractions; "4 GiB" a size;
    # anything else is left for the check, whose message lists what is accepted
    if value is False or value is None or (isinstance(value, float) and value == 0):
        return 0
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in ("false", "off", "no", "none"):
        return 0
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text) if "." in text else None
    except ValueError:
        return value
    if number is not None:
        return 0 if number == 0 else number
    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        return value


def _check_reuse_limit(value: object) -> None:
    _check_fraction_or_size(
        "reuse-limit",
        value,
        "dedupgraph setting 'reuse-limit' must be a fraction of the smallest worker's memory limit "
        "(or of the scheduler's memory, if smaller), "
        f"0 < f <= 1 (like 0.1 or '10%'), a byte size of at least {SHARE_LIMIT_MIN_BYTES} bytes "
        f"(like '4 GiB'), or 0 to keep nothing, got {value!r}",
        zero=True,
    )


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise invalid_setting(name, f"dedupgraph setting {name!r} must be True or False, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise invalid_setting(
            name,
            f"dedupgraph setting {name!r} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )


def _check_int(name: str, value: object, minimum: int, also: str = "") -> None:
    # bool is an int subclass, but min-count=True is surely a mistake
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_setting(
            name,
            f"dedupgraph setting {name!r} must be an integer{' or ' + also if also else ''}, got {value!r} "
            f"({type(value).__name__})"
        )
    if value < minimum:
        raise invalid_setting(name, f"dedupgraph setting {name!r} must be >= {minimum}, got {value}")
