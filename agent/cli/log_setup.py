"""How the agent logs: level, format, and the libraries kept quiet. Called
once by `ciliate agent` before anything logs.

What an operator needs from a week of logs is state changes, errors and one
line per policy change, so the default level is info and the chatty
libraries underneath are held at warning: httpx logs every request at info
(the agent polls Envoy's admin API once a second) and aiohttp logs every API
request. `--debug` (Cilium's flag) lets them all through.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries whose info lines are per request, not per event worth keeping.
CHATTY = ("httpx", "httpcore", "aiohttp.access", "urllib3", "kubernetes.client.rest", "grpclib")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, msg, and
    the exception's text when there is one. Field names follow what log
    shippers map without configuration."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text", debug: bool = False, stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one of the given format."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else getattr(logging, level.upper()))
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else max(logging.WARNING, root.level))
