"""Write the price catalogue data file from the installed genai-prices package.

Every token-priced model of every provider genai-prices knows, with its price history, its
long-context tiers and its price variants (batch, service tiers, speed, route), plus the
reviewed operator supplements (biz2bricks_core.price_supplements), as ``model_pricing``
rows (see biz2bricks_core.price_catalogue). The file is named for the genai-prices version
and the row format; review its diff, then apply it with a migration that calls
``sync_catalogue`` on it (0011_price_context.py is the example): rows whose prices changed
are retired and replaced, never updated, so stored costs stay reproducible.

To refresh: bump genai-prices (the pin in shared_models/pyproject.toml), run
    uv run python scripts/refresh_pricing_seed.py
and add a migration pointing at the new file.
"""

from __future__ import annotations

import json
from pathlib import Path

from biz2bricks_core.model_names import catalogue_version
from biz2bricks_core.price_catalogue import catalogue_rows

OUT_DIR = Path(__file__).resolve().parent.parent / "migrations" / "data" / "pricing"
# The file's row format: v2 rows carry ``variant`` and ``web_search_per_k_usd`` (0011). A new
# format is a new file, since older migrations apply their own file against their own schema.
FORMAT = "v2"


def main() -> None:
    rows = catalogue_rows()
    out = OUT_DIR / f"genai-prices-{catalogue_version()}-{FORMAT}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One row per line: a refresh's diff shows exactly the prices that changed.
    lines = ",\n".join(json.dumps(row, separators=(",", ":")) for row in rows)
    out.write_text(f"[\n{lines}\n]\n")
    models = len({(r["provider"], r["model"]) for r in rows})
    print(f"wrote {len(rows)} rows ({models} models) to {out}")


if __name__ == "__main__":
    main()
