"""The shape of one REST route and its parameters: what server.py declares
once per route and openapi.py renders. Pure data, no I/O."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" | "query"
    schema: dict
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI form, {name}
    handler: Handler
    summary: str
    operation_id: str
    response: type[BaseModel] | None
    request: type[BaseModel] | None = None
    status: int = 200
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    stream: str | None = None  # media type of a streamed response
    extra_status: tuple[int, ...] = field(default=())

    @property
    def aiohttp_path(self) -> str:
        # Policy names hold a slash ("ns/name"): let that parameter span segments.
        return self.path.replace("{name}", "{name:.+}")
