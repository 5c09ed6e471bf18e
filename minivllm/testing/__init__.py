"""The plugin conformance kit: the contracts every implementation of a plugin kind must keep.

From the command line, ``minivllm check-plugin KIND NAME`` runs a kind's suite on a registered plugin and
exits non-zero naming each broken contract with a minimal reproduction. In a plugin's own tests::

    import pytest
    from minivllm.testing import contracts

    @pytest.mark.parametrize("contract", contracts("scheduler"), ids=str)
    def test_keeps_the_scheduler_contract(contract):
        contract.check("my_scheduler")   # ContractFailure (an AssertionError) or a skip

Kinds: ``scheduler``, ``kv_allocator``, ``sampler``, ``attention_backend``, ``model``.
"""

from minivllm.testing.kit import (
    SUITES,
    Contract,
    ContractFailure,
    ContractSkipped,
    Result,
    check_plugin,
    contracts,
    registry,
)

__all__ = [
    "SUITES",
    "Contract",
    "ContractFailure",
    "ContractSkipped",
    "Result",
    "check_plugin",
    "contracts",
    "registry",
]
