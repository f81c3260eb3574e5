"""Which hosts are this machine's own: the one test behind every "loopback only" rule.

Both wings that decide what may travel in plaintext use it: the fabric's
opt-out (``access/fabric.py``) and the shared state's PostgreSQL connection
(``storage/shared_state.py``). It sits below them, beside ``errors``.
"""

from __future__ import annotations

import ipaddress


def loopback(host: str) -> bool:
    """Whether *host* (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
