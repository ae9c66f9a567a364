"""Renders the API's route table into an OpenAPI 3.1 document from the pydantic models.

Pure: the schema is a function of a route table (agent.api.server.ROUTES) and agent.core.models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from agent.api.routes import Route
from agent.core.models import ErrorBody

_REF = "#/components/schemas/{model}"


def openapi_document(routes: Iterable[Route], version: str = "0.1.0") -> dict[str, Any]:
    routes = tuple(routes)
    models: set[type[BaseModel]] = {ErrorBody}
    for r in routes:
        models.update(m for m in (r.request, r.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    inputs = [(m, "validation") for m in ordered if any(r.request is m for r in routes)]
    outputs = [(m, "serialization") for m in ordered]
    refs, defs = models_json_schema(inputs + outputs, ref_template=_REF)
    schemas = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return refs[(model, mode)]

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary, "responses": {}}
        if r.params:
            op["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required or p.where == "path", "description": p.description, "schema": p.schema}
                for p in r.params
            ]
        if r.request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(r.request, "validation")}}}
        if r.response is None:
            op["responses"][str(r.status)] = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
        else:
            media = r.stream or "application/json"
            desc = "a stream, one object per line" if r.stream else "OK"
            body = {"description": desc, "content": {media: {"schema": ref(r.response, "serialization")}}}
            for code in (r.status, *r.extra_status):
                op["responses"][str(code)] = body
        for code in r.errors:
            op["responses"][str(code)] = {"description": "error", "content": {"application/json": {"schema": ref(ErrorBody, "serialization")}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ciliate agent API", "version": version, "description": "Served on the agent's unix socket."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
