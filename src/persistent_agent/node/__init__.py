"""Node: what runs inside the sentinel, agent and client processes.

Serving and preflight (``serving``), the agent (``agent``) and its state
transactions (``state``), unary replies (``replies``), log filtering
(``logs``), the sentinel entry point (``sentinel``) and the client's calls
with their retry policy (``caller``).
"""
