"""What each committed batch did, made visible: metrics, log lines, the alert relay woken."""

from __future__ import annotations

import logging

from biz2bricks_consumer.alert_relay import AlertRelay
from biz2bricks_consumer.metrics import ConsumerMetrics
from biz2bricks_consumer.pricing_cache import UnpricedLog
from biz2bricks_consumer.writer import WriteResult

log = logging.getLogger(__name__)


class ResultReporter:
    """Counts a committed batch's result, logs its rejects and unpriced models, wakes alerts."""

    def __init__(
        self, metrics: ConsumerMetrics, unpriced_log: UnpricedLog, alerts: AlertRelay
    ) -> None:
        self._metrics = metrics
        self._unpriced_log = unpriced_log
        self._alerts = alerts

    def __call__(self, result: WriteResult) -> None:
        """Report one committed batch (called before its messages are acked)."""
        m = self._metrics
        m.inserted.inc(result.inserted)
        m.duplicates.inc(result.duplicates)
        m.conflicting_duplicates.inc(result.conflicts)
        if result.unpriced:
            m.unpriced.inc(result.unpriced)
            self._unpriced_log.report(result.unpriced_models)
        m.holds_settled.inc(result.holds_settled)
        if result.alerts_created:
            m.alerts_created.inc(result.alerts_created)
            self._alerts.notify()
        for reject in result.rejected:
            m.rejects.labels(reason=reject.reason_code).inc()
            log.warning(
                "consumer.rejected",
                extra={"message_id": reject.message.message_id, "reason": reject.reason[:500]},
            )
