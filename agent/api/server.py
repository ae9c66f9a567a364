"""The agent's REST API: aiohttp on a unix socket (mode 0600), metrics on loopback TCP.

Every route is declared once in ROUTES with its request and response models;
the handlers parse with those models (a bad body is a 400 naming the field)
and agent/api/openapi.py renders the same table into /openapi.json. Every error,
aiohttp's own (404 no route, 405, 413) included, is a JSON ErrorBody: bad
input is a 4xx, never a 500. Does socket I/O; the work is done by
agent.core.agent.Agent. The route and parameter types are in routes.py, so
the OpenAPI renderer needs nothing from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ValidationError

from agent.api.openapi import openapi_document
from agent.api.routes import Handler, Param, Route
from agent.core.agent import Agent
from agent.core.endpoint_table import AddressInUse, EndpointTableFull
from agent.core.flow_filter import FLOW_TYPES, VERDICTS, FilterError, FlowFilter
from agent.core.flow_history import FlowHistoryList
from agent.core.models import (
    BpfPolicyDump,
    Endpoint,
    EndpointConfig,
    EndpointCreate,
    EndpointList,
    ErrorBody,
    FlowEvent,
    FQDNCacheList,
    Health,
    IdentityList,
    PolicyList,
    PolicyStatus,
    Status,
)

log = logging.getLogger(__name__)

_AGENT = web.AppKey("agent", Agent)

WAIT_MAX = 300.0  # seconds; a longer ?wait= waits this long (the CNI runtime gives up well before)
# ASCII only: str.isdigit() and float() also take "²", "①" or "١" (and float "1_0", "nan", "inf").
_ID = re.compile(r"[0-9]+")
_ID_DIGITS_MAX = 9  # endpoint ids are far smaller; longer is unknown, and int() of 5,000 digits raises
_SECONDS = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")
_SHOWN_MAX = 2000  # characters of an error detail; the rest is cut


class ApiError(Exception):
    """Raised by a handler to answer with this status and ErrorBody."""

    def __init__(self, status: int, error: str, detail: str | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


def _printable(text: str, limit: int = _SHOWN_MAX) -> str:
    # Echoed input may hold lone surrogates (which JSON cannot encode) or be huge.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _error(status: int, error: str, detail: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = ErrorBody(error=error, detail=None if detail is None else _printable(detail))
    return web.Response(text=body.model_dump_json(), status=status, content_type="application/json", headers=headers)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(_printable(str(x), 80) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.error, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        detail = exc.text
        if exc.status in (404, 405):
            detail = f"{request.method} {request.rel_url.raw_path}: no such route (see /openapi.json)"
        return _error(exc.status, (exc.reason or "error").lower(), detail, keep)
    except Exception:
        log.exception("%s %s failed", request.method, request.rel_url.raw_path)
        return _error(500, "internal error", "the agent's log has the details")


def _agent(request: web.Request) -> Agent:
    return request.app[_AGENT]


def _endpoint_id(request: web.Request) -> int | None:
    """The path's endpoint id; None for a number no endpoint can have; a 400 for anything but ASCII digits."""
    raw = request.match_info["id"]
    if not _ID.fullmatch(raw):
        raise ApiError(400, "invalid endpoint id", f"{raw!r} is not an endpoint id (a decimal number)")
    return int(raw) if len(raw) <= _ID_DIGITS_MAX else None


def _wait_seconds(raw: str | None) -> float | None:
    if not raw:
        return None
    if not _SECONDS.fullmatch(raw):
        raise ApiError(400, "invalid query", f"wait: {raw!r} is not a number of seconds >= 0")
    return min(float(raw), WAIT_MAX)  # float() of a huge literal is inf: min() brings it back


async def _json_body(request: web.Request) -> object:
    raw = await request.read()  # bytes: a bogus charset in Content-Type cannot break decoding
    try:
        return json.loads(raw)
    except ValueError as exc:  # bad syntax, not UTF-8, or an integer of over 4,300 digits
        raise ApiError(400, "request body is not JSON", str(exc)) from None
    except RecursionError:
        raise ApiError(400, "request body is not JSON", "nested too deeply") from None


async def health(request: web.Request) -> web.StreamResponse:
    h = _agent(request).health()
    return _json(h, 200 if h.ok else 503)


async def status(request: web.Request) -> web.StreamResponse:
    agent = _agent(request)
    await agent.read_kernel_counters()  # the conntrack fill as of now, not of the last scrape
    return _json(agent.status())


async def list_endpoints(request: web.Request) -> web.StreamResponse:
    views = _agent(request).table.views()
    cid = request.query.get("container_id")
    ifname = request.query.get("ifname")
    host_if = request.query.get("host_ifname")
    views = [
        v for v in views
        if (cid is None or v.container_id == cid) and (ifname is None or v.ifname == ifname)
        and (host_if is None or v.host_ifname == host_if)
    ]
    return _json(EndpointList(endpoints=views))


