"""``biz2bricks-consumer`` that dies right after its first commit, before acking (fault tests).

The fault is injected through the worker's ``on_committed`` hook; production settings know
nothing of it. Run as ``python -m tests.consumer.crashing_consumer [consumer args]``.
"""

from __future__ import annotations

import os
import sys

from biz2bricks_consumer.__main__ import main
from biz2bricks_consumer.batching import Batch

EXIT_CODE = 86


def die_after_commit(_: Batch) -> None:
    """Exit at once, as a crash would: the batch is committed and not acked."""
    os._exit(EXIT_CODE)


if __name__ == "__main__":
    sys.exit(main(on_committed=die_after_commit))
