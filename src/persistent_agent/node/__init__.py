"""Node: what runs inside the sentinel and agent processes.

Serving and preflight (``serving``), the agent (``agent``) and its state
transactions (``state``), unary replies (``replies``), log filtering
(``logs``), the sentinel entry point (``sentinel``), its listeners
(``listener``), the link upstream (``link``) and the agent's backlog
(``backlog``). The client's calls live in the ``client`` package.
"""