async def create_endpoint(request: web.Request) -> web.StreamResponse:
    wait = _wait_seconds(request.query.get("wait"))
    body = await _json_body(request)
    try:
        req = EndpointCreate.model_validate(body)
    except ValidationError as exc:
        return _error(400, "invalid endpoint", _describe(exc))
    try:
        view, created = await _agent(request).create_endpoint(req, wait)
    except AddressInUse as exc:
        return _error(400, "invalid endpoint", str(exc))
    except EndpointTableFull as exc:
        return _error(507, "endpoint table full", str(exc))
    return _json(view, 201 if created else 200)


async def get_endpoint(request: web.Request) -> web.StreamResponse:
    eid = _endpoint_id(request)
    view = _agent(request).table.view(eid) if eid is not None else None
    if view is None:
        return _error(404, "no such endpoint", f"endpoint {request.match_info['id']} is not known to this agent")
    return _json(view)


async def configure_endpoint(request: web.Request) -> web.StreamResponse:
    eid = _endpoint_id(request)
    wait = _wait_seconds(request.query.get("wait"))
    body = await _json_body(request)
    try:
        cfg = EndpointConfig.model_validate(body)
    except ValidationError as exc:
        return _error(400, "invalid endpoint config", _describe(exc))
    view = await _agent(request).configure_endpoint(eid, cfg, wait) if eid is not None else None
    if view is None:
        return _error(404, "no such endpoint", f"endpoint {request.match_info['id']} is not known to this agent")
    return _json(view)


async def delete_endpoint(request: web.Request) -> web.StreamResponse:
    eid = _endpoint_id(request)
    view = await _agent(request).delete_endpoint(eid) if eid is not None else None
    if view is None:
        return _error(404, "no such endpoint", f"endpoint {request.match_info['id']} is not known to this agent")
    return _json(view)


async def list_policies(request: web.Request) -> web.StreamResponse:
    return _json(_agent(request).policies())


