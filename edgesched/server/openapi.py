"""An OpenAPI 3.1 description of the daemon's HTTP API, served at ``GET /v2/openapi.json``."""

from __future__ import annotations

from typing import Any

from edgesched import __version__

_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "model name (the .tflite file stem)"}


_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "model version: each model has one, \"1\"; another is 404"}


def _get(summary: str, schema: dict[str, Any] | None = None, *, params: bool = False,
         content_type: str = "application/json") -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "ok"}
    if schema is not None:
        ok["content"] = {content_type: {"schema": schema}}
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, "404": _ERROR}}
    if params:
        op["parameters"] = [_NAME]
    return {"get": op}


def _versioned(path: dict[str, Any]) -> dict[str, Any]:
    """``path`` with the ``{version}`` path parameter added to each operation."""
    for op in path.values():
        op["parameters"] = [*op.get("parameters", []), _VERSION]
    return path


def _admin(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary + ". Root or server.admin_group members only (SO_PEERCRED of the "
                             "unix socket peer); TCP peers are refused unless "
                             "server.admin_over_tcp.",
        "responses": {"200": {"description": "done", "content": {"application/json": {
            "schema": {"type": "object"}}}},
                      "400": {**_ERROR, "description": "invalid request"},
                      "403": {**_ERROR, "description": "the peer may not change the daemon"},
                      "409": {**_ERROR, "description": "reload failed; loaded models stay"},
                      "413": {**_ERROR, "description": "body too large"}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": body}}}
    return {"post": op}


def _shared_memory_paths() -> dict[str, Any]:
    """Triton's system shared-memory extension (edgesched.server.shm)."""
    region = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "region name"}
    note = (". Needs server.shared_memory (403 while off) and a unix socket peer; a region "
            "belongs to the uid that registered it (and root).")
    fails = {"400": {**_ERROR, "description": "invalid request, a missing key, out of bounds"},
             "403": {**_ERROR, "description": "off, or another user's region"},
             "404": {**_ERROR, "description": "no such region"},
             "409": {**_ERROR, "description": "the name is registered already"}}
    listed = {"description": "regions", "content": {"application/json": {"schema": {
        "type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "key": {"type": "string"},
            "offset": {"type": "integer"}, "byte_size": {"type": "integer"}}}}}}}

    def op(summary: str, ok: dict[str, Any], named: bool, **extra: Any) -> dict[str, Any]:
        return {"summary": summary + note, "responses": {"200": ok, **fails},
                **({"parameters": [region]} if named else {}), **extra}

    done = {"description": "done (empty body)"}
    base = "/v2/systemsharedmemory"
    return {
        f"{base}/status": {"get": op("every region of the caller", listed, False)},
        f"{base}/region/{{name}}/status": {"get": op("one region", listed, True)},
        f"{base}/region/{{name}}/register": {"post": op(
            "register [offset, offset + byte_size) of the POSIX shared memory object key",
            done, True, requestBody={"required": True, "content": {"application/json": {
                "schema": {"type": "object", "required": ["key", "byte_size"],
                           "properties": {"key": {"type": "string"},
                                          "offset": {"type": "integer", "minimum": 0},
                                          "byte_size": {"type": "integer",
                                                        "minimum": 1}}}}}})},
        f"{base}/region/{{name}}/unregister": {"post": op(
            "unregister a region (requests using it keep it mapped until they end)", done,
            True)},
        f"{base}/unregister": {"post": op("unregister every region of the caller", done,
                                          False)},
    }


