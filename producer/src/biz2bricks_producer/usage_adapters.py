"""Provider usage objects -> the event contract's token fields.

The mappings are those of genai-prices' usage extractors (``genai_prices.extract_usage``),
kept here as a few lines each because importing genai-prices costs the calling process over
a second and the producer must stay light; tests/producer/test_usage_adapters.py checks both
give the same fields on recorded responses. The differences that matter for billing:

- OpenAI Chat Completions (and OpenAI-compatible APIs): ``prompt_tokens`` already includes
  ``prompt_tokens_details.cached_tokens``; ``completion_tokens`` includes reasoning tokens.
- OpenAI Responses: ``input_tokens`` includes ``input_tokens_details.cached_tokens``;
  ``output_tokens`` includes reasoning tokens.
- Anthropic Messages: ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``; ``cache_creation.ephemeral_1h_input_tokens`` is the
  1-hour part of the cache writes.
- Bedrock Converse: ``inputTokens`` excludes ``cacheReadInputTokens`` and
  ``cacheWriteInputTokens``.
- Google Gemini (``usage_metadata``, snake or camel case): ``prompt_token_count`` includes
  ``cached_content_token_count``; ``thoughts_token_count`` is billed as output and
  ``tool_use_prompt_token_count`` as input.

Any object shape is read the same way: mappings, pydantic models (the SDKs'), dataclasses and
attribute objects (``SimpleNamespace``, wrappers) are turned into plain mappings all the way
down (``_plain``), so nested counts (cached tokens, 1-hour cache writes) are read whatever the
shape. A value that is none of these is an unknown shape and raises InvalidEventError: never
a silent zero.

The price context (``context_fields``) comes from the same objects: a response's or usage's
``service_tier`` (OpenAI: ``default``, ``flex``, ``priority``; Anthropic: ``standard``,
``priority``, ``batch``), Anthropic's ``speed`` and ``inference_geo``, web-search requests
(Anthropic ``server_tool_use.web_search_requests``, OpenAI Responses ``web_search_call``
output items), and batch results (an OpenAI batch output line ``{"response": {"body": ..}}``,
an Anthropic batch result ``{"result": {"message": ..}}``, a Gemini batch output line
``{"key": .., "response": {.., "usageMetadata": ..}}``), which are ``processing=batch``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict

from biz2bricks_core.errors import InvalidEventError

__all__ = ["ContextFields", "TokenFields", "context_fields", "token_fields", "usage_fields"]


class TokenFields(TypedDict):
    """The token fields of ``UsageProducer.record_tokens``."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cache_write_1h_tokens: int


_SCALARS: Final = (str, int, float, bool, type(None))
# Deeper than any provider's usage: a cycle or a runaway object, not a usage.
_MAX_DEPTH: Final = 12


class _Opaque:
    """A value inside a response that no count is read from (bytes, datetimes, enums, a
    tool call's deeply nested arguments): kept opaque, an error only if a count is read there."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _proto_dict(value: Any) -> Mapping[str, Any] | None:
    """A proto-plus or protobuf message as a mapping (Vertex AI and google-generativeai
    ``usage_metadata``), or None when ``value`` is neither."""
    to_dict = getattr(type(value), "to_dict", None)  # proto-plus: a classmethod of the type
    if callable(to_dict) and hasattr(type(value), "pb"):
        dumped = to_dict(value, preserving_proto_field_name=True)
        return dumped if isinstance(dumped, Mapping) else None
    if hasattr(value, "DESCRIPTOR") and hasattr(value, "ListFields"):  # raw protobuf
        from google.protobuf.json_format import MessageToDict

        message: dict[str, Any] = MessageToDict(value, preserving_proto_field_name=True)
        return message
    return None


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain mappings, lists and scalars, whatever object shape carries it.

    Only the top level must be an object: a nested value of another kind (bytes, a datetime,
    an object nested past _MAX_DEPTH) stays opaque, and reading a count there is an error
    (``_int``), so a whole response with unrelated fields is read, never silently zeroed.
    """
    if isinstance(value, _SCALARS):
        return value
    if depth > _MAX_DEPTH:
        return _Opaque("nested too deep")
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    for method in ("model_dump", "to_dict"):  # pydantic models (the SDKs'), their wrappers
        dump = getattr(value, method, None)
        if callable(dump):
            dumped = dump()
            if isinstance(dumped, Mapping):
                return _plain(dumped, depth + 1)
    proto = _proto_dict(value)
    if proto is not None:
        return _plain(proto, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)
        }
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict) and not isinstance(value, type):
        return {k: _plain(v, depth + 1) for k, v in attributes.items() if not k.startswith("_")}
    if depth > 0:
        return _Opaque(type(value).__name__)
    raise InvalidEventError(
        f"usage: unknown shape {type(value).__name__} (not a mapping, pydantic model, "
        "dataclass or attribute object)"
    )


