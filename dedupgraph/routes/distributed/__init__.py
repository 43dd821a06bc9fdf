"""The distributed route: every graph a distributed scheduler receives is deduplicated there, once.

    dask scheduler --preload dedupgraph.scheduler       # the scheduler side
    # distributed.client.preload: [dedupgraph.preload]  # the client side (the variable sets both)

One graph's way through it, in the order it is entered:

- ``client``: the client side. At connect time it checks that the scheduler
  and the workers run this dedupgraph (else the pass stays off here, with
  one warning); then each graph the client sends carries the settings in
  force, in the form of ``wire``.
- ``plugin``: the scheduler plugin that ``dedupgraph.scheduler`` installs;
  it switches the hook on for its scheduler, and off when it closes.
- ``hook``: where distributed turns a submitted expression into tasks
  (``Scheduler.update_graph`` calling ``_materialize_graph``), and how the
  route steps in there, in distributed's own materializing thread.
- ``submissions``: what happens to one submitted graph: the settings that
  win, the layer hoisting or the pass (:mod:`dedupgraph.core`), and plain
  dask's keys, annotations and priorities kept.
- ``records``: what the route did with each graph, one record, and the
  plugin's account of them per scheduler (read by ``dedupgraph.tools.observe``
  for the page, ``/metrics`` and ``dedupgraph status``).

Across computations, the plugin keeps hoisted objects for later graphs:

- ``reuse``: which keys it keeps, within ``reuse-limit``, least recently
  used first out;
- ``replicas``: the Active Memory Manager leaves their copies on the
  workers that used them;
- ``uploads``: a client leaves a kept object out of a later graph, and the
  scheduler puts it back.

Modules here import the pass, placement and the other routes' modules; none
of those imports this package, except ``deduplicate``, which asks the
client side whether the scheduler imports dedupgraph.
"""