def openapi() -> dict[str, Any]:
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"enum": ["BOOL", "UINT8", "INT8", "INT16", "UINT16", "INT32", "UINT32",
                              "INT64", "UINT64", "FP16", "FP32", "FP64"]},
        "data": {"description": "row-major values, flat or nested"},
        "parameters": {"type": "object", "properties": {
            "binary_data_size": {"type": "integer",
                                 "description": "bytes of this tensor after the JSON header"},
            "binary_data": {"type": "boolean"},
            "shared_memory_region": {"type": "string", "description":
                                     "a registered system shared memory region (Triton)"},
            "shared_memory_offset": {"type": "integer", "minimum": 0},
            "shared_memory_byte_size": {"type": "integer", "minimum": 0}}}}}
    infer_request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {
            "priority": {"type": "integer", "minimum": 0,
                         "description": "1 is the highest; 0 means the default class"},
            "timeout": {"type": "integer", "minimum": 0,
                        "description": "deadline in microseconds from arrival"},
            "binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
    infer_response = {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object", "description": "queue_wait_us, service_us, host_us, "
                       "daemon_us, freq_khz, opp, cluster, cluster_name, energy_j, priority, "
                       "outcome"},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}}}}
    infer_errors = {str(code): {**_ERROR, "description": text} for code, text in (
        (400, "invalid request, or a deadline that cannot be met"),
        (404, "unknown model"), (413, "body too large"),
        (429, "queue full (Retry-After)"),
        (503, "shed by a higher-priority request, or shutting down (Retry-After)"),
        (504, "deadline passed while queued"))}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "edgesched", "version": __version__,
                 "description": "Open Inference Protocol (KServe v2 REST) with Triton's binary "
                                "tensor data, schedule-policy, model configuration, statistics "
                                "and system shared-memory extensions."},
        "paths": {
            "/v2/health/live": _get("the daemon is running"),
            "/v2/health/ready": _get("models are loaded and the dispatcher runs"),
            "/v2": _get("server metadata"),
            "/v2/": _get("server metadata (the same as /v2)"),
            "/v2/models/{name}": _get("model metadata", params=True),
            "/v2/models/{name}/versions/{version}": _versioned(
                _get("model metadata of a version (the one served is 1)", params=True)),
            "/v2/models/{name}/ready": _get("model readiness", params=True),
            "/v2/models/{name}/versions/{version}/ready": _versioned(
                _get("model readiness of a version", params=True)),
            "/v2/models/{name}/config": _get(
                "model configuration (Triton's model configuration extension: the JSON form "
                "of its ModelConfig message)", {"type": "object"}, params=True),
            "/v2/models/{name}/versions/{version}/config": _versioned(
                _get("model configuration of a version", {"type": "object"}, params=True)),
            "/v2/models/stats": _get("statistics of every model (Triton's statistics "
                                     "extension)", {"type": "object"}),
            "/v2/models/{name}/stats": _get("statistics of a model", {"type": "object"},
                                            params=True),
            "/v2/models/{name}/versions/{version}/stats": _versioned(
                _get("statistics of a model's version", {"type": "object"}, params=True)),
            "/v2/models/{name}/infer": {"post": {
                "summary": "run the model (queued by priority and deadline)",
                "parameters": [_NAME, {
                    "name": "Inference-Header-Content-Length", "in": "header",
                    "schema": {"type": "integer"},
                    "description": "length of the JSON header when binary tensors follow"}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Infer"}},
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
                "responses": {"200": {"description": "the result", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Result"}},
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
                              **infer_errors}}},
            "/v2/status": _get("queue, models, policy, board, frequencies, energy"),
            "/metrics": _get("Prometheus text format", {"type": "string"},
                             content_type="text/plain"),
            "/v2/openapi.json": _get("this document"),
            "/v2/admin/policy": _admin(
                "switch the scheduling policy (between two requests, on the dispatcher thread)",
                {"type": "object", "required": ["policy"], "additionalProperties": False,
                 "properties": {"policy": {"type": "string", "description":
                                           "performance, powersave, ondemand, conservative, "
                                           "schedutil, learned:NAME or qlearn:NAME (NAME "
                                           "inside policy.dir)"}}}),
            "/v2/admin/models/reload": _admin("load the configured models folder again"),
            "/v2/admin/restore": _admin("restore the cpufreq settings found at start"),
            "/v2/admin/holds": _admin(
                "hold a policy or a frequency floor for a while (released on expiry, by DELETE, "
                "or when this connection closes unless release_on_disconnect is false; the "
                "strongest hold wins: see edgesched.server.holds)",
                {"type": "object", "additionalProperties": False, "properties": {
                    "policy": {"type": "string", "description": "a policy spec to hold"},
                    "min_khz": {"type": "integer", "minimum": 0,
                                "description": "frequency floor for every cluster"},
                    "seconds": {"type": "number", "exclusiveMinimum": 0,
                                "description": "how long (absent: until released)"},
                    "reason": {"type": "string"},
                    "release_on_disconnect": {"type": "boolean"}}}),
            "/v2/admin/holds/{id}": {"delete": {
                **_admin("release a hold")["post"],
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer"}}]}},
            **_shared_memory_paths(),
        },
        "components": {"schemas": {
            "Tensor": tensor, "Infer": infer_request, "Result": infer_response,
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "outcome": {"type": "string"},
                "id": {"type": "string"}}}}},
    }
    paths = doc["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    paths["/v2/models/{name}/versions/{version}/infer"] = {"post": {
        **infer, "summary": infer["summary"] + "; a version (the one served is 1)",
        "parameters": [*infer["parameters"], _VERSION]}}
    return doc
