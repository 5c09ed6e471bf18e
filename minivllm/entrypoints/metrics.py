"""Serving metrics in the Prometheus format, kept with ``prometheus_client``.

Each :class:`AsyncLLM` has its own registry, so several servers in one process never clash over a
metric name. Only the engine loop thread updates the metrics; ``/metrics`` renders the registry from the
server's thread (prometheus_client guards every value with a lock, so that read is safe). Rates are
PromQL's job (``rate(minivllm:generation_tokens_total[1m])``): nothing here keeps a window.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "minivllm:"
# The classic text format, which every Prometheus reads (generate_latest writes it for names like ours).
# Not OpenMetrics: prometheus_client's encoder for it writes a name's ':' as '_' in its samples.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# vLLM's buckets, so that dashboards built for vLLM read these the same way
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FINISH_REASONS = ("stop", "length", "abort")  # shown from the start, at 0; others appear when they happen


class EngineMetrics:
    """The metrics of one engine, labelled ``model_name`` (the served name; prometheus_client escapes it).
    Names are vLLM's where vLLM has the metric, with the ``minivllm:`` prefix. Counts are per completion
    (a request with ``n`` completions counts ``n``, as vLLM's fan-out does), prompt tokens once per prompt."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name

        def metric(kind, name: str, doc: str, **kwargs):
            return kind(PREFIX + name, doc, ["model_name"], registry=self.registry, **kwargs).labels(model_name)

        self.running = metric(Gauge, "num_requests_running", "Sequences in the running batch")
        self.waiting = metric(Gauge, "num_requests_waiting", "Sequences waiting to be scheduled")
        self.kv_usage = metric(Gauge, "kv_cache_usage_perc", "Share of KV-cache blocks in use (1 = full)")
        self.kv_used = metric(Gauge, "kv_cache_used_blocks", "KV-cache blocks in use")
        self.kv_total = metric(Gauge, "kv_cache_total_blocks", "KV-cache blocks in all")
        self.prompt_tokens = metric(Counter, "prompt_tokens", "Prompt tokens of admitted requests (once per prompt)")
        self.generation_tokens = metric(Counter, "generation_tokens", "Generated tokens")
        self.batch_size = metric(
            Histogram, "batch_size", "Sequences that sampled a token in one engine step", buckets=BATCH_BUCKETS
        )
        self.ttft = metric(
            Histogram,
            "time_to_first_token_seconds",
            "Time from a request's arrival to a completion's first token",
            buckets=TTFT_BUCKETS,
        )
        self.tpot = metric(
            Histogram,
            "request_time_per_output_token_seconds",
            "Mean time per output token after the first, per finished completion",
            buckets=TPOT_BUCKETS,
        )
        self.e2e = metric(
            Histogram,
            "e2e_request_latency_seconds",
            "Time from a request's arrival to a completion's end (stop or length)",
            buckets=E2E_BUCKETS,
        )
        self._finished = Counter(
            PREFIX + "request_success",
            "Completions that ended, by finish reason",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        for reason in FINISH_REASONS:
            self._finished.labels(model_name, reason)

    # --- called by the engine loop thread only ---------------------------------------------------

    def record_state(self, running: int, waiting: int, kv_used: int, kv_total: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_used.set(kv_used)
        self.kv_total.set(kv_total)
        self.kv_usage.set(kv_used / kv_total if kv_total else 0.0)

    def record_admission(self, num_prompt_tokens: int) -> None:
        self.prompt_tokens.inc(num_prompt_tokens)

    def record_step(self, num_sampled: int) -> None:
        self.generation_tokens.inc(num_sampled)
        if num_sampled:
            self.batch_size.observe(num_sampled)

    def record_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def record_finish(self, reason: str, e2e: float, tpot: float | None) -> None:
        """A completion ended. Latencies are observed only for completions that ran their course."""
        self._finished.labels(self.model_name, reason).inc()
        if reason in ("stop", "length"):
            self.e2e.observe(e2e)
            if tpot is not None:
                self.tpot.observe(tpot)

    # --- any thread --------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The exposition text (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
