"""Request counts and latency histograms for Prometheus, cheap enough to update on every call.

prometheus_client's own Counter and Histogram take a lock and walk the buckets per call;
here a call is a dict update and a bisect, and the metric families are built only when
``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RequestMetrics(Collector):
    """``<name>s_total{labels}`` and ``<name>_seconds{labels minus the last}``; the last label is the outcome."""

    def __init__(self, name: str, description: str, labels: list[str]) -> None:
        self.name, self.description, self.labels = name, description, labels
        self.counts: dict[tuple[str, ...], int] = defaultdict(int)
        self.latency: dict[tuple[str, ...], list] = {}
        REGISTRY.register(self)

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        self.counts[labels] += 1
        key = labels[:-1]
        entry = self.latency.get(key)
        if entry is None:
            entry = self.latency[key] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
        entry[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        entry[1] += seconds

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(f"{self.name}s", f"{self.description} handled", labels=self.labels)
        for labels, count in list(self.counts.items()):
            total.add_metric(list(labels), count)
        yield total
        latency = HistogramMetricFamily(
            f"{self.name}_seconds", f"{self.description}: latency (streams: until the end)", labels=self.labels[:-1]
        )
        bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for labels, (buckets, total_seconds) in list(self.latency.items()):
            latency.add_metric(
                list(labels), list(zip(bounds, itertools.accumulate(buckets), strict=True)), total_seconds
            )
        yield latency