def _as_mapping(usage: Any) -> Mapping[str, Any]:
    """A plain dict of the usage (InvalidEventError when it is no object at all)."""
    plain = _plain(usage)
    if not isinstance(plain, Mapping):
        raise InvalidEventError(
            f"usage: {type(usage).__name__} is neither a mapping nor an SDK object"
        )
    return plain


def _int(usage: Mapping[str, Any], *path: str) -> int:
    """The count at ``path`` (0 when absent or null); anything but an int is an error."""
    value: Any = usage
    for index, step in enumerate(path):
        if value is None:
            return 0
        if not isinstance(value, Mapping):
            where = ".".join(path[:index])
            raise InvalidEventError(f"usage.{where}: unknown shape {value!r}, not an object")
        value = value.get(step)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEventError(f"usage.{'.'.join(path)}: {value!r} is not a token count")
    return value


def _fields(inp: int, out: int, read: int = 0, write: int = 0, write_1h: int = 0) -> TokenFields:
    return TokenFields(
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
    )


def _openai_chat(u: Mapping[str, Any]) -> TokenFields:
    cached = _int(u, "prompt_tokens_details", "cached_tokens") or _int(u, "prompt_cache_hit_tokens")
    written = _int(u, "prompt_tokens_details", "cache_write_tokens")
    return _fields(_int(u, "prompt_tokens"), _int(u, "completion_tokens"), cached, written)


def _openai_responses(u: Mapping[str, Any]) -> TokenFields:
    return _fields(
        _int(u, "input_tokens"),
        _int(u, "output_tokens"),
        _int(u, "input_tokens_details", "cached_tokens"),
        _int(u, "input_tokens_details", "cache_write_tokens"),
    )


def _anthropic(u: Mapping[str, Any]) -> TokenFields:
    read = _int(u, "cache_read_input_tokens")
    write = _int(u, "cache_creation_input_tokens")
    return _fields(
        _int(u, "input_tokens") + read + write,
        _int(u, "output_tokens"),
        read,
        write,
        _int(u, "cache_creation", "ephemeral_1h_input_tokens"),
    )


def _langchain(u: Mapping[str, Any]) -> TokenFields:
    """LangChain's ``UsageMetadata`` (``AIMessage.usage_metadata``): ``input_tokens`` already
    includes ``input_token_details.cache_read`` and ``cache_creation``."""
    write = _int(u, "input_token_details", "cache_creation")
    return _fields(
        _int(u, "input_tokens"),
        _int(u, "output_tokens"),
        _int(u, "input_token_details", "cache_read"),
        write,
        min(write, _int(u, "input_token_details", "ephemeral_1h_input_tokens")),
    )


def _bedrock_converse(u: Mapping[str, Any]) -> TokenFields:
    read, write = _int(u, "cacheReadInputTokens"), _int(u, "cacheWriteInputTokens")
    write_1h = sum(
        _int(d, "inputTokens")
        for d in u.get("cacheDetails") or ()
        if isinstance(d, Mapping) and d.get("ttl") == "1h"
    )
    return _fields(
        _int(u, "inputTokens") + read + write, _int(u, "outputTokens"), read, write, write_1h
    )


def _gemini(u: Mapping[str, Any]) -> TokenFields:
    def count(snake: str) -> int:
        camel = snake.split("_")[0] + "".join(p.title() for p in snake.split("_")[1:])
        return _int(u, snake) or _int(u, camel)

    return _fields(
        count("prompt_token_count") + count("tool_use_prompt_token_count"),
        count("candidates_token_count") + count("thoughts_token_count"),
        count("cached_content_token_count"),
    )


