"""Services and EndpointSlices from the API server -> policy/'s ServiceCatalog.

Only what `toServices` needs is read (pydantic shapes that ignore the rest):
a Service's labels and selector, and the addresses of the ready endpoints
of the EndpointSlices labelled `kubernetes.io/service-name` with its name.
A slice's `ready` condition left unset counts as ready (the API's own
reading of it); FQDN slices carry no address and are skipped. A malformed
object is skipped with a warning, never fatal: it then selects nothing.
Pure: no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from ipaddress import ip_address
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from policy.families import IPAddress
from policy.services import Service, ServiceCatalog

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Meta(_Shape):
    name: str
    namespace: str = "default"
    labels: dict[str, str] | None = None


class _ServiceSpec(_Shape):
    selector: dict[str, str] | None = None


class ServiceObject(_Shape):
    metadata: _Meta
    spec: _ServiceSpec = _ServiceSpec()


class _Conditions(_Shape):
    ready: bool | None = None


class _Endpoint(_Shape):
    addresses: list[str] = []
    conditions: _Conditions = _Conditions()


class EndpointSliceObject(_Shape):
    metadata: _Meta
    addressType: str = "IPv4"
    endpoints: list[_Endpoint] | None = None

    def ready_addresses(self) -> list[IPAddress]:
        if self.addressType not in ("IPv4", "IPv6"):
            return []
        out = []
        for ep in self.endpoints or ():
            if ep.conditions.ready is False:
                continue
            for a in ep.addresses:
                try:
                    out.append(ip_address(a))
                except ValueError:
                    log.warning("EndpointSlice %s/%s: %r is not an IP address; skipped",
                                self.metadata.namespace, self.metadata.name, a)
        return out


def catalog(services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]) -> ServiceCatalog:
    addresses: dict[tuple[str, str], list[IPAddress]] = {}
    for obj in slices:
        try:
            s = EndpointSliceObject.model_validate(obj)
        except ValidationError as e:
            log.warning("EndpointSlice skipped: %s", e.errors(include_url=False)[:1])
            continue
        owner = (s.metadata.labels or {}).get(SERVICE_NAME_LABEL)
        if owner:
            addresses.setdefault((s.metadata.namespace, owner), []).extend(s.ready_addresses())
    out = []
    for obj in services:
        try:
            svc = ServiceObject.model_validate(obj)
        except ValidationError as e:
            log.warning("Service skipped: %s", e.errors(include_url=False)[:1])
            continue
        key = (svc.metadata.namespace, svc.metadata.name)
        out.append(Service(key[0], key[1], dict(svc.metadata.labels or {}), dict(svc.spec.selector or {}),
                           tuple(sorted(set(addresses.get(key, ())), key=lambda a: (a.version, a)))))
    return ServiceCatalog.of(out)
