"""``python -m dedupgraph``: the same commands as the ``dedupgraph`` console script."""

from dedupgraph.tools.cli import main

main()
