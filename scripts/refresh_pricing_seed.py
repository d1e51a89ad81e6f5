"""Write the model_pricing seed (migrations/data/model_pricing.json) from the genai-prices package.

genai-prices is a maintained price database; this turns its entries for the common OpenAI,
Anthropic and Google models into versioned rows (one per start date). Tiered prices keep their
base tier: the consumer prices per call and does not model long-context surcharges.
Run: uv run python scripts/refresh_pricing_seed.py
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices import __version__ as genai_prices_version
from genai_prices import data_snapshot, types

MODELS = {
    "openai": [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5.1",
        "gpt-5.2",
        "gpt-5.4",
        "gpt-5.4-mini",
        "gpt-5.5",
        "text-embedding-3-small",
        "text-embedding-3-large",
    ],
    "anthropic": [
        "claude-3-5-haiku-latest",
        "claude-3-7-sonnet-latest",
        "claude-haiku-4-5",
        "claude-sonnet-4-0",
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-opus-4-1",
        "claude-opus-4-5",
        "claude-opus-4-6",
        "claude-sonnet-5",
        "claude-opus-5",
    ],
    "google": [
        "gemini-2.0-flash",
        "gemini-2.0-flash-lite",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.5-pro",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "gemini-3.5-flash",
    ],
}
EPOCH = "2023-01-01T00:00:00+00:00"
OUT = Path(__file__).resolve().parent.parent / "migrations" / "data" / "model_pricing.json"


def _base(value: Decimal | types.TieredPrices | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, types.TieredPrices):
        value = value.base
    return str(value)


def _row(provider: str, model: str, start: str, prices: Any) -> dict[str, Any] | None:
    if prices.__dict__.get("input_mtok") is None or prices.__dict__.get("output_mtok") is None:
        return None
    return {
        "provider": provider,
        "model": model,
        "effective_from": start,
        "input_per_mtok": _base(prices.input_mtok),
        "output_per_mtok": _base(prices.output_mtok),
        "cache_read_per_mtok": _base(prices.__dict__.get("cache_read_mtok")),
        "cache_write_per_mtok": _base(prices.__dict__.get("cache_write_mtok")),
        "source": f"genai-prices {genai_prices_version}",
    }


def main() -> None:
    snapshot = data_snapshot.get_snapshot()
    rows: list[dict[str, Any]] = []
    for provider_id, wanted in MODELS.items():
        provider = next(p for p in snapshot.providers if p.id == provider_id)
        models = {m.id: m for m in provider.models}
        for model_id in wanted:
            model = models.get(model_id)
            if model is None:
                print(f"skip {provider_id}/{model_id}: not in genai-prices {genai_prices_version}")
                continue
            versions = (
                model.prices
                if isinstance(model.prices, list)
                else [types.ConditionalPrice(prices=model.prices)]
            )
            for version in versions:
                constraint = version.constraint
                if constraint is None:
                    start = EPOCH
                elif isinstance(constraint, types.StartDateConstraint):
                    start = f"{constraint.start_date.isoformat()}T00:00:00+00:00"
                else:
                    continue  # time-of-day discounts are not modelled
                row = _row(provider_id, model_id, start, version.prices)
                if row is not None:
                    rows.append(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {len(rows)} price rows to {OUT}")


if __name__ == "__main__":
    main()
