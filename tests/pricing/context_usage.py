"""Responses that carry a price context (batch, flex, priority, fast, region, web search), per
provider and shape, with the genai-prices context each is billed in, or the provider's
published price where genai-prices lacks it (the case says so)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final, NamedTuple


class ContextCase(NamedTuple):
    """One recorded response and how it must be billed."""

    name: str
    provider: str
    model: str
    body: dict[str, Any]
    # The genai-prices price_context and web searches of the call; None: unpriced.
    price_context: dict[str, str] | None
    web_searches: int = 0
    # The provider's published price where genai-prices lacks the case (USD).
    published_usd: Decimal | None = None
    unpriced_reason: str | None = None
    # Keywords the caller passes to record_usage (what the response does not say).
    keywords: dict[str, str] | None = None


CASES: Final[list[ContextCase]] = [
    ContextCase(
        "openai chat, batch output line",
        "openai",
        "gpt-4o-mini",
        {
            "id": "batch_req_123",
            "custom_id": "doc-17",
            "response": {
                "status_code": 200,
                "request_id": "req_abc",
                "body": {
                    "object": "chat.completion",
                    "model": "gpt-4o-mini-2024-07-18",
                    "usage": {
                        "prompt_tokens": 4200,
                        "completion_tokens": 350,
                        "total_tokens": 4550,
                        "prompt_tokens_details": {"cached_tokens": 0},
                    },
                    "service_tier": "default",
                },
            },
        },
        {"processing": "batch"},
    ),
    ContextCase(
        "openai responses, flex tier",
        "openai",
        "gpt-5",
        {
            "object": "response",
            "model": "gpt-5-2025-08-07",
            "service_tier": "flex",
            "usage": {
                "input_tokens": 9000,
                "input_tokens_details": {"cached_tokens": 4096},
                "output_tokens": 2000,
                "output_tokens_details": {"reasoning_tokens": 1500},
                "total_tokens": 11000,
            },
        },
        {"service_tier": "flex"},
    ),
    ContextCase(
        "openai chat, priority tier",
        "openai",
        "gpt-4.1",
        {
            "object": "chat.completion",
            "model": "gpt-4.1-2025-04-14",
            "service_tier": "priority",
            "usage": {
                "prompt_tokens": 3000,
                "completion_tokens": 800,
                "prompt_tokens_details": {"cached_tokens": 1024},
            },
        },
        {"service_tier": "priority"},
    ),
    ContextCase(
        "openai responses, default tier, two web searches",
        "openai",
        "gpt-4o",
        {
            "object": "response",
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "output": [
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {"type": "web_search_call", "id": "ws_2", "status": "completed"},
                {"type": "message", "role": "assistant", "content": []},
            ],
            "usage": {
                "input_tokens": 1500,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 400,
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        },
        {},
        web_searches=2,
    ),
    ContextCase(
        "anthropic message batch result",
        "anthropic",
        "claude-sonnet-4-5",
        {
            "custom_id": "doc-9",
            "result": {
                "type": "succeeded",
                "message": {
                    "type": "message",
                    "model": "claude-sonnet-4-5-20250929",
                    "usage": {
                        "input_tokens": 500,
                        "cache_creation_input_tokens": 2048,
                        "cache_read_input_tokens": 8192,
                        "cache_creation": {
                            "ephemeral_5m_input_tokens": 2048,
                            "ephemeral_1h_input_tokens": 0,
                        },
                        "output_tokens": 900,
                        "service_tier": "batch",
                    },
                },
            },
        },
        {"processing": "batch"},
    ),
    ContextCase(
        "anthropic, web search requests",
        "anthropic",
        "claude-sonnet-4-5",
        {
            "type": "message",
            "model": "claude-sonnet-4-5-20250929",
            "usage": {
                "input_tokens": 6000,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 700,
                "server_tool_use": {"web_search_requests": 3},
                "service_tier": "standard",
            },
        },
        {},
        web_searches=3,
    ),
    ContextCase(
        "anthropic fast mode",
        "anthropic",
        "claude-opus-4-8",
        {
            "type": "message",
            "model": "claude-opus-4-8",
            "usage": {
                "input_tokens": 1200,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 4000,
                "output_tokens": 600,
                "service_tier": "standard",
                "speed": "fast",
            },
        },
        {"speed": "fast"},
    ),
    ContextCase(
        "anthropic inference_geo us: no variant in genai-prices 0.2.3, unpriced",
        "anthropic",
        "claude-opus-4-6",
        {
            "type": "message",
            "model": "claude-opus-4-6",
            "usage": {
                "input_tokens": 1000,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 200,
                "inference_geo": "us",
            },
        },
        None,
        unpriced_reason="unknown_variant",
    ),
    ContextCase(
        "anthropic global inference_geo is the standard price",
        "anthropic",
        "claude-opus-4-6",
        {
            "type": "message",
            "model": "claude-opus-4-6",
            "usage": {
                "input_tokens": 1000,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 200,
                "inference_geo": "global",
            },
        },
        {},
    ),
    ContextCase(
        # As the API returns it today for every model before Opus 4.6 (review of issue 25).
        "anthropic inference_geo not_available (a model without geo routing) is standard",
        "anthropic",
        "claude-sonnet-4-5",
        {
            "type": "message",
            "model": "claude-sonnet-4-5-20250929",
            "usage": {
                "input_tokens": 2,
                "cache_creation_input_tokens": 748,
                "cache_read_input_tokens": 44408,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 0,
                    "ephemeral_1h_input_tokens": 748,
                },
                "output_tokens": 368,
                "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                "service_tier": "standard",
                "inference_geo": "not_available",
            },
        },
        {},
    ),
    ContextCase(
        "openai priority on a model without that tier: unpriced, never standard",
        "openai",
        "gpt-3.5-turbo",
        {
            "object": "chat.completion",
            "model": "gpt-3.5-turbo-0125",
            "service_tier": "priority",
            "usage": {"prompt_tokens": 100, "completion_tokens": 20},
        },
        None,
        unpriced_reason="unknown_variant",
    ),
    ContextCase(
        "anthropic sonnet 4 over 200k input: Anthropic's long-context price (genai-prices lacks)",
        "anthropic",
        "claude-sonnet-4-0",
        {
            "type": "message",
            "model": "claude-sonnet-4-20250514",
            "usage": {
                "input_tokens": 250_000,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 2_000,
            },
        },
        None,
        # $6 / $22.50 per MTok: https://docs.anthropic.com/en/docs/about-claude/pricing
        published_usd=Decimal(250_000) * 6 / 10**6 + Decimal(2_000) * Decimal("22.5") / 10**6,
    ),
    ContextCase(
        "gemini REST camelCase, batch (caller names it)",
        "google",
        "gemini-2.5-flash",
        {
            "modelVersion": "gemini-2.5-flash",
            "usageMetadata": {
                "promptTokenCount": 20000,
                "candidatesTokenCount": 900,
                "cachedContentTokenCount": 16000,
                "thoughtsTokenCount": 300,
            },
        },
        {"processing": "batch"},
        keywords={"processing": "batch"},
    ),
    ContextCase(
        "bedrock converse, standard",
        "bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        {
            "usage": {
                "inputTokens": 900,
                "outputTokens": 150,
                "cacheReadInputTokens": 1024,
                "cacheWriteInputTokens": 0,
            },
        },
        {},
    ),
]
