"""Where the agent's API listens, and the errors its clients raise: apart
from client.py so a command that may never call the agent (an offline
`ciliate policy diff --endpoints FILE`) does not load httpx and the API
models to declare its flags. No I/O."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SOCKET = Path("/var/run/ciliate/agent.sock")


def default_socket() -> Path:
    return Path(os.environ.get("CILIATE_SOCKET", str(DEFAULT_SOCKET)))


class AgentUnavailable(Exception):
    pass


class AgentError(Exception):
    def __init__(self, status: int, error: str, detail: str | None) -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.status = status
        self.error = error
        self.detail = detail
