"""Which catalogue model an event's provider and model strings name, by genai-prices' rules.

Applications send names as their SDK or gateway spells them: ``OpenAI`` / ``azure`` /
``vertex_ai`` / ``bedrock`` providers, ``openai/gpt-4o`` and ``models/gemini-2.5-flash``
prefixes, dated ids, ``-latest`` aliases, Bedrock ids such as
``us.anthropic.claude-3-7-sonnet-20250219-v1:0``. genai-prices keeps explicit match rules per
model and provider aliases (its ``provider_match``), and those rules are what keep a variant
(``gpt-5-pro``, ``o3-pro``, ``gpt-4o-2024-05-13``, ``gpt-5.1-codex-mini``) from taking its
base model's price, so this module asks genai-prices rather than re-implementing them. It
only adds the spellings genai-prices does not take itself: a ``models/`` prefix, a provider
prefix (``openai/gpt-4o``) and a Bedrock id sent with ``anthropic`` as the provider.

The answer is a catalogue key: the genai-prices id of the provider that owns the matched
model's price (Azure's and Vertex's borrowed models resolve to their own entries when they
have one, as genai-prices does) and the model id. Results are cached per string pair: a miss
costs genai-prices ~0.2 ms, a hit a dict lookup.

Importing genai-prices takes over a second: only the consumer and the rollup do it, never the
producer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from biz2bricks_core.pricing import UNKNOWN_MODEL, UNKNOWN_PROVIDER, Key

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot

__all__ = ["ModelNames", "catalogue_version"]

# Gateways that prefix ids with another provider's name as part of their own ids.
_PREFIXED_ID_PROVIDERS: Final = frozenset({"openrouter", "together", "fireworks", "groq"})
_BEDROCK_ID = re.compile(
    r"^(?:(?:us|eu|apac|au|ca|jp|us-gov|global)\.)?anthropic\.(.+?)(?:-v\d+(?::\d+)?)?$"
)
MAX_CACHED: Final = 100_000


def catalogue_version() -> str:
    """The genai-prices version whose data the catalogue and the matching come from."""
    from genai_prices import __version__

    return str(__version__)


class ModelNames:
    """Resolves (provider, model) strings to catalogue keys; callable as a PriceBook resolver."""

    def __init__(self, snapshot: DataSnapshot | None = None) -> None:
        from genai_prices import data_snapshot

        self._snapshot = snapshot if snapshot is not None else data_snapshot.get_snapshot()
        self._owner = {
            id(model): provider.id
            for provider in self._snapshot.providers
            for model in provider.models
        }
        self._cache: dict[tuple[str, str], Key | str] = {}

    def __call__(self, provider: str, model: str) -> Key | str:
        """The catalogue key, or the reason (``unknown_provider`` / ``unknown_model``)."""
        pair = (provider, model)
        found = self._cache.get(pair)
        if found is None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            found = self._cache[pair] = self._resolve(provider.strip(), model.strip())
        return found

    def _resolve(self, provider: str, model: str) -> Key | str:
        from genai_prices.data_snapshot import find_provider_by_id

        ref = model.lower()
        provider_id = provider.lower()
        known = find_provider_by_id(self._snapshot.providers, provider_id)
        refs = [ref]
        if ref.startswith("models/"):  # google-genai and the Gemini REST API
            refs.append(ref.removeprefix("models/"))
        prefix, slash, rest = refs[-1].partition("/")
        if slash and (known is None or known.id not in _PREFIXED_ID_PROVIDERS):
            prefixed = find_provider_by_id(self._snapshot.providers, prefix)
            if prefixed is not None:
                refs.append(rest.removeprefix("models/"))
                if known is None:
                    known, provider_id = prefixed, prefix
        if known is None and provider_id != "litellm":
            return UNKNOWN_PROVIDER
        if (bedrock := _BEDROCK_ID.match(refs[-1])) and known is not None and known.id != "aws":
            refs.append(bedrock.group(1))
        for candidate in refs:
            key = self._find(candidate, provider_id)
            if key is not None:
                return key
        return UNKNOWN_MODEL

    def _find(self, ref: str, provider_id: str) -> Key | None:
        try:
            _, model = self._snapshot.find_provider_model(ref, None, provider_id, None)
        except LookupError:
            return None
        return self._owner[id(model)], str(model.id)

    def info(self) -> dict[str, Any]:
        """Cache size, for logs and the benchmark report."""
        return {"cached_names": len(self._cache)}
