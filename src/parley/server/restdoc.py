"""docs/rest.md, rendered from the OpenAPI document (``server/openapi.py``).

``python -m parley.server.restdoc > docs/rest.md`` regenerates it; a test fails when the
committed page differs from what the current document renders.
"""

from __future__ import annotations

import json
import sys
from typing import Any

_METHODS = ("get", "post", "put", "patch", "delete")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: dict[str, Any] | None) -> str:
    """A short Markdown rendering of a JSON Schema's type."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{name.lower()})"
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " | ".join(type_of(s) for s in schema[key])
    if "enum" in schema:
        return " | ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(type_of({**schema, "type": k}) for k in kind)
    if kind == "array":
        return f"array of {type_of(schema.get('items'))}"
    if kind == "object" and "additionalProperties" in schema and not schema.get("properties"):
        extra = schema["additionalProperties"]
        return f"object of {type_of(extra if isinstance(extra, dict) else None)}"
    text = str(kind)
    if "format" in schema:
        text += f" ({schema['format']})"
    return text


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _limits(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "default" in schema:
        parts.append(f"default `{json.dumps(schema['default'])}`")
    return ", ".join(parts)


def _properties(schema: dict[str, Any]) -> list[str]:
    props = schema.get("properties") or {}
    if not props:
        return [f"Type: {type_of(schema)}.", ""]
    required = set(schema.get("required") or [])
    lines = ["| field | type | required | notes |", "|---|---|---|---|"]
    for name, prop in props.items():
        notes = " ".join(x for x in (prop.get("description", ""), _limits(prop)) if x)
        lines.append(
            f"| `{name}` | {_cell(type_of(prop))} | {'yes' if name in required else 'no'}"
            f" | {_cell(notes)} |"
        )
    return [*lines, ""]


def _operation(method: str, path: str, op: dict[str, Any], default_auth: bool) -> list[str]:
    out = [f"### `{method.upper()} {path}`", ""]
    for key in ("summary", "description"):
        if op.get(key):
            out += [op[key], ""]
    security = op.get("security")
    needs_auth = default_auth if security is None else bool(security)
    out += [
        "Authentication: " + ("`Authorization: Bearer JWT`." if needs_auth else "none."),
        "",
    ]
    params = op.get("parameters") or []
    if params:
        out += ["| parameter | in | type | required | notes |", "|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema") or {}
            notes = " ".join(x for x in (p.get("description", ""), _limits(schema)) if x)
            out.append(
                f"| `{p['name']}` | {p['in']} | {_cell(type_of(schema))}"
                f" | {'yes' if p.get('required') else 'no'} | {_cell(notes)} |"
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        for content_type, media in (body.get("content") or {}).items():
            out += [f"Request body (`{content_type}`):", ""]
            out += _properties(media.get("schema") or {})
    responses = op.get("responses") or {}
    if responses:
        out += ["| status | meaning | body |", "|---|---|---|"]
        for status, response in responses.items():
            content: dict[str, Any] = response.get("content") or {}
            first: dict[str, Any] = next(iter(content.values()), {})
            schema = first.get("schema")
            body_type = type_of(schema) if schema else ""
            out.append(
                f"| {status} | {_cell(response.get('description', ''))} | {_cell(body_type)} |"
            )
        out.append("")
    return out


def render(doc: dict[str, Any]) -> str:
    info = doc.get("info", {})
    default_auth = bool(doc.get("security"))
    lines = [
        f"# {info.get('title', 'REST API')}",
        "",
        "<!-- Generated from src/parley/server/openapi.py by"
        " `python -m parley.server.restdoc > docs/rest.md`; do not edit by hand. -->",
        "",
        f"API version {info.get('version', '')}. The same description is served as OpenAPI"
        f" {doc.get('openapi', '3')} at `GET /openapi.json`. Requests and responses are JSON;"
        ' every error is `{"error": {"code", "message"}}` with the status below. Ids are'
        " strings. Real-time traffic (sending, receipts, typing) is on the WebSocket: see"
        " [protocol.md](protocol.md).",
        "",
        "## Endpoints",
        "",
        "| method | path | what |",
        "|---|---|---|",
    ]
    ops: list[tuple[str, str, dict[str, Any]]] = []
    for path, item in (doc.get("paths") or {}).items():
        for method in _METHODS:
            if method in item:
                ops.append((method, path, item[method]))
    for method, path, op in ops:
        anchor = f"{method} {path}".lower()
        anchor = "".join(c for c in anchor if c.isalnum() or c in " -_").replace(" ", "-")
        lines.append(
            f"| {method.upper()} | [`{path}`](#{anchor}) | {_cell(op.get('summary', ''))} |"
        )
    lines.append("")
    for method, path, op in ops:
        lines += _operation(method, path, op, default_auth)
    schemas = (doc.get("components") or {}).get("schemas") or {}
    if schemas:
        lines += ["## Schemas", ""]
        for name, schema in schemas.items():
            lines += [f"### {name}", ""]
            if schema.get("description"):
                lines += [schema["description"], ""]
            lines += _properties(schema)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    from parley.server.openapi import document

    sys.stdout.write(render(document()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
