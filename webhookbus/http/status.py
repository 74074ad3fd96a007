"""The status page at ``/`` on the admin listener: one server-rendered HTML page, no JavaScript.

It reads what a scrape reads (:func:`webhookbus.metrics.scrape_registry`: every worker's
counters summed, per-process gauges by pid, the spool's slots) and the providers' recent
activity (:mod:`webhookbus.activity`), so with forked workers it shows them all: counts and
times over every worker, the producer and the config per worker.  It refreshes itself
every 10 seconds (a meta refresh) and fits a phone's width.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from html import escape

from prometheus_client import CollectorRegistry

from webhookbus.activity import Snapshot
from webhookbus.config import Config
from webhookbus.metrics import samples

REFRESH_SECONDS = 10

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,sans-serif;margin:0 auto;max-width:64rem;padding:.75rem;color:#1b1f24;background:#fff}
h1{font-size:1.35rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #d0d7de}
.meta{color:#57606a;font-size:.85rem;margin:0}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}code{font-size:.85rem}
@media (max-width:40rem){table,tbody,tr,td{display:block}thead{display:none}
tr{border:1px solid #d0d7de;border-radius:6px;margin:.5rem 0;padding:.3rem .5rem}
td,td.n{border:0;padding:.1rem 0;text-align:left}td::before{content:attr(data-label) ": ";color:#57606a;font-size:.8rem}}
"""


def _when(timestamp: float | None, now: float) -> str:
    if not timestamp:
        return "never"
    at, today = (datetime.fromtimestamp(t, timezone.utc) for t in (timestamp, now))
    return f"{at.strftime('%H:%M:%S' if at.date() == today.date() else '%Y-%m-%d %H:%M:%S')} UTC ({_age(now - timestamp)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _table(headers: Iterable[str], rows: list[list[str]], empty: str) -> str:
    """``rows`` are already escaped HTML cells; a cell starting with ``\\0`` is right-aligned (numbers).
    On a narrow screen each row becomes a card of "header: value" lines (the CSS's data-label)."""
    if not rows:
        return f"<p>{escape(empty)}</p>"
    labels = [escape(h) for h in headers]
    head = "".join(f"<th>{label}</th>" for label in labels)
    body = "".join("<tr>" + "".join(f'<td class="n" data-label="{label}">{c[1:]}</td>' if c.startswith("\0")
                                    else f'<td data-label="{label}">{c}</td>' for label, c in zip(labels, row)) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _process(labels: dict[str, str]) -> str:
    return f"worker pid {escape(labels['pid'])}" if "pid" in labels else "this process"


def render(config: Config, registry: CollectorRegistry, activity: Snapshot, now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    collected = list(registry.collect())  # once: it reads every worker's files and the spool's slots
    counts: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in samples(collected, "webhookbus_requests_total"):
        counts[labels["provider"]][labels["status"]] = value
    providers = []
    for name, provider in activity.providers.items():
        by_status = counts.get(name, {})
        total = " · ".join(f"{escape(status)}: {int(n)}" for status, n in sorted(by_status.items())) or "none yet"
        providers.append([f"<b>{escape(name)}</b>", f"<code>{escape(provider['path'])}</code>",
                          escape(provider["verifier"]), escape(_when(activity.last_accepted.get(name), now)),
                          escape(_when(activity.last_refused.get(name), now)), total])
    unmatched = counts.get("", {})
    refusals = [[escape(_when(r["time"], now)), escape(r["provider"]), f"\0{int(r['status'])}",
                 f"<code>{escape(str(r.get('error') or ''))}</code>", escape(str(r.get("reason") or "")),
                 f"<code>{escape(str(r.get('client') or 'unknown'))}</code>"] for r in activity.refusals]
    slots: dict[str, dict[str, float]] = defaultdict(dict)
    for name in ("webhookbus_spool_records", "webhookbus_spool_bytes", "webhookbus_spool_oldest_age_seconds"):
        for labels, value in samples(collected, name):
            slots[labels["slot"]][name] = value
    spool = [[escape(slot), f"\0{int(v.get('webhookbus_spool_records', 0))}", f"\0{int(v.get('webhookbus_spool_bytes', 0))}",
              escape(_age(v["webhookbus_spool_oldest_age_seconds"]) if v.get("webhookbus_spool_records") else "empty")]
             for slot, v in sorted(slots.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)]
    producers = [[_process(labels), '<span class="ok">connected</span>' if value >= 1 else
                  '<span class="bad">not connected</span>'] for labels, value in samples(collected, "webhookbus_producer_connected")]
    loaded = [[_process(labels), f"<code>{escape(labels['version'])}</code>", escape(_when(value, now))]
              for labels, value in samples(collected, "webhookbus_config_loaded_timestamp_seconds") if value > 0]
    workers = config.settings.server.workers
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><title>webhookbus status</title><style>{STYLE}</style></head>
<body><h1>webhookbus status</h1>
<p class="meta">{escape(datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))} UTC · refreshes every
{REFRESH_SECONDS} s · {workers} worker{"s" if workers > 1 else ""}{", counts summed over all of them" if workers > 1 else ""}</p>
<h2>Providers</h2>
{_table(["provider", "path", "verifier", "last accepted", "last refused", "requests by status"], providers, "No providers are configured.")}
<p class="meta">Requests to no provider's path: {" · ".join(f"{escape(s)}: {int(n)}" for s, n in sorted(unmatched.items())) or "none"}.</p>
<h2>Recent refusals</h2>
{_table(["when", "provider", "status", "error", "reason", "client"], refusals, "No refused requests.")}
<p class="meta">The last {len(refusals)} of at most {config.settings.admin.recent_rejections if config.settings.admin else 0}; a body or a header value is never shown.</p>
<h2>Spool</h2>
{_table(["slot", "records to forward", "bytes on disk", "oldest record"], spool, "The spool is empty (no slot yet).")}
<h2>Kafka</h2>
<p>Bootstrap servers: <code>{escape(", ".join(config.settings.kafka.bootstrap_servers))}</code></p>
{_table(["process", "producer"], producers, "No producer has reported yet.")}
<h2>Config</h2>
<p>File: <code>{escape(config.source)}</code></p>
{_table(["served by", "version", "loaded"], loaded, "No process has loaded a config yet.")}
</body></html>
"""
    return page.encode()
