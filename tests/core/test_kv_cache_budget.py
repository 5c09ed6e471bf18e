"""The CPU KV cache: never more blocks than max_num_seqs x max_model_len can use, never more bytes than
cpu_kvcache_space_gib, and its pages are mapped only as blocks are written."""

from minivllm import LLM, SamplingParams

SMALL = dict(max_model_len=64, kvcache_block_size=16, device="cpu")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def cache(llm):
    return llm.engine.executor.runner.kv_cache


def test_no_more_blocks_than_the_sequences_can_use(llama_path):
    with LLM(llama_path, max_num_seqs=3, **SMALL) as llm:
        assert cache(llm).num_blocks == 3 * 64 // 16  # far below the 4 GiB default budget


def test_the_budget_caps_the_blocks(llama_path):
    with LLM(llama_path, max_num_seqs=512, cpu_kvcache_space_gib=0.001, **SMALL) as llm:
        kv = cache(llm)
        assert kv.num_blocks == int(0.001 * 2**30) // kv.block_bytes
        assert kv.num_blocks * kv.block_bytes <= 0.001 * 2**30 < (kv.num_blocks + 1) * kv.block_bytes


def test_pages_are_touched_only_when_used(llama_path):
    gib, before = 1.0, rss_bytes()
    with LLM(
        llama_path,
        max_num_seqs=4096,
        max_model_len=2048,
        kvcache_block_size=16,
        device="cpu",
        cpu_kvcache_space_gib=gib,
    ) as llm:
        kv = cache(llm)
        assert kv.num_blocks * kv.block_bytes > 0.99 * gib * 2**30  # the whole budget is reserved...
        llm.generate(["Once upon a time"], SamplingParams(max_tokens=8), use_tqdm=False)
        assert rss_bytes() - before < 0.25 * gib * 2**30  # ...but almost none of it is resident
