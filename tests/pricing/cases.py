"""Provider and model strings as applications send them, and the token mixes they are billed on.

Each name pairs with the (provider_id, model_ref) that genai_prices.calc_price is asked for
the expected price. That is the string as sent, except for the spellings calc_price itself
does not take (a ``models/`` or provider prefix, a Bedrock id sent with ``anthropic``), where
it is the same name without them.
"""

from __future__ import annotations

from typing import Final

# (provider as sent, model as sent, provider for calc_price, model for calc_price)
NAMES: Final[list[tuple[str, str, str, str]]] = []


def _add(provider: str, models: list[str], ref_provider: str | None = None) -> None:
    for model in models:
        NAMES.append((provider, model, ref_provider or provider, model))


def _alias(provider: str, model: str, ref_provider: str, ref_model: str) -> None:
    NAMES.append((provider, model, ref_provider, ref_model))


_add(
    "openai",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-2024-05-13",
        "gpt-4o-2024-08-06",
        "gpt-4o-2024-11-20",
        "gpt-4o-mini-2024-07-18",
        "chatgpt-4o-latest",
        "gpt-4-turbo",
        "gpt-4-turbo-2024-04-09",
        "gpt-4",
        "gpt-4-0613",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-0125",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4.1-2025-04-14",
        "o1",
        "o1-mini",
        "o1-pro",
        "o1-2024-12-17",
        "o3",
        "o3-mini",
        "o3-pro",
        "o4-mini",
        "o3-2025-04-16",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5-pro",
        "gpt-5-codex",
        "gpt-5-2025-08-07",
        "gpt-5-mini-2025-08-07",
        "gpt-5.1",
        "gpt-5.1-codex",
        "gpt-5.1-codex-mini",
        "gpt-5.2",
        "gpt-5.2-20251211",
        "gpt-5.4",
        "gpt-5.4-mini",
        "gpt-5.5",
        "gpt-4o-mini-tts",
        "gpt-4o-realtime-preview",
        "gpt-4o-audio-preview",
        "gpt-4o-mini-realtime-preview",
        "gpt-4o-search-preview",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "gpt-realtime",
        "ft:gpt-4o-mini-2024-07-18:acme::abc123",
        "gpt-4.5-preview",
        "codex-mini-latest",
        "gpt-image-1",
    ],
)
_add("OpenAI", ["GPT-4o", "gpt-4o-mini", "O3"])
_add("azure", ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "gpt-5", "gpt-35-turbo"])
_alias("openai", "openai/gpt-4o", "openai", "gpt-4o")
_alias("openai", "openai/gpt-5-mini", "openai", "gpt-5-mini")
_alias("openai", "openai/o4-mini", "openai", "o4-mini")
_add(
    "anthropic",
    [
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-20250514",
        "claude-sonnet-4-0",
        "claude-sonnet-4-6",
        "claude-opus-4-1",
        "claude-opus-4-1-20250805",
        "claude-opus-4-20250514",
        "claude-opus-4-5",
        "claude-opus-4-6",
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
        "claude-3-7-sonnet-latest",
        "claude-3-7-sonnet-20250219",
        "claude-3-5-sonnet-latest",
        "claude-3-5-sonnet-20241022",
        "claude-3-5-sonnet-20240620",
        "claude-3-5-haiku-latest",
        "claude-3-5-haiku-20241022",
        "claude-3-opus-20240229",
        "claude-3-opus-latest",
        "claude-3-haiku-20240307",
        "claude-3-sonnet-20240229",
        "claude-2.1",
    ],
)
_add("Anthropic", ["Claude-Sonnet-4-5"])
_alias("anthropic", "anthropic/claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5")
_alias(
    "anthropic",
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "anthropic",
    "claude-3-5-sonnet-20240620",
)
_alias(
    "anthropic",
    "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "anthropic",
    "claude-3-7-sonnet-20250219",
)
_add(
    "bedrock",
    [
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "amazon.nova-pro-v1:0",
        "amazon.nova-lite-v1:0",
        "meta.llama3-70b-instruct-v1:0",
    ],
)
_add("aws", ["anthropic.claude-3-haiku-20240307-v1:0", "amazon.nova-micro-v1:0"])
_add(
    "google",
    [
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-2.5-flash-lite",
        "gemini-2.0-flash",
        "gemini-2.0-flash-001",
        "gemini-2.0-flash-lite",
        "gemini-1.5-pro",
        "gemini-1.5-pro-002",
        "gemini-1.5-flash",
        "gemini-1.5-flash-8b",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "gemini-2.5-flash-preview-tts",
        "gemini-2.5-pro-preview-05-06",
        "gemini-flash-latest",
        "models/gemini-2.0-flash-001",
    ],
)
_add("gemini", ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"])
_add("vertex_ai", ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-1.5-pro-002"])
_add("vertex", ["gemini-2.5-flash", "claude-3-5-sonnet@20240620", "claude-sonnet-4@20250514"])
_add("google-vertex", ["gemini-1.5-pro-002", "gemini-2.5-pro"])
_add("Google", ["Gemini-2.5-Flash"])
_alias("gemini", "models/gemini-2.5-flash", "gemini", "gemini-2.5-flash")
_alias("google", "models/gemini-2.5-pro", "google", "gemini-2.5-pro")
_alias("vertex_ai", "gemini/gemini-2.5-flash", "vertex_ai", "gemini-2.5-flash")
_alias("google", "google/gemini-2.5-flash-lite", "google", "gemini-2.5-flash-lite")
_add("mistral", ["mistral-large-latest", "mistral-small-latest", "codestral-latest"])
_add("deepseek", ["deepseek-chat", "deepseek-reasoner"])
_add("x-ai", ["grok-3", "grok-4", "grok-3-mini"])
_add("xai", ["grok-4"])
_add("groq", ["llama-3.3-70b-versatile", "llama-3.1-8b-instant"])
_add("cohere", ["command-r-plus", "command-r"])
_add("perplexity", ["sonar", "sonar-pro"])
_add("openrouter", ["openai/gpt-4o", "anthropic/claude-sonnet-4.5", "google/gemini-2.5-flash"])
_add("together", ["meta-llama/Llama-3.3-70B-Instruct-Turbo"])
_add("fireworks", ["accounts/fireworks/models/llama-v3p1-8b-instruct"])

# Token mixes: (name, input, output, cache_read, cache_write, cache_write_1h)
MIXES: Final = [
    ("plain", 1_234, 567, 0, 0, 0),
    ("cache_read", 20_000, 800, 15_000, 0, 0),
    ("cache_write", 30_000, 1_000, 4_000, 12_000, 5_000),
    ("long_context", 300_000, 2_000, 100_000, 0, 0),
]

# Names no price row covers on purpose: a variant must not take its base model's price.
UNPRICED: Final = [
    ("openai", "gpt-4o-super-2099"),
    ("acme", "gpt-4o"),
    ("anthropic", "claude-sonnet-9"),
    ("google", "gemini-9-ultra"),
    ("anthropic", "claude-instant-1.2"),
]
