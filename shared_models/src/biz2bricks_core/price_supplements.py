"""Operator price rows for what genai-prices lacks, each with the provider page it comes from.

They join the catalogue at refresh time (``price_catalogue.catalogue_rows``), so they are in
the reviewed data file and applied, retired and re-priced like every catalogue row; ``source``
names the page. A supplement is a long-context tier of a model genai-prices prices: it becomes
a tier of each of that model's price versions, and it gives way as soon as genai-prices has a
row of its own for the same model, version, variant and threshold (the refresh then drops it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

__all__ = ["SUPPLEMENTS", "TierSupplement", "with_supplements"]


@dataclass(frozen=True, slots=True)
class TierSupplement:
    """A long-context tier, in USD per million tokens, as the provider's page states it."""

    provider: str
    model: str
    above_input_tokens: int
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None
    cache_write_per_mtok: Decimal | None
    cache_write_1h_per_mtok: Decimal | None
    page: str


ANTHROPIC_PRICING: Final = "https://docs.anthropic.com/en/docs/about-claude/pricing"

SUPPLEMENTS: Final = (
    # "Long context pricing": Claude Sonnet 4 requests over 200K input tokens cost $6 input and
    # $22.50 output per MTok; prompt caching multiplies the input price as on every model
    # (cache reads 0.1x, 5-minute writes 1.25x, 1-hour writes 2x). genai-prices 0.2.3 has no
    # tier for claude-sonnet-4-0 (it has one for claude-sonnet-4-5).
    TierSupplement(
        provider="anthropic",
        model="claude-sonnet-4-0",
        above_input_tokens=200_000,
        input_per_mtok=Decimal("6"),
        output_per_mtok=Decimal("22.5"),
        cache_read_per_mtok=Decimal("0.6"),
        cache_write_per_mtok=Decimal("7.5"),
        cache_write_1h_per_mtok=Decimal("12"),
        page=ANTHROPIC_PRICING,
    ),
)


def with_supplements(
    rows: list[dict[str, Any]], supplements: Iterable[TierSupplement] = SUPPLEMENTS
) -> list[dict[str, Any]]:
    """``rows`` plus a tier row per supplement and version of its model that has none.

    A version of a price context (a batch row, say) gets the tier scaled by that context's
    ratio to the standard price of the same version (batch at half the standard input price:
    the long-context tier at half too); a context without a standard version to compare with
    gets no tier rather than the standard call's prices.
    """
    out = list(rows)
    for s in supplements:
        bases = [
            r
            for r in rows
            if (r["provider"], r["model"], r["above_input_tokens"]) == (s.provider, s.model, 0)
        ]
        if not bases:
            raise ValueError(f"supplement for {s.provider}/{s.model}: the catalogue lacks it")
        standard = {r["effective_from"]: r for r in bases if not r.get("variant")}
        for base in bases:
            version = {k: base[k] for k in ("effective_from", "variant")}
            if any(
                r["provider"] == s.provider
                and r["model"] == s.model
                and r["above_input_tokens"] == s.above_input_tokens
                and all(r[k] == v for k, v in version.items())
                for r in rows
            ):
                continue  # genai-prices has this tier now: its row wins
            ratio = Decimal(1)
            if base.get("variant"):
                same_version = standard.get(base["effective_from"])
                if same_version is None:
                    continue
                ratio = Decimal(base["input_per_mtok"]) / Decimal(same_version["input_per_mtok"])
            out.append(
                {
                    **base,
                    "above_input_tokens": s.above_input_tokens,
                    "input_per_mtok": _text(s.input_per_mtok * ratio),
                    "output_per_mtok": _text(s.output_per_mtok * ratio),
                    "cache_read_per_mtok": _scaled(s.cache_read_per_mtok, ratio),
                    "cache_write_per_mtok": _scaled(s.cache_write_per_mtok, ratio),
                    "cache_write_1h_per_mtok": _scaled(s.cache_write_1h_per_mtok, ratio),
                    "source": f"operator supplement: {s.page}",
                }
            )
    return out


def _scaled(value: Decimal | None, ratio: Decimal) -> str | None:
    return None if value is None else _text(value * ratio)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
