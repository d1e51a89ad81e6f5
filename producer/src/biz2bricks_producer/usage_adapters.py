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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from biz2bricks_core.errors import InvalidEventError

__all__ = ["TokenFields", "token_fields"]


class TokenFields(TypedDict):
    """The token fields of ``UsageProducer.record_tokens``."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cache_write_1h_tokens: int


def _as_mapping(usage: Any) -> Mapping[str, Any]:
    """A dict of the usage: SDK objects are pydantic models (or have ``to_dict``)."""
    if isinstance(usage, Mapping):
        return usage
    for method in ("model_dump", "to_dict"):
        dump = getattr(usage, method, None)
        if callable(dump):
            dumped = dump()
            if isinstance(dumped, Mapping):
                return dumped
    if hasattr(usage, "__dict__"):
        return {k: v for k, v in vars(usage).items() if not k.startswith("_")}
    raise InvalidEventError(f"usage: {type(usage).__name__} is neither a mapping nor an SDK object")


def _int(usage: Mapping[str, Any], *path: str) -> int:
    """The count at ``path`` (0 when absent or null); anything but an int is an error."""
    value: Any = usage
    for step in path:
        if not isinstance(value, Mapping):
            return 0
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
    (("inputTokens", "outputTokens"), _bedrock_converse),
    (("input_tokens",), _anthropic),  # neither cached nor detailed: the same fields either way
]


def token_fields(usage: Any) -> TokenFields:
    """The contract's token fields of a provider usage object or dict (InvalidEventError if
    its shape is not one of the known APIs)."""
    mapping = _as_mapping(usage)
    # A whole response body (or the Gemini response) carries usage one level down.
    for nested in ("usage", "usage_metadata", "usageMetadata"):
        inner = mapping.get(nested)
        if isinstance(inner, Mapping) or (inner is not None and not isinstance(inner, int)):
            mapping = _as_mapping(inner)
            break
    for keys, adapter in _SHAPES:
        if any(key in mapping for key in keys):
            return adapter(mapping)
    raise InvalidEventError(f"usage: unknown shape with keys {sorted(mapping)[:10]}")
