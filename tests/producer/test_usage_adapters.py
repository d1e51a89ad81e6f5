"""Provider usage objects become the right contract fields (the same as genai-prices reads)."""

from __future__ import annotations

from typing import Any

import pytest
from genai_prices import extract_usage
from pydantic import BaseModel, ConfigDict

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_producer.usage_adapters import token_fields
from tests.pricing.recorded_usage import RECORDED, snake_gemini

FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)


def _usage(body: dict[str, Any]) -> dict[str, Any]:
    usage = body.get("usage", body.get("usageMetadata"))
    assert isinstance(usage, dict)
    return usage


class SdkUsage(BaseModel):
    """Stands for an SDK's pydantic usage model (openai, anthropic and google-genai's are)."""

    model_config = ConfigDict(extra="allow")


@pytest.mark.parametrize(
    ("provider", "model", "flavor", "body", "expected"),
    RECORDED,
    ids=[f"{r[0]}-{r[1]}-{r[2][1]}" for r in RECORDED],
)
def test_recorded_usage_becomes_the_contract_fields_genai_prices_reads(
    provider: str,
    model: str,
    flavor: tuple[str, str],
    body: dict[str, Any],
    expected: tuple[int, ...],
) -> None:
    usage = _usage(body)
    ours = token_fields(usage)
    assert tuple(ours[f] for f in FIELDS) == expected  # type: ignore[literal-required]
    theirs = extract_usage(body, provider_id=flavor[0], api_flavor=flavor[1]).usage
    assert tuple(theirs.reported_value(f) for f in FIELDS) == expected
    # The SDK object and a whole response body give the same fields as the dict.
    assert token_fields(SdkUsage(**usage)) == ours
    assert token_fields(body) == ours


def test_gemini_sdk_spelling_is_read_like_the_rest_api() -> None:
    rest = _usage(RECORDED[6][3])
    assert token_fields(snake_gemini(rest)) == token_fields(rest)
    assert token_fields(snake_gemini(rest))["output_tokens"] == 400 + 1200  # thinking is output


@pytest.mark.parametrize(
    "usage",
    [
        {"tokens": 5},
        {"prompt_tokens": "12", "completion_tokens": 1},
        {"input_tokens": True, "output_tokens": 1},
        42,
    ],
)
def test_an_unknown_or_malformed_usage_is_an_invalid_event(usage: Any) -> None:
    with pytest.raises(InvalidEventError):
        token_fields(usage)


# Review of issue 25: real payloads the adapters must read.
def test_anthropic_inference_geo_not_available_is_the_standard_price() -> None:
    """Every Anthropic model before Opus 4.6 reports ``inference_geo: "not_available"``."""
    from biz2bricks_core.pricing import price_variant
    from biz2bricks_producer.usage_adapters import usage_fields

    usage = {
        "input_tokens": 2,
        "output_tokens": 368,
        "cache_read_input_tokens": 44408,
        "cache_creation_input_tokens": 748,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 748},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard",
        "inference_geo": "not_available",
    }
    got = usage_fields({"type": "message", "usage": usage})
    assert "route" not in got
    assert price_variant(got.get("processing"), got.get("service_tier"), None, None) == ""
    assert price_variant(route="not_available") == ""


def test_a_whole_response_with_bytes_datetimes_and_deep_tool_arguments_is_read() -> None:
    import datetime as dt

    from biz2bricks_producer.usage_adapters import usage_fields

    deep: dict[str, object] = {}
    for _ in range(20):
        deep = {"x": deep}
    response = {
        "create_time": dt.datetime.now(dt.UTC),  # Vertex AI responses
        "candidates": [{"content": {"parts": [{"thought_signature": b"\x01", "args": deep}]}}],
        "usage_metadata": {
            "prompt_token_count": 1000,
            "candidates_token_count": 10,
            "cached_content_token_count": 800,
        },
    }
    got = usage_fields(response)
    assert (got["input_tokens"], got["cache_read_tokens"]) == (1000, 800)


def test_a_count_inside_an_opaque_value_is_refused() -> None:
    import pytest

    from biz2bricks_core.errors import InvalidEventError
    from biz2bricks_producer.usage_adapters import token_fields

    with pytest.raises(InvalidEventError, match="unknown shape"):
        token_fields({"prompt_tokens": 10, "prompt_tokens_details": b"cached"})


def test_langchain_usage_metadata_keeps_its_cached_tokens() -> None:
    from biz2bricks_producer.usage_adapters import token_fields

    usage = {
        "input_tokens": 1500,
        "output_tokens": 200,
        "total_tokens": 1700,
        "input_token_details": {"cache_read": 1000, "cache_creation": 200},
        "output_token_details": {"reasoning": 50},
    }
    got = token_fields(usage)
    assert (got["input_tokens"], got["cache_read_tokens"], got["cache_write_tokens"]) == (
        1500,
        1000,
        200,
    )


def test_a_gemini_batch_output_line_is_a_batch_call_with_its_counts() -> None:
    from biz2bricks_producer.usage_adapters import usage_fields

    # Given a line of a Gemini Batch API output file
    line = {
        "key": "request-17",
        "response": {
            "candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}}],
            "usageMetadata": {
                "promptTokenCount": 1200,
                "candidatesTokenCount": 80,
                "cachedContentTokenCount": 1000,
                "thoughtsTokenCount": 20,
                "totalTokenCount": 1300,
            },
        },
    }
    # Then it is read as the response inside, priced as a batch call
    got = usage_fields(line)
    assert got["processing"] == "batch"
    assert (got["input_tokens"], got["cache_read_tokens"]) == (1200, 1000)
    assert got["output_tokens"] == 100  # thinking tokens are output
    # And the same response alone is a standard call
    assert "processing" not in usage_fields(line["response"])
