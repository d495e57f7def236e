"""The dashboard's content as data: rows of panels, each a few PromQL queries. Plain Python,
no Grafana or Ray here; observability/dashboard.py turns it into Grafana JSON and the slow
test (tests/e2e/test_prometheus_e2e.py) runs every query against a real Prometheus.

Names are as Prometheus sees them: Ray prefixes every application metric with ``ray_`` and
counters end in ``_total``. ``$__rate_interval`` is Grafana's; outside Grafana substitute a
window of at least four scrapes (Ray reports to its exporter every ~10 s).
"""

from __future__ import annotations

from dataclasses import dataclass

RATE = "$__rate_interval"
NOT_2XX = 'status!~"2.."'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # a Grafana unit id: reqps, s, percentunit, bytes, short ...
    queries: tuple[Query, ...]
    description: str = ""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _rate(metric: str, selector: str = "") -> str:
    return f"rate({metric}{{{selector}}}[{RATE}])" if selector else f"rate({metric}[{RATE}])"


def _quantiles(metric: str, by: str, scale: str = "") -> tuple[Query, ...]:
    return tuple(
        Query(f"histogram_quantile({q}, sum by (le, {by}) ({_rate(metric + '_bucket')})){scale}",
              f"p{int(q * 100)} {{{{{by}}}}}")
        for q in (0.5, 0.95))


def _ratio(num: str, den: str, by: str) -> str:
    return f"sum by ({by}) ({num}) / sum by ({by}) ({den})"


INGRESS = Row("Requests (ingress, per agent role)", (
    Panel("Requests/s by role and status", "reqps", (
        Query(f"sum by (role, status) ({_rate('ray_prefillshare_requests_total')})",
              "{{role}} {{status}}"),)),
    Panel("Errors/s by status", "reqps", (
        Query(f"sum by (role, status) ({_rate('ray_prefillshare_requests_total', NOT_2XX)})",
              "{{role}} {{status}}"),),
          "Completion requests answered with a non-2xx status (role \"unknown\": failed before a "
          "role was resolved)."),
    Panel("Time to first token by role", "s", _quantiles("ray_prefillshare_ttft_seconds", "role"),
          "From the P/D pipeline's start (after tokenization) to the first output token."),
    Panel("End-to-end latency by role", "s",
          _quantiles("ray_prefillshare_request_latency_seconds", "role"),
          "Successful requests, arrival to last byte sent (streams included)."),
    Panel("Tokens/s in and out by role", "short", (
        Query(f"sum by (role) ({_rate('ray_prefillshare_prompt_tokens_total')})", "in {{role}}"),
        Query(f"sum by (role) ({_rate('ray_prefillshare_completion_tokens_total')})",
              "out {{role}}"))),
    Panel("Prefill prefix-cache hit ratio by role", "percentunit", (
        Query(_ratio(_rate("ray_prefillshare_prefill_cached_tokens_total"),
                     _rate("ray_prefillshare_prompt_tokens_total"), "role"), "{{role}}"),),
          "Prompt tokens the prefill pool served from its prefix cache / prompt tokens."),
    Panel("Requests in flight by role", "short", (
        Query("sum by (role) (ray_prefillshare_inflight_requests)", "{{role}}"),)),
))

ENGINES = Row("Engines (per pool)", (
    Panel("Prefix-cache hit ratio by pool", "percentunit", (
        Query(_ratio(_rate("ray_prefillshare_prefix_cache_hits_total"),
                     _rate("ray_prefillshare_prefix_cache_queries_total"), "kind, pool"),
              "{{kind}} {{pool}}"),)),
    Panel("Engine queue depth by pool", "short", (
        Query("sum by (kind, pool) (ray_prefillshare_engine_queue_depth)", "{{kind}} {{pool}}"),),
          "Requests running plus waiting in the engines of each pool."),
    Panel("KV cache usage by replica", "percentunit", (
        Query("max by (kind, pool, replica) (ray_prefillshare_kv_cache_usage)", "{{replica}}"),)),
    Panel("KV transfers/s by pool", "short", (
        Query(f"sum by (pool) ({_rate('ray_prefillshare_kv_transfers_total')})", "{{pool}}"),)),
    Panel("KV bytes per transfer by pool", "bytes", (
        Query(_ratio(_rate("ray_prefillshare_kv_transfer_bytes_total"),
                     _rate("ray_prefillshare_kv_transfers_total"), "pool"), "{{pool}}"),)),
    Panel("KV time per transfer by pool", "s", (
        Query(_ratio(_rate("ray_prefillshare_kv_transfer_seconds_total"),
                     _rate("ray_prefillshare_kv_transfers_total"), "pool"), "{{pool}}"),)),
    Panel("Decode prompt tokens/s: pulled over NIXL vs reused", "short", (
        Query(f"sum by (pool, source) ({_rate('ray_prefillshare_decode_prompt_tokens_total')})",
              "{{pool}} {{source}}"),)),
    Panel("Routing decisions/s", "short", (
        Query(f"sum by (deployment, decision) ({_rate('ray_prefillshare_routing_decisions_total')})",
              "{{deployment}} {{decision}}"),),
          "Why the request router picked a replica: affinity, prefix, fallback, load, failover."),
))

VLLM = Row("vLLM engine metrics (ray_vllm_*)", (
    Panel("vLLM time to first token", "s",
          _quantiles("ray_vllm_time_to_first_token_seconds", "model_name")),
    Panel("vLLM requests running and waiting", "short", (
        Query("sum by (model_name) (ray_vllm_num_requests_running)", "running {{model_name}}"),
        Query("sum by (model_name) (ray_vllm_num_requests_waiting)", "waiting {{model_name}}"))),
    Panel("vLLM KV cache usage", "percentunit", (
        Query("max by (model_name, ReplicaId) (ray_vllm_kv_cache_usage_perc)", "{{ReplicaId}}"),)),
    Panel("vLLM tokens/s", "short", (
        Query(f"sum by (model_name) ({_rate('ray_vllm_prompt_tokens_total')})",
              "prompt {{model_name}}"),
        Query(f"sum by (model_name) ({_rate('ray_vllm_generation_tokens_total')})",
              "generated {{model_name}}"))),
    Panel("NIXL transfer time (vLLM)", "s",
          _quantiles("ray_vllm_nixl_xfer_time_seconds", "model_name")),
))

SERVE = Row("Ray Serve", (
    Panel("Serve QPS by deployment", "reqps", (
        Query(f"sum by (deployment) ({_rate('ray_serve_deployment_request_counter_total')})",
              "{{deployment}}"),)),
    Panel("HTTP QPS by status", "reqps", (
        Query(f"sum by (application, status_code) ({_rate('ray_serve_num_http_requests_total')})",
              "{{application}} {{status_code}}"),)),
    Panel("HTTP latency", "s",
          _quantiles("ray_serve_http_request_latency_ms", "application", " / 1000")),
    Panel("Deployment processing latency", "s",
          _quantiles("ray_serve_deployment_processing_latency_ms", "deployment", " / 1000")),
    Panel("Healthy replicas by deployment", "short", (
        Query("sum by (deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}"),)),
))

ROWS: tuple[Row, ...] = (INGRESS, ENGINES, VLLM, SERVE)


def all_queries() -> list[tuple[str, Query]]:
    """(panel title, query) for every query on the dashboard."""
    return [(p.title, q) for row in ROWS for p in row.panels for q in p.queries]
