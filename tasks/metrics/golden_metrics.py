"""The golden set's last scores as Prometheus gauges, for the metrics exporter.

Runs in the Procfile `metrics` process (scripts/metrics_exporter.py). From the history
of golden-set runs (tasks/state/golden.py), per engine and model, its last run's CER
and WER (`ocr_golden_cer{engine,model}`, `ocr_golden_wer{engine,model}`) and the run
before it (`ocr_golden_previous_cer`, `ocr_golden_previous_wer`: absent after a first
run), so that an alert rule compares the two (`OcrGoldenAccuracyWorse`,
deploy/prometheus/rules.yaml). A last run with escalation on gives the share of its
pages escalated beside its CER (`ocr_golden_escalated_share{engine,model}`). The
families are declared even before any run.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tasks.state.golden import GoldenStore, latest_runs

__all__ = ["GoldenCollector"]


class GoldenCollector(Collector):
    """The gauges above, read from the store Redis at each scrape."""

    def __init__(self, store: redis.Redis) -> None:
        self._golden = GoldenStore(store)

    def collect(self) -> Iterator[Metric]:
        labels = ["engine", "model"]
        families = {
            ("cer", 0): GaugeMetricFamily("ocr_golden_cer", "Character error rate of the "
                                          "last golden-set run (OCR_GOLDEN_SET).", labels=labels),
            ("wer", 0): GaugeMetricFamily("ocr_golden_wer", "Word error rate of the last "
                                          "golden-set run.", labels=labels),
            ("cer", 1): GaugeMetricFamily("ocr_golden_previous_cer", "Character error rate "
                                          "of the golden-set run before the last.",
                                          labels=labels),
            ("wer", 1): GaugeMetricFamily("ocr_golden_previous_wer", "Word error rate of "
                                          "the golden-set run before the last.", labels=labels),
            ("escalated_share", 0): GaugeMetricFamily(
                "ocr_golden_escalated_share", "Share of the pages of the last golden-set "
                "run read again by the escalation engine (runs with escalation on).",
                labels=labels),
        }
        try:
            history = self._golden.history()
        except redis.RedisError:
            history = []  # ocr_redis_up says why
        for (engine, model), runs in sorted(latest_runs(history).items()):
            for (rate, index), family in families.items():
                if index < len(runs) and rate in runs[index]:
                    family.add_metric([engine, model], float(runs[index][rate]))
        yield from families.values()
