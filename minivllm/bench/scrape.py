"""A server's ``/metrics`` read back as a dict, for the serving benchmarks (``benchmarks/serve.py``,
``loadtest.py``, ``hostile.py``) and the server tests."""

from __future__ import annotations


def scrape(base_url: str, headers: dict | None = None) -> dict[str, float]:
    """The server's /metrics: {name without "minivllm:", with its labels but model_name: value}, such as
    ``kv_cache_used_blocks`` or ``request_success_total{finished_reason="abort"}``."""
    import httpx  # a client's library, not the engine's: imported here
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(base_url + "/metrics", headers=headers, timeout=30)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()) if k != "model_name")
            samples[s.name.removeprefix("minivllm:") + (f"{{{labels}}}" if labels else "")] = s.value
    return samples
