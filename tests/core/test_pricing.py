"""Cost arithmetic in Decimal, cached tokens, and price versions by effective date."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from biz2bricks_core import PriceBook, TokenPrice, event_cost

T0 = datetime(2024, 1, 1, tzinfo=UTC)
T1 = datetime(2025, 6, 1, tzinfo=UTC)
SONNET = TokenPrice(
    "anthropic",
    "claude-sonnet-4-5",
    T0,
    Decimal(3),
    Decimal(15),
    cache_read_per_mtok=Decimal("0.3"),
    cache_write_per_mtok=Decimal("3.75"),
)


def test_uncached_cost_is_input_plus_output() -> None:
    cost = event_cost(SONNET, input_tokens=1_000_000, output_tokens=100_000)
    assert cost == Decimal("4.5")


def test_cached_tokens_are_charged_at_their_own_prices() -> None:
    # 1M input of which 600k cache reads and 100k cache writes: 300k uncached.
    cost = event_cost(
        SONNET,
        input_tokens=1_000_000,
        output_tokens=0,
        cache_read_tokens=600_000,
        cache_write_tokens=100_000,
    )
    assert cost == Decimal("0.9") + Decimal("0.18") + Decimal("0.375")


def test_a_model_without_cache_prices_charges_cached_tokens_as_input() -> None:
    price = TokenPrice("openai", "m", T0, Decimal(2), Decimal(8))
    assert event_cost(price, input_tokens=10, output_tokens=0, cache_read_tokens=10) == event_cost(
        price, input_tokens=10, output_tokens=0
    )


def test_cost_is_exact_decimal_for_single_tokens() -> None:
    price = TokenPrice("openai", "gpt-4o-mini", T0, Decimal("0.15"), Decimal("0.6"))
    assert event_cost(price, input_tokens=1, output_tokens=1) == Decimal("0.00000075")


def test_cache_above_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="exceed"):
        event_cost(SONNET, input_tokens=1, output_tokens=0, cache_read_tokens=2)


def test_the_price_in_force_at_the_time_of_the_call_is_used() -> None:
    old = TokenPrice("openai", "gpt-4o", T0, Decimal(5), Decimal(15), id=1)
    new = TokenPrice("openai", "gpt-4o", T1, Decimal("2.5"), Decimal(10), id=2)
    book = PriceBook.from_prices([new, old])
    assert book.price_at("openai", "gpt-4o", datetime(2025, 5, 31, tzinfo=UTC)) is old
    assert book.price_at("openai", "gpt-4o", T1) is new
    assert book.price_at("openai", "gpt-4o", datetime(2023, 1, 1, tzinfo=UTC)) is None


def test_without_a_resolver_only_the_exact_name_is_priced() -> None:
    # The old longest-prefix rule billed gpt-4o-2024-05-13 (its own, higher price) as gpt-4o,
    # and gpt-5.1-codex-mini as gpt-5.1: a variant never takes its base model's price.
    base = TokenPrice("openai", "gpt-4o", T0, Decimal(1), Decimal(1))
    book = PriceBook.from_prices([base])
    assert book.price_at("openai", "gpt-4o", T1) is base
    assert book.price_at("openai", "gpt-4o-2024-05-13", T1) is None
    assert book.lookup("openai", "gpt-4o-2024-05-13", T1).reason == "unknown_model"
    assert book.price_at("anthropic", "gpt-4o", T1) is None
