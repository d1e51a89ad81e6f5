"""Usage payloads as the providers return them (shapes of real responses, cached and
reasoning tokens included), with the contract fields they must become."""

from __future__ import annotations

from typing import Any, Final

# (provider, model, genai-prices extractor (provider_id, api_flavor), response body,
#  expected (input, output, cache_read, cache_write, cache_write_1h))
RECORDED: Final[list[tuple[str, str, tuple[str, str], dict[str, Any], tuple[int, ...]]]] = [
    (
        "openai",
        "gpt-4o-2024-08-06",
        ("openai", "chat"),
        {
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
        },
        (2006, 300, 1920, 0, 0),
    ),
    (
        "openai",
        "o3-mini",
        ("openai", "chat"),
        {
            "object": "chat.completion",
            "model": "o3-mini-2025-01-31",
            "usage": {
                "prompt_tokens": 1117,
                "completion_tokens": 1826,
                "total_tokens": 2943,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 1600, "audio_tokens": 0},
            },
        },
        (1117, 1826, 1024, 0, 0),
    ),
    (
        "openai",
        "gpt-5",
        ("openai", "responses"),
        {
            "object": "response",
            "model": "gpt-5-2025-08-07",
            "usage": {
                "input_tokens": 5012,
                "input_tokens_details": {"cached_tokens": 4096},
                "output_tokens": 1536,
                "output_tokens_details": {"reasoning_tokens": 1024},
                "total_tokens": 6548,
            },
        },
        (5012, 1536, 4096, 0, 0),
    ),
    (
        "anthropic",
        "claude-sonnet-4-5",
        ("anthropic", "default"),
        {
            "type": "message",
            "model": "claude-sonnet-4-5-20250929",
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 2048,
                "cache_read_input_tokens": 10240,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1024,
                    "ephemeral_1h_input_tokens": 1024,
                },
                "output_tokens": 503,
                "service_tier": "standard",
                "server_tool_use": None,
            },
        },
        (12 + 2048 + 10240, 503, 10240, 2048, 1024),
    ),
    (
        "anthropic",
        "claude-opus-4-1",
        ("anthropic", "default"),
        {
            "type": "message",
            "model": "claude-opus-4-1-20250805",
            "usage": {
                "input_tokens": 3109,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1782,
            },
        },
        (3109, 1782, 0, 0, 0),
    ),
    (
        "bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        ("aws", "default"),
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "..."}]}},
            "stopReason": "end_turn",
            "usage": {
                "inputTokens": 220,
                "outputTokens": 180,
                "totalTokens": 4496,
                "cacheReadInputTokens": 2048,
                "cacheWriteInputTokens": 2048,
            },
        },
        (220 + 2048 + 2048, 180, 2048, 2048, 0),
    ),
    (
        "google",
        "gemini-2.5-pro",
        ("google", "default"),
        {
            "candidates": [{"content": {"parts": [{"text": "..."}], "role": "model"}}],
            "modelVersion": "gemini-2.5-pro",
            "usageMetadata": {
                "promptTokenCount": 12000,
                "candidatesTokenCount": 400,
                "totalTokenCount": 13600,
                "cachedContentTokenCount": 8000,
                "thoughtsTokenCount": 1200,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12000}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 8000}],
            },
        },
        (12000, 1600, 8000, 0, 0),
    ),
    (
        "google",
        "gemini-2.5-flash",
        ("google", "default"),
        {
            "modelVersion": "gemini-2.5-flash",
            "usageMetadata": {
                "promptTokenCount": 850,
                "candidatesTokenCount": 120,
                "totalTokenCount": 1501,
                "thoughtsTokenCount": 431,
                "toolUsePromptTokenCount": 100,
            },
        },
        (950, 551, 0, 0, 0),
    ),
]


def snake_gemini(usage: dict[str, Any]) -> dict[str, Any]:
    """The google-genai SDK's spelling (``usage_metadata.model_dump()``) of a REST payload."""
    out: dict[str, Any] = {}
    for key, value in usage.items():
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        out[snake] = value
    return out
