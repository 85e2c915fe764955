"""The OpenAPI 3.1 document, generated from the route table (so it cannot drift from what is served)."""

from __future__ import annotations

import re
from typing import Any

from bastion import __version__
from bastion.console.routes import Access, Route

_PARAM = re.compile(r"{([a-z_]+)(?::([^{}]*(?:{[^{}]*}[^{}]*)*))?}")
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _path(route: Route) -> tuple[str, list[dict[str, Any]]]:
    params = []
    for match in _PARAM.finditer(route.path):
        schema: dict[str, Any] = {"type": "string"}
        if match.group(2):
            schema["pattern"] = f"^{match.group(2)}$"
        params.append({"name": match.group(1), "in": "path", "required": True, "schema": schema})
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path), params


def document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in routes:
        if not route.api:
            continue
        path, params = _path(route)
        params += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in route.params.items()]
        operation: dict[str, Any] = {
            "summary": route.summary, "operationId": re.sub(r"[^A-Za-z0-9]+", "_", route.name).strip("_"),
            "parameters": params,
            "responses": {
                "200": {"description": "OK", **({"content": {"application/json": {"schema": route.response}}}
                                                 if route.response else {})},
                "400": {"description": "bad input", "content": {"application/json": {"schema": ERROR}}},
                "401": {"description": "not authenticated", "content": {"application/json": {"schema": ERROR}}},
                "403": {"description": "CSRF, origin or step-up", "content": {"application/json": {"schema": ERROR}}},
                "404": {"description": "not found, or not allowed", "content": {"application/json": {"schema": ERROR}}},
            },
        }
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        elif route.form is not None:
            operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                "schema": route.form, "encoding": {"file": {"contentType": "application/octet-stream"}}}}}
        if route.access is not Access.PUBLIC:
            # Token routes document the token; a console session (cookie + CSRF header) works for them too.
            operation["security"] = [{"token": [route.scope]}] if route.scope else [{"session": []}]
        if route.websocket:
            operation["description"] = "WebSocket endpoint (GET with Upgrade: websocket)."
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Bastion console API", "version": __version__},
        "paths": paths,
        "components": {"securitySchemes": {
            "session": {"type": "apiKey", "in": "cookie", "name": "__Host-bastion",
                        "description": "console session; state changes also need the X-CSRF-Token header"},
            "token": {"type": "http", "scheme": "bearer",
                      "description": "API token from `bastion token create` (scopes: me, audit:read, "
                                     "audit:write, admin:read, admin:write)"}}},
    }
