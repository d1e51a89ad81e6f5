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
    assert book.lookup("openai", "gpt-4o", datetime(2025, 5, 31, tzinfo=UTC)).price is old
    assert book.lookup("openai", "gpt-4o", T1).price is new
    assert book.lookup("openai", "gpt-4o", datetime(2023, 1, 1, tzinfo=UTC)).price is None


def test_without_a_resolver_only_the_exact_name_is_priced() -> None:
    # The old longest-prefix rule billed gpt-4o-2024-05-13 (its own, higher price) as gpt-4o,
    # and gpt-5.1-codex-mini as gpt-5.1: a variant never takes its base model's price.
    base = TokenPrice("openai", "gpt-4o", T0, Decimal(1), Decimal(1))
    book = PriceBook.from_prices([base])
    assert book.lookup("openai", "gpt-4o", T1).price is base
    assert book.lookup("openai", "gpt-4o-2024-05-13", T1).price is None
    assert book.lookup("openai", "gpt-4o-2024-05-13", T1).reason == "unknown_model"
    assert book.lookup("anthropic", "gpt-4o", T1).price is None


def test_a_time_of_day_price_applies_in_its_window_only() -> None:
    # DeepSeek's shape: the all-day row is the off-peak price; 00:30-16:30 UTC costs double.
    off_peak = TokenPrice("deepseek", "deepseek-chat", T0, Decimal("0.135"), Decimal("0.55"))
    peak = TokenPrice(
        "deepseek",
        "deepseek-chat",
        T0,
        Decimal("0.27"),
        Decimal("1.1"),
        daily_from_minute=30,
        daily_until_minute=16 * 60 + 30,
    )
    book = PriceBook.from_prices([off_peak, peak])
    day = datetime(2025, 3, 3, tzinfo=UTC)
    assert (
        book.lookup("deepseek", "deepseek-chat", day.replace(hour=0, minute=29)).price is off_peak
    )
    assert book.lookup("deepseek", "deepseek-chat", day.replace(hour=0, minute=30)).price is peak
    assert book.lookup("deepseek", "deepseek-chat", day.replace(hour=16, minute=29)).price is peak
    assert (
        book.lookup("deepseek", "deepseek-chat", day.replace(hour=16, minute=30)).price is off_peak
    )


def test_a_daily_window_may_wrap_past_midnight() -> None:
    night = TokenPrice(
        "p", "m", T0, Decimal(1), Decimal(1), daily_from_minute=22 * 60, daily_until_minute=2 * 60
    )
    day_price = TokenPrice("p", "m", T0, Decimal(2), Decimal(2))
    book = PriceBook.from_prices([night, day_price])
    assert book.lookup("p", "m", datetime(2025, 3, 3, 23, 0, tzinfo=UTC)).price is night
    assert book.lookup("p", "m", datetime(2025, 3, 4, 1, 59, tzinfo=UTC)).price is night
    assert book.lookup("p", "m", datetime(2025, 3, 4, 2, 0, tzinfo=UTC)).price is day_price


def test_long_context_tier_is_chosen_by_the_calls_input_size() -> None:
    base = TokenPrice("anthropic", "claude-sonnet-4-5", T0, Decimal(3), Decimal(15))
    long = TokenPrice(
        "anthropic",
        "claude-sonnet-4-5",
        T0,
        Decimal(6),
        Decimal("22.5"),
        above_input_tokens=200_000,
    )
    book = PriceBook.from_prices([long, base])
    assert book.lookup("anthropic", "claude-sonnet-4-5", T1, 200_000).price is base
    assert book.lookup("anthropic", "claude-sonnet-4-5", T1, 200_001).price is long


def test_an_operator_row_wins_over_the_catalogue_row() -> None:
    catalogue = TokenPrice("openai", "gpt-4o", T0, Decimal("2.5"), Decimal(10))
    negotiated = TokenPrice("openai", "gpt-4o", T1, Decimal(2), Decimal(8), origin="operator")
    book = PriceBook.from_prices([catalogue, negotiated])
    assert book.lookup("openai", "gpt-4o", datetime(2025, 1, 1, tzinfo=UTC)).price is catalogue
    assert book.lookup("openai", "gpt-4o", T1).price is negotiated


def test_one_hour_cache_writes_are_priced_apart_from_five_minute_writes() -> None:
    price = TokenPrice(
        "anthropic", "m", T0, Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"), Decimal(6)
    )
    cost = event_cost(
        price,
        input_tokens=1_000_000,
        output_tokens=0,
        cache_write_tokens=300_000,
        cache_write_1h_tokens=100_000,
    )
    assert cost == Decimal("2.1") + Decimal("0.75") + Decimal("0.6")
