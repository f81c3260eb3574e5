"""An agent at storage@fame.fabric that knows only the TypeScript original's names.

``storeValue``/``retrieveValue`` and nothing else, in memory: what our client
meets behind a sentinel serving the original example's agent.
``python -m tests.e2e.camel_agent``, started like the real agent.
"""

from __future__ import annotations

import sys

from naylence.agent import BaseAgent
from naylence.fame.service import operation

from .bare_agent import serve_as_the_agent


class CamelCaseAgent(BaseAgent):
    def __init__(self) -> None:
        super().__init__()
        self._value: str | None = None

    @operation(name="storeValue")
    async def store(self, value: str) -> dict[str, str]:
        self._value = value
        return {"value": value}

    @operation(name="retrieveValue")
    async def retrieve(self) -> dict[str, str]:
        return {} if self._value is None else {"value": self._value}


if __name__ == "__main__":
    sys.exit(serve_as_the_agent("camel-agent", CamelCaseAgent()))
