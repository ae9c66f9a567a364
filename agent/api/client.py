"""A small synchronous client of the agent's REST API over its unix socket (httpx).

Used by the CLI and by ciliate-cni. Errors are AgentUnavailable (nothing
listening) or AgentError (the agent said no, with its reason). Does socket I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from agent.api.address import AgentError, AgentUnavailable, default_socket  # noqa: F401 (re-exported: the CLI and CNI catch them here)
from agent.core.flow_history import FlowHistoryList
from agent.core.models import (
    FQDNCacheList,
    BpfPolicyDump,
    Endpoint,
    EndpointConfig,
    EndpointCreate,
    EndpointList,
    ErrorBody,
    FlowEvent,
    Health,
    IdentityList,
    PolicyList,
    PolicyStatus,
    Status,
)

M = TypeVar("M", bound=BaseModel)


class AgentClient:
    def __init__(self, socket_path: Path | None = None, timeout: float = 30.0) -> None:
        self.socket_path = socket_path or default_socket()
        self._http = httpx.Client(
            # Plain HTTP on the unix socket: verify=False spares loading the
            # system CA bundle (34 ms of every CLI call and CNI ADD).
            transport=httpx.HTTPTransport(uds=str(self.socket_path), verify=False), base_url="http://ciliate-agent",
            timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unavailable(self, exc: Exception) -> AgentUnavailable:
        return AgentUnavailable(f"cannot reach the agent at {self.socket_path} ({exc}); is `ciliate agent` running?")

    def _call(self, method: str, path: str, model: type[M], *, ok: Iterable[int] = (200,), **kw) -> M:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        if resp.status_code not in ok:
            raise _error(resp)
        try:
            return model.model_validate_json(resp.content)
        except ValidationError as exc:
            raise AgentError(resp.status_code, "unexpected reply from the agent", str(exc)) from exc

    def health(self) -> Health:
        return self._call("GET", "/v1/healthz", Health, ok=(200, 503))

    def status(self) -> Status:
        return self._call("GET", "/v1/status", Status)

    def endpoints(self, container_id: str | None = None, ifname: str | None = None, host_ifname: str | None = None) -> list[Endpoint]:
        params = {
            k: v for k, v in (("container_id", container_id), ("ifname", ifname), ("host_ifname", host_ifname)) if v is not None
        }
        return self._call("GET", "/v1/endpoints", EndpointList, params=params).endpoints

    def endpoint(self, endpoint_id: int) -> Endpoint:
        return self._call("GET", f"/v1/endpoints/{endpoint_id}", Endpoint)

    def create_endpoint(self, req: EndpointCreate, wait: float | None = None) -> Endpoint:
        params = {"wait": str(wait)} if wait else {}
        return self._call(
            "POST", "/v1/endpoints", Endpoint, ok=(200, 201), params=params,
            # Absent is the default: an agent that predates a field (ipv6) still takes an IPv4-only request.
            content=req.model_dump_json(exclude_none=True), headers={"Content-Type": "application/json"},
        )

    def configure_endpoint(self, endpoint_id: int, cfg: EndpointConfig, wait: float | None = None) -> Endpoint:
        params = {"wait": str(wait)} if wait else {}
        return self._call(
            "PATCH", f"/v1/endpoints/{endpoint_id}/config", Endpoint, params=params,
            content=cfg.model_dump_json(exclude_unset=True), headers={"Content-Type": "application/json"},
        )

    def delete_endpoint(self, endpoint_id: int) -> Endpoint:
        return self._call("DELETE", f"/v1/endpoints/{endpoint_id}", Endpoint)

    def policies(self) -> PolicyList:
        return self._call("GET", "/v1/policies", PolicyList)

    def policy(self, name: str) -> PolicyStatus:
        return self._call("GET", f"/v1/policies/{quote(name, safe='/')}", PolicyStatus)

    def identities(self) -> IdentityList:
        return self._call("GET", "/v1/identities", IdentityList)

    def fqdn_cache(self) -> FQDNCacheList:
        return self._call("GET", "/v1/fqdn/cache", FQDNCacheList)

    def bpf_policy(self, endpoint_id: int) -> BpfPolicyDump:
        return self._call("GET", f"/v1/bpf/policy/{endpoint_id}", BpfPolicyDump)

    def flow_history(self, since: float | None = None) -> FlowHistoryList:
        params = {"since": str(since)} if since is not None else {}
        return self._call("GET", "/v1/flows/history", FlowHistoryList, params=params)

    def flows(
        self,
        types: Iterable[str] = (),
        *,
        verdicts: Iterable[str] = (),
        ports: Iterable[int] = (),
        from_labels: Iterable[str] = (),
        to_labels: Iterable[str] = (),
        on_subscribed: Callable[[], None] | None = None,
    ) -> Iterator[FlowEvent]:
        """Live events the agent filtered for us (see agent/core/flow_filter.py).
        `on_subscribed` is called once the agent answered: every event from
        then on reaches this stream."""
        params = [("type", t) for t in types]
        params += [("verdict", v) for v in verdicts] + [("port", str(p)) for p in ports]
        params += [("from_label", x) for x in from_labels] + [("to_label", x) for x in to_labels]
        try:
            with self._http.stream("GET", "/v1/flows", params=params, timeout=httpx.Timeout(None, connect=5.0)) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise _error(resp)
                if on_subscribed is not None:
                    on_subscribed()
                for line in resp.iter_lines():
                    if line.strip():
                        yield FlowEvent.model_validate_json(line)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc


def _error(resp: httpx.Response) -> AgentError:
    try:
        body = ErrorBody.model_validate_json(resp.content)
        return AgentError(resp.status_code, body.error, body.detail)
    except (ValidationError, json.JSONDecodeError):
        return AgentError(resp.status_code, f"HTTP {resp.status_code}", resp.text[:500] or None)