async def get_policy(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    for p in _agent(request).policies().policies:
        if p.name == name:
            return _json(p)
    return _error(404, "no such policy", f"no policy named {name!r} (names are namespace/name, or name for clusterwide)")


async def list_identities(request: web.Request) -> web.StreamResponse:
    return _json(_agent(request).identities())


async def bpf_policy(request: web.Request) -> web.StreamResponse:
    eid = _endpoint_id(request)
    dump = await _agent(request).bpf_policy(eid) if eid is not None else None
    if dump is None:
        return _error(404, "no such endpoint", f"endpoint {request.match_info['id']} is not known to this agent")
    return _json(dump)


async def flows(request: web.Request) -> web.StreamResponse:
    q = request.query
    try:
        flt = FlowFilter.parse(
            types=q.getall("type", []),
            verdicts=q.getall("verdict", []),
            ports=q.getall("port", []),
            from_labels=q.getall("from_label", []),
            to_labels=q.getall("to_label", []),
        )
    except FilterError as exc:
        raise ApiError(400, "invalid query", str(exc)) from None
    # Subscribed before the headers go out: a client that has the 200 misses
    # no event from then on (`ciliate monitor` says "Listening" at that point).
    sub = _agent(request).flows.subscribe(flt=flt)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    try:
        await resp.prepare(request)
        async for event in sub:
            await resp.write(event.model_dump_json(exclude_none=True).encode() + b"\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        sub.close()
    return resp


async def flow_history(request: web.Request) -> web.StreamResponse:
    # Read-only: what `ciliate policy diff --observed` replays.
    raw = request.query.get("since")
    since = None
    if raw is not None:
        try:
            since = float(raw)
        except ValueError:
            since = -1.0
        if not since > 0 or since == float("inf"):
            raise ApiError(400, "invalid query", f"since: {raw[:40]!r} is not a number of seconds > 0")
    return _json(_agent(request).flows.history.listing(since))


async def fqdn_cache(request: web.Request) -> web.StreamResponse:
    # Read-only: what `ciliate fqdn cache list` prints.
    proxy = _agent(request).dns_proxy
    if proxy is None:
        return _json(FQDNCacheList(running=False, entries=[]))
    return _json(proxy.listing())


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document(ROUTES))


_ID_PARAM = Param("id", "path", {"type": "integer", "minimum": 1}, "endpoint id (ASCII digits)", True)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/healthz", health, "Agent health", "getHealth", Health, errors=(503,)),
    Route("GET", "/v1/status", status, "Agent status summary", "getStatus", Status),
    Route(
        "GET", "/v1/endpoints", list_endpoints, "List endpoints", "listEndpoints", EndpointList,
        params=(
            Param("container_id", "query", {"type": "string"}, "only this container's endpoints"),
            Param("ifname", "query", {"type": "string"}, "only endpoints with this pod-side interface"),
            Param("host_ifname", "query", {"type": "string"}, "only the endpoint on this host-side interface"),
        ),
    ),
    Route(
        "POST", "/v1/endpoints", create_endpoint, "Register (or update) an endpoint", "createEndpoint", Endpoint,
        request=EndpointCreate, status=201, extra_status=(200,), errors=(400, 413, 507),
        params=(
            Param(
                "wait", "query", {"type": "number", "minimum": 0},
                f"seconds to wait for the endpoint's policy to be in place; at most {WAIT_MAX:.0f} (a larger value waits {WAIT_MAX:.0f})",
            ),
        ),
    ),
    Route("GET", "/v1/endpoints/{id}", get_endpoint, "Get one endpoint", "getEndpoint", Endpoint, params=(_ID_PARAM,), errors=(400, 404)),
    Route(
        "PATCH", "/v1/endpoints/{id}/config", configure_endpoint, "Change an endpoint's settings (policy audit mode)",
        "configureEndpoint", Endpoint, request=EndpointConfig, errors=(400, 404, 413),
        params=(
            _ID_PARAM,
            Param("wait", "query", {"type": "number", "minimum": 0}, f"seconds to wait for the change to be in place; at most {WAIT_MAX:.0f}"),
        ),
    ),
    Route("DELETE", "/v1/endpoints/{id}", delete_endpoint, "Remove an endpoint", "deleteEndpoint", Endpoint, params=(_ID_PARAM,), errors=(400, 404)),
    Route("GET", "/v1/policies", list_policies, "Policies and their status", "listPolicies", PolicyList),
    Route(
        "GET", "/v1/policies/{name}", get_policy, "One policy's status", "getPolicy", PolicyStatus,
        params=(Param("name", "path", {"type": "string"}, "namespace/name, or name for clusterwide policies", True),), errors=(404,),
    ),
    Route("GET", "/v1/identities", list_identities, "Identities and their labels", "listIdentities", IdentityList),
    Route("GET", "/v1/bpf/policy/{id}", bpf_policy, "An endpoint's kernel policy map, decoded", "getBpfPolicy", BpfPolicyDump, params=(_ID_PARAM,), errors=(400, 404)),
    Route(
        "GET", "/v1/flows", flows, "Live flow events, one JSON object per line", "streamFlows", FlowEvent,
        stream="application/x-ndjson",
        errors=(400,),
        params=(
            Param("type", "query", {"type": "array", "items": {"type": "string", "enum": list(FLOW_TYPES)}}, "only these event types (repeatable)"),
            Param("verdict", "query", {"type": "array", "items": {"type": "string"}}, f"only these verdicts ({', '.join(VERDICTS)}; repeatable)"),
            Param("port", "query", {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535}}, "source or destination port (repeatable)"),
            Param("from_label", "query", {"type": "array", "items": {"type": "string"}}, "source labels, key=value[,key=value] (repeatable: any)"),
            Param("to_label", "query", {"type": "array", "items": {"type": "string"}}, "destination labels, key=value[,key=value] (repeatable: any)"),
        ),
    ),
    Route(
        "GET", "/v1/flows/history", flow_history, "Recent flow events the agent keeps (bounded ring)", "getFlowHistory",
        FlowHistoryList, errors=(400,),
        params=(Param("since", "query", {"type": "number", "exclusiveMinimum": 0}, "only events of the last SECONDS"),),
    ),
    Route("GET", "/v1/fqdn/cache", fqdn_cache, "Names the endpoints resolved through the DNS proxy, with their addresses",
          "getFqdnCache", FQDNCacheList),
    Route("GET", "/openapi.json", openapi, "This OpenAPI document", "getOpenapi", None),
)


def build_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[_json_errors])
    app[_AGENT] = agent
    for r in ROUTES:
        app.router.add_route(r.method, r.aiohttp_path, r.handler)
    return app


def _refuse_live_socket(path: Path) -> None:
    """Remove a stale socket file, but never steal one an agent still listens on."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise RuntimeError(f"{path}: another agent is already listening on this socket")


class ApiServer:
    """The REST API on the agent's unix socket and /metrics on loopback TCP, as
    configured in the agent's AgentConfig: the Service the daemon starts."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        cfg = self.agent.config
        socket_path, metrics_host, metrics_port = cfg.socket, cfg.metrics_host, cfg.metrics_port
        socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _refuse_live_socket(socket_path)
        self._runner = web.AppRunner(build_app(self.agent), handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(socket_path))
        await site.start()
        os.chmod(socket_path, 0o600)
        if metrics_port is not None:
            app = web.Application()

            async def metrics(_: web.Request) -> web.Response:
                return web.Response(body=await self.agent.scrape(), content_type="text/plain")

            app.router.add_get("/metrics", metrics)
            self._metrics_runner = web.AppRunner(app, handle_signals=False)
            await self._metrics_runner.setup()
            msite = web.TCPSite(self._metrics_runner, metrics_host, metrics_port)
            await msite.start()
            server = msite._server  # aiohttp has no public accessor for the bound port
            self.metrics_port = server.sockets[0].getsockname()[1] if server and server.sockets else metrics_port

    async def stop(self) -> None:
        for runner in (self._runner, self._metrics_runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._metrics_runner = None
