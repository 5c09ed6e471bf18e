"""Every built-in plugin keeps its kind's contracts: the kit's suites, parametrised over the registries.
Contracts that need a device this machine lacks (the Triton and flash-attn backends on a CPU) are skipped
with the reason."""

import pytest

from minivllm.testing import SUITES, contracts, registry

CASES = [(name, contract) for kind in SUITES for name in registry(kind).names() for contract in contracts(kind)]


@pytest.mark.parametrize(("name", "contract"), CASES, ids=[f"{c}[{n}]" for n, c in CASES])
def test_builtin_keeps_the_contract(name, contract):
    contract.check(name)
