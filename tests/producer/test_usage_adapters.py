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
