"""The kit catches broken plugins: a package of deliberately broken ones (tests/fixtures/minivllm-broken-
plugins), pip-installed with its entry point, fails `minivllm check-plugin` with the broken contract named,
what went wrong and a minimal reproduction; the contracts each one keeps still pass."""

import os
import re
import subprocess
import sys

import pytest
import torch

from minivllm.testing import ContractFailure, check_plugin, contracts
from tests.packages import installed

BROKEN = os.path.join(os.path.dirname(__file__), "..", "fixtures", "minivllm-broken-plugins")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> str:
    with installed(BROKEN, tmp_path_factory.mktemp("broken_plugins"), "minivllm_broken_plugins") as site:
        yield site


def check_plugin_command(site: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINIVLLM_PLUGINS="broken", PYTHONPATH=site)
    return subprocess.run(
        [sys.executable, "-m", "minivllm.cli", "check-plugin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("kind", "name", "broken", "message"),
    [
        # a leak starves the requests behind it, so the scheduler also stops making progress
        (
            "scheduler",
            "leaky",
            {"blocks", "progress", "long_prompts"},
            "contract 'blocks' broken: at step 0: request 0 ended, and finish\\(\\) left it holding KV blocks \\[0\\]",
        ),
        (
            "kv_allocator",
            "double_free",
            {"accounting", "prefix_reuse"},
            "contract 'accounting' broken: after call 3: 11 blocks are counted free while live sequences hold 3, "
            "2 more than the 12 blocks: a block in use is counted free \\(freed twice, or freed while shared\\)",
        ),
        (
            "sampler",
            "unseeded",
            {"seeds"},
            "contract 'seeds' broken: at step 0 a seeded row drew \\d alone and \\d in a batch: its tokens must depend "
            "only on its seed and step",
        ),
        (
            "attention_backend",
            "off_by_one",
            {"matches_reference", "gqa", "block_sizes", "fp8_kv_cache"},
            "contract 'matches_reference' broken: sequence 1 \\(0 cached, 5 new\\): new token \\d \\(position \\d\\), "
            "query head \\d differs from the reference by",
        ),
    ],
)
def test_check_plugin_fails_each_broken_plugin_naming_the_contract(broken_site, kind, name, broken, message):
    run = check_plugin_command(broken_site, kind, name)
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    for contract in contracts(kind):
        assert f"{'FAILED' if contract.name in broken else 'PASSED':8}{contract.name}: {contract.summary}" in out
    assert f"{kind} {name!r}: {len(broken)} of {len(contracts(kind))} contracts broken" in out
    assert re.search(message, out), out
    assert "minimal reproduction:" in out


def test_the_reproduction_is_minimal_and_replayable(broken_site, allow):
    """A leaking workload is shrunk to one request of one token; the allocator's calls are printed as code."""
    allow("broken")
    [blocks] = [r for r in check_plugin("scheduler", "leaky") if r.contract.name == "blocks"]
    assert blocks.detail.endswith("requests:\n      0: a 1-token prompt, max_tokens=1, added before step 0")
    with pytest.raises(ContractFailure) as failure:
        next(c for c in contracts("kv_allocator") if c.name == "accounting").check("double_free")
    calls = failure.value.reproduction.splitlines()
    assert calls[0] == "allocator = DoubleFreeAllocator(num_blocks=12, block_size=4, enable_prefix_caching=True); then"
    assert calls[1].startswith("1. s") and "match_prefix" in calls[1] and calls[-1].startswith("3. free(s")


def test_a_healthy_plugin_passes_and_exits_zero(broken_site):
    run = check_plugin_command(broken_site, "kv_allocator", "simple")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.endswith("kv_allocator 'simple': every contract kept (3 checked, 0 skipped)\n")


def test_a_backend_this_machine_cannot_run_is_skipped_with_the_reason(broken_site):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the Triton backend runs")
    run = check_plugin_command(broken_site, "attention_backend", "triton")
    assert run.returncode == 0
    assert "SKIPPED matches_reference" in run.stdout
    assert "attention backend 'triton' is not available on the CPU and there is no GPU here" in run.stdout
    assert run.stdout.endswith("attention_backend 'triton': nothing checked: every contract was skipped here\n")


def test_unknown_names_and_misplaced_options_are_errors(broken_site):
    run = check_plugin_command(broken_site, "scheduler", "lifo")
    assert run.returncode == 1 and "error: unknown scheduler 'lifo'; registered: chunked, fcfs, leaky" in run.stderr
    run = check_plugin_command(broken_site, "sampler", "default", "--options", '{"x": 1}')
    assert run.returncode == 1 and "error: sampler plugins take no options" in run.stderr
    run = check_plugin_command(broken_site, "scheduler", "fcfs", "--options", '{"x": 1}')
    assert run.returncode == 1 and "error: scheduler 'fcfs' has no option 'x' (its options: none)" in run.stderr
    run = check_plugin_command(broken_site, "scheduler", "chunked", "--options", '{"long_prefill_token_threshold": 8}')
    assert run.returncode == 0, run.stdout
