"""Serving metrics, kept by the engine loop and written in the Prometheus text format."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

THROUGHPUT_WINDOW_S = 10.0


@dataclass
class EngineMetrics:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    last_batch_size: int = 0
    max_batch_size: int = 0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    # (time, tokens) of recent steps, for the tokens/s gauge
    _recent: deque = field(default_factory=deque)

    def record_step(self, num_sampled: int, now: float) -> None:
        self.generation_tokens += num_sampled
        self.last_batch_size = num_sampled
        self.max_batch_size = max(self.max_batch_size, num_sampled)
        self._recent.append((now, num_sampled))
        while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self._recent.popleft()

    def record_first_token(self, seconds: float) -> None:
        self.ttft_sum += seconds
        self.ttft_count += 1

    def tokens_per_second(self, now: float) -> float:
        recent = [n for t, n in self._recent if t >= now - THROUGHPUT_WINDOW_S]
        return sum(recent) / THROUGHPUT_WINDOW_S

    def render(self, model: str, running: int, waiting: int, kv_used: int, kv_total: int) -> str:
        """The Prometheus exposition text (names as vLLM's where one exists, ``minivllm:`` prefix)."""
        label = f'{{model_name="{model}"}}'
        rows = [
            ("num_requests_running", "gauge", "Sequences in the running batch", running),
            ("num_requests_waiting", "gauge", "Sequences waiting to be scheduled", waiting),
            ("kv_cache_usage_perc", "gauge", "Share of KV-cache blocks in use (1 = full)",
             kv_used / kv_total if kv_total else 0.0),
            ("kv_cache_used_blocks", "gauge", "KV-cache blocks in use", kv_used),
            ("kv_cache_total_blocks", "gauge", "KV-cache blocks in all", kv_total),
            ("prompt_tokens_total", "counter", "Prompt tokens of admitted requests", self.prompt_tokens),
            ("generation_tokens_total", "counter", "Generated tokens", self.generation_tokens),
            ("request_success_total", "counter", "Requests that finished", self.requests_finished),
            ("request_aborted_total", "counter", "Requests aborted (client gone or cancelled)",
             self.requests_aborted),
            ("generation_tokens_per_second", "gauge",
             f"Generated tokens per second over the last {THROUGHPUT_WINDOW_S:.0f} s",
             self.tokens_per_second(time.monotonic())),
            ("batch_size_last", "gauge", "Sequences that sampled a token in the last step", self.last_batch_size),
            ("batch_size_max", "gauge", "Most sequences that sampled a token in one step", self.max_batch_size),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP minivllm:{name} {help_text}", f"# TYPE minivllm:{name} {kind}",
                      f"minivllm:{name}{label} {value}"]
        lines += ["# HELP minivllm:time_to_first_token_seconds Time from arrival to the first token",
                  "# TYPE minivllm:time_to_first_token_seconds summary",
                  f"minivllm:time_to_first_token_seconds_sum{label} {self.ttft_sum}",
                  f"minivllm:time_to_first_token_seconds_count{label} {self.ttft_count}"]
        return "\n".join(lines) + "\n"
