"""Model-name resolution: 10,000 distinct provider/model strings, cold and then cached.

A cold lookup asks genai-prices (its match rules over ~2,300 models); a repeated one is a dict
hit in ModelNames, and the PriceBook caches the pair again per price refresh. The mix: the
names of tests/pricing/cases.py as sent, their upper-case and prefixed spellings, dated
snapshots and made-up variants that match nothing (the slowest path: every rule is tried).
Run: uv run python -m bench.model_names [--names 10000]
"""

from __future__ import annotations

import argparse
import time

from biz2bricks_core.model_names import ModelNames
from tests.pricing.cases import NAMES


def distinct_names(count: int) -> list[tuple[str, str]]:
    """``count`` distinct (provider, model) strings in realistic spellings."""
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    i = 0
    while len(out) < count:
        provider, model, _, _ = NAMES[i % len(NAMES)]
        n = i // len(NAMES)
        variants = [
            (provider, model),
            (provider.upper(), model.upper()),
            (provider, f"{provider}/{model}"),
            (provider, f"{model}-2025-06-{1 + i % 28:02d}"),
        ]
        pair = variants[n] if n < len(variants) else (provider, f"{model}-x{n}")
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
        i += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--names", type=int, default=10_000)
    args = parser.parse_args()
    started = time.perf_counter()
    names = ModelNames()
    load_s = time.perf_counter() - started
    pairs = distinct_names(args.names)
    started = time.perf_counter()
    results = [names(p, m) for p, m in pairs]
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    for p, m in pairs:
        names(p, m)
    warm_s = time.perf_counter() - started
    resolved = sum(1 for r in results if not isinstance(r, str))
    print(f"genai-prices import and index: {load_s:.2f} s (once per process)")
    print(
        f"{len(pairs):,} distinct names: {resolved:,} resolved, {len(pairs) - resolved:,} unknown"
    )
    print(f"cold: {cold_s:.2f} s, {cold_s / len(pairs) * 1e6:,.0f} us per name")
    print(f"cached: {warm_s * 1e3:.1f} ms, {warm_s / len(pairs) * 1e6:.2f} us per name")


if __name__ == "__main__":
    main()
