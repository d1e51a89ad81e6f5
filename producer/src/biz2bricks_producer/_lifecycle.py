"""Process-level hooks of the producers: fork, SIGTERM and interpreter exit.

An application may create its producer at import and never close it, then run under gunicorn
``--preload`` (the producer is created before fork) or uvicorn (which re-raises SIGTERM with the
default action after its graceful shutdown, so ``atexit`` never runs). These hooks keep promise
6 for such applications:

- fork: the child drops what the parent accepted (the parent publishes it) and starts its own
  threads, client and spool slot;
- SIGTERM: when a producer is created on the main thread (and again at the first event recorded
  on the main thread of a forked child), its hook is put in front of the current handler. It
  drains each producer (``on_sigterm``): publishes what is in memory within
  ``USAGE_EXIT_FLUSH_TIMEOUT``, spools the rest, writes events recorded afterwards straight to
  the spool, then hands over to the previous handler;
- interpreter exit: ``close()`` with the same bound.

These hooks use only the producer's public methods: ``before_fork``, ``after_fork_in_parent``,
``after_fork_in_child``, ``on_sigterm`` and ``close``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from biz2bricks_producer.producer import UsageProducer

log = logging.getLogger("biz2bricks_producer")

_producers: weakref.WeakSet[UsageProducer] = weakref.WeakSet()
_forking: list[UsageProducer] = []
_fork_hooks_installed = False
_previous_sigterm: Any = None
# Clients inherited across fork: their gRPC channels belong to the parent, so the child neither
# uses nor closes them (closing could touch the parent's connections); they are kept referenced
# so that no finalizer runs on them either.
_inherited_clients: list[object] = []


def register(producer: UsageProducer) -> bool:
    """Hook a new producer into fork, SIGTERM and exit; True when the SIGTERM hook is in place."""
    global _fork_hooks_installed
    _producers.add(producer)
    if not _fork_hooks_installed:
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
        _fork_hooks_installed = True
    atexit.register(_close_at_exit, weakref.ref(producer))
    return chain_sigterm()


def chain_sigterm() -> bool:
    """Put the SIGTERM hook in front of the current handler.

    Returns False off the main thread (signal handlers can only be set there: try again later),
    True once the hook is in place or must not be (SIGTERM ignored, or a handler set outside
    Python that could not be called on).
    """
    global _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm or current is None or current == signal.SIG_IGN:
        return True
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main interpreter
        return True
    _previous_sigterm = current
    return True


def keep_inherited_client(client: object) -> None:
    """Hold a client inherited across fork for the life of the process (see above)."""
    if client is not None:
        _inherited_clients.append(client)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The work runs on a helper thread: the interrupted frame on this (main) thread may hold a
    # producer's lock, which the handler itself would then wait for forever.
    producers = list(_producers)
    helper = threading.Thread(target=_drain_all, args=(producers,), name="usage-sigterm")
    helper.daemon = True
    helper.start()
    bound_s = max((p.settings.exit_flush_timeout_s for p in producers), default=0.0) + 1.0
    helper.join(bound_s)
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        if helper.is_alive():
            # This thread holds what the helper needs: let it run on, then signal again.
            threading.Thread(target=_signal_when_done, args=(helper,), daemon=True).start()
            return
        # End the process as it would have ended without this hook.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def _drain_all(producers: list[UsageProducer]) -> None:
    for producer in producers:
        try:
            producer.on_sigterm()
        except Exception:  # the previous handler must run whatever happened here
            log.exception("producer.sigterm_hook_failed")


def _signal_when_done(helper: threading.Thread) -> None:
    helper.join()
    os.kill(os.getpid(), signal.SIGTERM)  # the hook runs again, finds nothing left, and ends


def _before_fork() -> None:
    # Every producer holds its locks across fork(): the child then sees no half-made batch and
    # no half-written spool line.
    _forking[:] = list(_producers)
    for producer in _forking:
        producer.before_fork()


def _after_fork_in_parent() -> None:
    for producer in reversed(_forking):
        producer.after_fork_in_parent()
    _forking.clear()


def _after_fork_in_child() -> None:
    forked, _forking[:] = list(_forking), []
    for producer in forked:
        try:
            producer.after_fork_in_child()
        except Exception:
            log.exception("producer.fork_restart_failed")


def _close_at_exit(ref: weakref.ref[UsageProducer]) -> None:
    producer = ref()
    if producer is not None:
        producer.close(timeout=producer.settings.exit_flush_timeout_s)
