"""``python -m biz2bricks_consumer``: the same command as the ``biz2bricks-consumer`` script."""

from __future__ import annotations

import sys

from biz2bricks_consumer._entry import main

if __name__ == "__main__":
    sys.exit(main())
