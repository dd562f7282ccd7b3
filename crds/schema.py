"""Turn pydantic models into structural OpenAPI v3 schemas that the API server accepts.

Kubernetes wants every field typed, no $ref, no anyOf for nullability, and descriptions inline; pydantic's
JSON schema has all of those, so this module rewrites it.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ValidationError

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3 schema of `model` in the structural form CRDs require."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    _DEFAULTS.clear()
    _collect_defaults(model)
    return _convert(raw, defs)


_DEFAULTS: dict[str, dict[str, Any]] = {}


def _collect_defaults(model: type[BaseModel]) -> None:
    """The fully defaulted wire form of every nested model that can be built without arguments."""
    for info in model.model_fields.values():
        for sub in _models_in(info.annotation):
            if sub.__name__ in _DEFAULTS:
                continue
            try:
                _DEFAULTS[sub.__name__] = sub().model_dump(by_alias=True, exclude_none=True, mode="json")
            except ValidationError:
                _DEFAULTS[sub.__name__] = {}
            _collect_defaults(sub)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        # Field-level description and default win over the referenced model's docstring.
        for key in ("description", "default"):
            if key in node:
                target[key] = node[key]
        return target
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = _resolve(node["allOf"][0], defs)
        merged.update({k: v for k, v in node.items() if k != "allOf"})
        return merged
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            merged = _resolve(options[0], defs)
            merged.update({k: v for k, v in node.items() if k not in ("anyOf", "default")})
            if node.get("default") is not None:
                merged["default"] = node["default"]
            return merged
        raise ValueError(f"cannot express a union of several types structurally: {node}")
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEEP}
    if "const" in node:
        out["enum"] = [node["const"]]
        out.setdefault("type", "string")
    if "title" in node and "description" not in out and node.get("type") == "object":
        out["description"] = node["title"]
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties", {})
        if props:
            required = [r for r in node.get("required", []) if r in props]
            out["properties"] = {}
            for name, sub in props.items():
                converted = _convert(sub, defs)
                # A nested object built by default_factory gets its fully defaulted form as default, so
                # the API server fills it in and CEL rules always see every field.
                if name not in required and "$ref" in sub and converted.get("type") == "object":
                    converted.setdefault("default", _DEFAULTS.get(sub["$ref"].rsplit("/", 1)[-1], {}))
                out["properties"][name] = converted
            if required:
                out["required"] = required
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _convert(extra, defs)
        elif extra is True or (not props and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _convert(node.get("items", {}), defs)
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        # JSON Schema 2020 gives the bound itself; OpenAPI v3 wants minimum/maximum plus a boolean.
        if isinstance(out.get(bound), int | float) and not isinstance(out.get(bound), bool):
            out["minimum" if bound == "exclusiveMinimum" else "maximum"] = out[bound]
            out[bound] = True
    if "default" in out and out["default"] is None:
        del out["default"]
    if "type" not in out and "x-kubernetes-preserve-unknown-fields" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out
