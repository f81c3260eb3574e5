"""Ops: what the operator runs: the admin CLI (``admin``), config files and
``make init`` (``config_files``), backup/restore (``backup``), key rotation
(``rotation``), verify/inspect (``inspection``) and the local process
launcher (``local_nodes``).

This ``__init__`` imports nothing: ``config_files`` must run on a bare Python.
"""
