"""The price context selects variant rows, never the standard price by default."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from biz2bricks_core.errors import InvalidEventError
from biz2bricks_core.price_catalogue import catalogue_rows
from biz2bricks_core.price_supplements import SUPPLEMENTS, with_supplements
from biz2bricks_core.pricing import PriceBook, TokenPrice, price_variant, variant_fields
from biz2bricks_producer.usage_adapters import token_fields, usage_fields

T0 = datetime(2024, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 10, 14, tzinfo=UTC)
D = Decimal
BOOK = PriceBook.from_prices(
    [
        TokenPrice("p", "m", T0, D(2), D(8), id=1),
        TokenPrice("p", "m", T1, D(1), D(4), id=2, variant="processing=batch"),
        TokenPrice("p", "s", T0, D(2), D(8), web_search_per_k_usd=D(10), id=3),
    ]
)


def test_standard_values_select_no_variant() -> None:
    assert price_variant("standard", "default", None, "global") == ""
    assert price_variant("batch") == "processing=batch"
    assert price_variant(None, "flex", "fast") == "service_tier=flex;speed=fast"
    # the caller's capitals name the same context as the providers' lower case
    assert price_variant("Standard", "Default", None, "GLOBAL") == ""
    assert price_variant("Batch", "Flex") == "processing=batch;service_tier=flex"
    assert variant_fields("service_tier=flex;speed=fast") == {
        "service_tier": "flex",
        "speed": "fast",
    }


def test_a_variant_prices_from_its_own_row_and_an_unknown_one_is_unpriced() -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    assert BOOK.lookup("p", "m", at, 10, "processing=batch").price.id == 2  # type: ignore[union-attr]
    assert BOOK.lookup("p", "m", at, 10).price.id == 1  # type: ignore[union-attr]
    assert BOOK.lookup("p", "m", at, 10, "service_tier=flex").reason == "unknown_variant"
    # before the variant's first price: unpriced, not the standard price
    assert BOOK.lookup("p", "m", T0, 10, "processing=batch").price is None
    assert BOOK.lookup("p", "m", T0, 10, "processing=batch").reason == "unknown_variant"


def test_web_searches_need_a_web_search_price() -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    assert BOOK.lookup("p", "m", at, 10, "", 2).reason == "no_tool_price"
    assert BOOK.lookup("p", "s", at, 10, "", 2).price.id == 3  # type: ignore[union-attr]


def test_the_sonnet_4_long_context_supplement_names_its_page_and_gives_way() -> None:
    rows = catalogue_rows()
    tier = [r for r in rows if r["model"] == "claude-sonnet-4-0" and r["above_input_tokens"]]
    assert [(r["input_per_mtok"], r["output_per_mtok"]) for r in tier] == [("6", "22.5")]
    assert "docs.anthropic.com/en/docs/about-claude/pricing" in tier[0]["source"]
    # once genai-prices has the tier itself, its row wins and the supplement adds nothing
    catalogue_has_it = [{**r, "source": "genai-prices"} for r in rows]
    assert len(with_supplements(catalogue_has_it, SUPPLEMENTS)) == len(rows)


def test_a_price_context_of_a_supplemented_model_gets_the_tier_at_its_own_ratio() -> None:
    # Given the catalogue's standard Sonnet 4 row and a batch row at half its prices
    [standard] = [
        r
        for r in catalogue_rows()
        if r["model"] == "claude-sonnet-4-0"
        and r["provider"] == "anthropic"
        and not r["above_input_tokens"]
        and not r.get("variant")
    ]
    batch = {
        **standard,
        "variant": "processing=batch",
        "input_per_mtok": str(Decimal(standard["input_per_mtok"]) / 2),
        "output_per_mtok": str(Decimal(standard["output_per_mtok"]) / 2),
    }
    orphan = {**batch, "variant": "service_tier=flex", "effective_from": "2099-01-01"}
    # When the supplement is applied
    rows = with_supplements([standard, batch, orphan], SUPPLEMENTS)
    tiers = {
        r["variant"]: (Decimal(r["input_per_mtok"]), Decimal(r["output_per_mtok"]))
        for r in rows
        if r["above_input_tokens"]
    }
    # Then the batch tier is half the long-context price, the standard one the page's, and a
    # context with no standard version to compare with gets none
    assert tiers == {
        "": (Decimal(6), Decimal("22.5")),
        "processing=batch": (Decimal(3), Decimal("11.25")),
    }


@dataclass
class Details:
    cached_tokens: int


@dataclass
class ChatUsage:
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_details: Details


class Slotted:
    __slots__ = ("prompt_tokens",)

    def __init__(self) -> None:
        self.prompt_tokens = 5


def test_nested_counts_are_read_from_dataclasses_and_unknown_shapes_are_refused() -> None:
    fields = token_fields(ChatUsage(2006, 300, Details(1920)))
    assert fields["cache_read_tokens"] == 1920
    with pytest.raises(InvalidEventError, match="unknown shape"):
        token_fields({"prompt_tokens": 10, "prompt_tokens_details": Slotted()})
    with pytest.raises(InvalidEventError, match="unknown shape"):
        token_fields(Slotted())


def test_anthropic_batch_tier_and_priority_become_the_context() -> None:
    usage = {"input_tokens": 1, "output_tokens": 1, "service_tier": "Priority"}
    assert usage_fields(usage)["service_tier"] == "priority"
    usage["service_tier"] = "batch"
    got = usage_fields(usage)
    assert got["processing"] == "batch"
    assert "service_tier" not in got
