"""Reading ``model_pricing`` into a PriceBook (the consumer's cache and the reprice command)."""

from __future__ import annotations

from sqlalchemy import select

from biz2bricks_core.database import DatabaseManager
from biz2bricks_core.models import ModelPricingModel
from biz2bricks_core.pricing import CATALOGUE, OPERATOR, PriceBook, Resolver, TokenPrice

__all__ = ["load_price_book", "to_token_price"]


def to_token_price(r: ModelPricingModel) -> TokenPrice:
    """The pricing value of one row."""
    return TokenPrice(
        provider=r.provider,
        model=r.model,
        effective_from=r.effective_from,
        input_per_mtok=r.input_per_mtok,
        output_per_mtok=r.output_per_mtok,
        cache_read_per_mtok=r.cache_read_per_mtok,
        cache_write_per_mtok=r.cache_write_per_mtok,
        cache_write_1h_per_mtok=r.cache_write_1h_per_mtok,
        per_request_usd=r.per_request_usd,
        above_input_tokens=r.above_input_tokens,
        origin=OPERATOR if r.origin == OPERATOR else CATALOGUE,
        id=r.id,
        daily_from_minute=r.daily_from_minute,
        daily_until_minute=r.daily_until_minute,
        web_search_per_k_usd=r.web_search_per_k_usd,
        variant=r.variant,
    )


async def load_price_book(db: DatabaseManager, resolver: Resolver | None) -> PriceBook:
    """Every live (not retired) price row in the database."""
    async with db.session() as session:
        rows = (
            await session.scalars(
                select(ModelPricingModel).where(ModelPricingModel.retired_at.is_(None))
            )
        ).all()
    return PriceBook.from_prices((to_token_price(r) for r in rows), resolver)
