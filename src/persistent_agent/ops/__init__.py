"""Ops: what the operator runs: the admin CLI (``admin``), config files and
``make init`` (``config_files``), backup/restore (``backup``), key rotation
(``rotation``), verify/inspect (``inspection``), and credential and
certificate renewal (``access``). The local process launcher is in the demo
wing (``persistent_agent.demo``), imported only by the commands that run it.

This ``__init__`` imports nothing: ``config_files`` must run on a bare Python.
"""