# The shape decides (gateways reuse the OpenAI and Anthropic shapes under other provider
# names), first match wins: each key set below belongs to one API only.
_SHAPES: list[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], TokenFields]]] = [
    (("prompt_tokens",), _openai_chat),
    (("prompt_token_count", "promptTokenCount", "candidates_token_count"), _gemini),
    (("candidatesTokenCount", "total_token_count", "totalTokenCount"), _gemini),
    (("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation"), _anthropic),
    (("input_tokens_details", "output_tokens_details"), _openai_responses),
    (("input_token_details", "output_token_details"), _langchain),
    (("inputTokens", "outputTokens"), _bedrock_converse),
    (("input_tokens",), _anthropic),  # neither cached nor detailed: the same fields either way
]


def _usage_of(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """The usage inside a whole response body (or a Gemini response), else the mapping."""
    for nested in ("usage", "usage_metadata", "usageMetadata"):
        inner = mapping.get(nested)
        if isinstance(inner, Mapping):
            return inner
    return mapping


def _unwrap_batch(mapping: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The response inside a batch result line, and whether it was one."""
    response = mapping.get("response")
    if isinstance(response, Mapping) and isinstance(response.get("body"), Mapping):
        return response["body"], True  # OpenAI batch output line
    result = mapping.get("result")
    if isinstance(result, Mapping) and isinstance(result.get("message"), Mapping):
        return result["message"], True  # Anthropic message batch result
    if (
        "key" in mapping
        and isinstance(response, Mapping)
        and any(k in response for k in ("usageMetadata", "usage_metadata"))
    ):
        return response, True  # Gemini batch output line: {"key": .., "response": {..}}
    return mapping, False


def _tokens(mapping: Mapping[str, Any]) -> TokenFields:
    usage = _usage_of(mapping)
    for keys, adapter in _SHAPES:
        if any(key in usage for key in keys):
            return adapter(usage)
    raise InvalidEventError(f"usage: unknown shape with keys {sorted(usage)[:10]}")


def token_fields(usage: Any) -> TokenFields:
    """The contract's token fields of a provider usage object or dict (InvalidEventError if
    its shape is not one of the known APIs)."""
    return _tokens(_unwrap_batch(_as_mapping(usage))[0])


class ContextFields(TypedDict, total=False):
    """The price-context keywords of ``UsageProducer.record_tokens`` a response names."""

    processing: str
    service_tier: str
    speed: str
    route: str
    web_search_requests: int


class UsageFields(TokenFields, ContextFields):
    """Token and price-context keywords of ``record_tokens``."""


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(f"usage.{name}: {value!r} is not a string")
    return value.strip().lower() or None


# Anthropic reports ``inference_geo: "not_available"`` for models without geo routing
# (every model before Opus 4.6): no region was chosen, the standard price applies.
_NO_GEO: Final = frozenset({"not_available"})


def _context(body: Mapping[str, Any], batch: bool) -> ContextFields:
    usage = _usage_of(body)
    found = ContextFields()
    tier = _text(usage.get("service_tier"), "service_tier") or _text(
        body.get("service_tier"), "service_tier"
    )
    if tier == "batch":  # Anthropic reports a batch result's tier as "batch"
        batch, tier = True, None
    if batch:
        found["processing"] = "batch"
    if tier is not None:
        found["service_tier"] = tier
    speed = _text(usage.get("speed"), "speed") or _text(body.get("speed"), "speed")
    if speed is not None:
        found["speed"] = speed
    geo = _text(usage.get("inference_geo"), "inference_geo") or _text(
        body.get("inference_geo"), "inference_geo"
    )
    if geo is not None and geo not in _NO_GEO:
        found["route"] = geo
    searches = _int(usage, "server_tool_use", "web_search_requests")
    output = body.get("output")
    if isinstance(output, list):  # OpenAI Responses: one output item per web search call
        searches += sum(
            1
            for item in output
            if isinstance(item, Mapping) and item.get("type") == "web_search_call"
        )
    if searches:
        found["web_search_requests"] = searches
    return found


def context_fields(response: Any) -> ContextFields:
    """The price context a response, batch result line or usage object names (empty for a
    standard call)."""
    body, batch = _unwrap_batch(_as_mapping(response))
    return _context(body, batch)


def usage_fields(response: Any) -> UsageFields:
    """Token and price-context fields of a response, batch result line or usage object."""
    body, batch = _unwrap_batch(_as_mapping(response))
    return UsageFields(**_tokens(body), **_context(body, batch))
