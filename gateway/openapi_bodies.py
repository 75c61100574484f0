"""Request-body schemas for the OpenAPI document (``/openapi.json``).

The routes read raw bodies and parse them themselves (gateway/parse.py, gateway/protocols/,
gateway/routes/admin.py), so FastAPI cannot infer their shape. These schemas describe the
fields the gateway checks; in the data API's bodies unknown fields are allowed and travel
upstream untouched, the admin bodies (``additionalProperties: false``) refuse them. They
document the API and drive the schema-based tests; they are not used to parse requests.
"""

from __future__ import annotations

from typing import Any

_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
}

_OPENAI_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {
            "type": "string",
            "enum": ["system", "developer", "user", "assistant", "tool", "function"],
        },
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": _TEXT_PART},
                {"type": "null"},
            ]
        },
    },
}

_ANTHROPIC_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
    },
}

_MODEL = {"type": "string", "minLength": 1, "examples": ["deepseek-chat", "auto"]}
_MAX_TOKENS = {"type": "integer", "minimum": 1}
_STREAM = {"type": "boolean"}

CHAT_COMPLETION = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": _MODEL,
        "messages": {"type": "array", "minItems": 1, "items": _OPENAI_MESSAGE},
        "max_tokens": _MAX_TOKENS,
        "max_completion_tokens": _MAX_TOKENS,
        "stream": _STREAM,
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "tools": {"type": "array", "items": {"type": "object"}},
        "response_format": {"type": "object"},
    },
}

COMPLETION = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": _MODEL,
        "prompt": {"type": "string"},
        "suffix": {"type": "string"},
        "max_tokens": _MAX_TOKENS,
        "stream": _STREAM,
    },
}

MESSAGES = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "properties": {
        "model": _MODEL,
        "max_tokens": _MAX_TOKENS,
        "messages": {"type": "array", "minItems": 1, "items": _ANTHROPIC_MESSAGE},
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
        "stream": _STREAM,
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

COUNT_TOKENS = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": _MODEL,
        "messages": {"type": "array", "minItems": 1, "items": _ANTHROPIC_MESSAGE},
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
    },
}

RESPONSES = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": _MODEL,
        "input": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": {"type": "object"}},
            ]
        },
        "instructions": {"type": "string"},
        "max_output_tokens": _MAX_TOKENS,
        "stream": _STREAM,
        "tools": {"type": "array", "items": {"type": "object"}},
        "reasoning": {"type": "object"},
    },
}

TEAM = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200}},
}

KEY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["team"],
    "properties": {
        "team": {"type": "string", "description": "team id or name"},
        "name": {"type": "string", "maxLength": 200},
        "allowed_models": {"anyOf": [{"type": "array", "items": _MODEL}, {"type": "null"}]},
        "may_override_tier": {"type": "boolean"},
        "max_tokens_ceiling": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, {"type": "null"}]
        },
    },
}

BUDGET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scope", "scope_id", "period", "limit_usd"],
    "properties": {
        "scope": {"type": "string", "enum": ["team", "key"]},
        "scope_id": {"type": "string"},
        "period": {"type": "string", "enum": ["day", "week", "month", "total"]},
        "limit_usd": {"type": "number", "exclusiveMinimum": 0},
        "soft_thresholds": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        },
        "downgrade_at": {
            "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 1}, {"type": "null"}]
        },
    },
}

_PER_MINUTE = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, {"type": "null"}]}

LIMITS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"requests_per_minute": _PER_MINUTE, "tokens_per_minute": _PER_MINUTE},
}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body the route parses itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
