"""The daemon's Prometheus metrics, in a registry of its own (one per app, no globals).

Latency and time-to-first-token are histograms, so p50/p99 come from `histogram_quantile`;
tokens/s is both a counter of generated tokens (rate it) and the last request's decode speed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine.backend import Timings

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Counters, gauges and histograms the routes and the scheduler update."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("assistant_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram("assistant_request_seconds", "Time from request to the end of the answer",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("assistant_time_to_first_token_seconds", "Time from request to the first token",
                              ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("assistant_prompt_tokens", "Prompt tokens seen", registry=r)
        self.prefix_hit_tokens = Counter("assistant_prefix_hit_tokens", "Prompt tokens reused from the KV cache",
                                         registry=r)
        self.generated_tokens = Counter("assistant_generated_tokens", "Tokens generated", registry=r)
        self.decode_tok_s = Gauge("assistant_decode_tokens_per_second", "Decode speed of the last generation",
                                  registry=r)
        self.queue_depth = Gauge("assistant_queue_depth", "Requests waiting for the model", registry=r)
        self.busy_slots = Gauge("assistant_busy_slots", "Generations running now", registry=r)
        self.kv_tokens = Gauge("assistant_kv_cache_tokens", "Tokens whose K/V the cache holds (every slot)",
                               registry=r)
        self.kv_capacity = Gauge("assistant_kv_cache_capacity_tokens", "Tokens the KV cache can hold (every slot)",
                                 registry=r)
        self.kv_kept_bytes = Gauge("assistant_kv_kept_bytes", "Bytes of KV kept from earlier requests (blocks "
                                   "on the native backend, sequence states on llama.cpp)", registry=r)
        self.kv_kept_cap = Gauge("assistant_kv_kept_capacity_bytes", "The byte cap of the KV kept from earlier "
                                 "requests", registry=r)
        self.kv_kept_evictions = Counter("assistant_kv_kept_evictions", "Kept KV blocks or states dropped, least "
                                         "recently used first, to make room", registry=r)
        self._evictions_seen = 0
        self.cancelled = Counter("assistant_cancelled_generations", "Generations stopped because the client left",
                                 registry=r)
        self.tool_calls = Counter("assistant_tool_calls", "Tool calls the model wrote", ["valid"], registry=r)

    def generation(self, timings: Timings | None, finish_reason: str | None) -> None:
        if finish_reason == "cancelled":
            self.cancelled.inc()
        if timings is None:  # cancelled before it started
            return
        self.prompt_tokens.inc(timings.prompt_tokens)
        self.prefix_hit_tokens.inc(timings.reused_tokens)
        self.generated_tokens.inc(timings.generated_tokens)
        if timings.decode_tok_s > 0:
            self.decode_tok_s.set(timings.decode_tok_s)

    def kv_kept(self, used: int, cap: int, evictions: int) -> None:
        """The bytes of KV kept from earlier requests, and its evictions so far (the engine counts them)."""
        self.kv_kept_bytes.set(used)
        self.kv_kept_cap.set(cap)
        self.kv_kept_evictions.inc(max(0, evictions - self._evictions_seen))
        self._evictions_seen = max(self._evictions_seen, evictions)

    def render(self) -> bytes:
        return generate_latest(self.registry)
