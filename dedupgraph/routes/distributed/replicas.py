"""Kept objects keep their copies on the workers that used them, from one computation to the next.

>>> from distributed.active_memory_manager import ReduceReplicas
>>> policy = KeptCopiesStay(ReduceReplicas(), kept={"dedup-Model-aa"}.__contains__)
>>> policy
ReduceReplicas(), except for the objects dedupgraph keeps for reuse

distributed's Active Memory Manager runs ``ReduceReplicas`` on the scheduler
every few seconds: it drops every copy of a key but one once no task waits
for it.  For a kept object that undoes the reuse: the next computation
copies it to each worker again, worker to worker, and each unpickles it
again, which for a model made of Python objects is most of the cost.

So the route wraps each ``ReduceReplicas`` policy of its scheduler's
Active Memory Manager in :class:`KeptCopiesStay`: the drops it suggests
for a key kept for reuse are left out, and all its other suggestions pass
as they were (scattered keys, persisted collections, computations' data).
A key let go of (beyond ``reuse-limit``, its clients closed,
``dedupgraph.forget``) is ``ReduceReplicas``' again at its next run.  Each
worker then holds at most one copy of each kept object, which is what
``reuse-limit`` is reckoned on (see ``dedupgraph.routes.distributed.reuse``).
:func:`keep_copies` wraps the policies and gives back what undoes it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from distributed.active_memory_manager import ActiveMemoryManagerPolicy, ReduceReplicas

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.active_memory_manager import SuggestionGenerator


class KeptCopiesStay(ActiveMemoryManagerPolicy):
    """``policy`` (a ``ReduceReplicas``), without its drops of the keys ``kept`` says are kept."""

    def __init__(self, policy: ReduceReplicas, kept: Callable[[Hashable], bool]) -> None:
        self.policy = policy
        self.kept = kept

    def __repr__(self) -> str:
        return f"{self.policy!r}, except for the objects dedupgraph keeps for reuse"

    def run(self) -> SuggestionGenerator:
        suggestions = self.policy.run()
        answer = None  # what the manager answered to the last suggestion passed on
        while True:
            try:
                suggestion = suggestions.send(answer)
            except StopIteration:
                return
            if suggestion.op == "drop" and self.kept(suggestion.ts.key):
                answer = None  # as if no worker could drop it
                continue
            answer = yield suggestion


def keep_copies(scheduler: Scheduler, kept: Callable[[Hashable], bool]) -> Callable[[], None]:
    """Wrap each ``ReduceReplicas`` of ``scheduler``'s Active Memory Manager in :class:`KeptCopiesStay`; returns the undo.

    A scheduler without the manager's extension, or without that policy (the
    operator configured others), is left as it is.
    """
    manager = scheduler.extensions.get("amm")
    if manager is None:
        return lambda: None
    wrapped: list[tuple[ReduceReplicas, KeptCopiesStay]] = []
    for policy in list(manager.policies):
        if isinstance(policy, ReduceReplicas):
            wrapper = KeptCopiesStay(policy, kept)
            manager.policies.discard(policy)
            manager.add_policy(wrapper)
            wrapped.append((policy, wrapper))

    def undo() -> None:
        for policy, wrapper in wrapped:
            if wrapper in manager.policies:
                manager.policies.discard(wrapper)
                manager.policies.add(policy)  # still the manager's: its ``manager`` attribute is unchanged

    return undo
