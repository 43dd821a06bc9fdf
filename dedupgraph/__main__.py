"""``python -m dedupgraph``: the same commands as the ``dedupgraph`` console script."""

from dedupgraph.cli import main

main()
