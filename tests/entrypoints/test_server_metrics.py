"""The server's Prometheus metrics, read with prometheus_client's own parser."""

import httpx
import openai

from tests.entrypoints import NO_EOS, scrape, serving


def test_metrics_exposition(llama_path):
    """A model name that needs escaping; counters, gauges and the latency histograms after two requests
    of n=2, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    from minivllm.entrypoints import AsyncLLM

    name = 'tiny "v2"\nof C:\\models'
    engine = AsyncLLM(
        llama_path,
        served_model_name=name,
        kvcache_block_size=16,
        max_model_len=128,
        engine_process=True,
        num_kvcache_blocks=32,
    )
    try:
        with serving(engine) as base_url:
            client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)
            out = client.completions.create(
                model=name, prompt=["Hi", "Once upon a time"], n=2, max_tokens=5, extra_body=NO_EOS
            )
            response = httpx.get(base_url + "/metrics")
            m = scrape(base_url)
    finally:
        engine.close()
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {s.labels["model_name"] for f in families.values() for s in f.samples} == {name}
    assert {
        "minivllm:num_requests_running",
        "minivllm:num_requests_waiting",
        "minivllm:kv_cache_usage_perc",
        "minivllm:prompt_tokens",
        "minivllm:generation_tokens",
        "minivllm:request_success",
        "minivllm:time_to_first_token_seconds",
        "minivllm:request_time_per_output_token_seconds",
        "minivllm:e2e_request_latency_seconds",
        "minivllm:batch_size",
    } <= set(families)
    assert not [f for f in families if "per_second" in f]  # a rate is PromQL's job
    assert {f.type for n, f in families.items() if n.endswith("_seconds")} == {"histogram"}
    assert m["prompt_tokens_total"] == out.usage.prompt_tokens
    assert m["generation_tokens_total"] == out.usage.completion_tokens == 20
    assert m['request_success_total{finished_reason="length"}'] == 4
    assert m['request_success_total{finished_reason="abort"}'] == 0
    for histogram in [
        "time_to_first_token_seconds",
        "request_time_per_output_token_seconds",
        "e2e_request_latency_seconds",
    ]:
        assert m[f"{histogram}_count"] == 4 and m[f'{histogram}_bucket{{le="+Inf"}}'] == 4
        assert m[f"{histogram}_sum"] > 0
    assert m["kv_cache_used_blocks"] == 0 and m["kv_cache_total_blocks"] == 32
