"""The charts' day series from Prometheus, when the operator points the GPU Hub page at one
(``metrics.prometheus_url`` in gpuhub.yaml).

Prometheus has what the usage ledger cannot: the waits still under way (``gpuhub_queue_length``
from the hub's own ``/hub/metrics``), sampled over the day.  Units held per pool come from the
hub exporter's ``gpuhub_pool_held_units``.  A Prometheus that does not answer, or answers
something else, is said on the page, and the ledger draws instead (:func:`hub_services.admin.core.charts`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hub_services.admin.charts import Steps

HELD = "sum by (pool) (gpuhub_pool_held_units)"
WAITING = "sum by (pool) (gpuhub_queue_length)"
#: points per series at most (a step of at least 15 s)
POINTS = 500


class PrometheusError(Exception):
    """Prometheus did not answer a query with a matrix."""


async def day_series(url: str, query: str, start: datetime, end: datetime, timeout: float = 10) -> list[Steps]:
    """``query`` (summed by pool) over [start, end] as step series, one per pool; before the
    first sample a pool counts 0."""
    step = max(15.0, (end - start).total_seconds() / POINTS)
    params = urlencode({"query": query, "start": f"{start.timestamp():.3f}", "end": f"{end.timestamp():.3f}",
                        "step": f"{step:g}"})
    try:
        response = await AsyncHTTPClient().fetch(f"{url.rstrip('/')}/api/v1/query_range?{params}",
                                                 request_timeout=timeout, raise_error=False)
        doc = json.loads(response.body or b"{}")
        if response.code != 200 or doc.get("status") != "success" or doc["data"]["resultType"] != "matrix":
            raise PrometheusError(doc.get("error") or f"HTTP {response.code}")
        series = []
        for result in doc["data"]["result"]:
            points = [(start, 0)] + [(datetime.fromtimestamp(float(t), timezone.utc), round(float(v)))
                                     for t, v in result["values"]]
            series.append(Steps(result["metric"].get("pool") or "?", tuple(points + [(end, points[-1][1])])))
    except (HTTPClientError, OSError, ValueError, KeyError, TypeError) as e:  # a timeout is an HTTPClientError
        raise PrometheusError(str(e) or type(e).__name__) from None
    return sorted(series, key=lambda s: s.pool)
