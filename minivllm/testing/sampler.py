"""Sampler contracts, on the sampler interface of ``core/interfaces/sampler.py``: ``sample(logits, batch)``
with a :class:`SamplingBatch` (each row's ``SamplingParams`` and generated-token count).

The core processes the logits before a sampler sees them (penalties; ``min_tokens`` bans stop tokens by
setting their logits to -inf) and computes logprobs after, so a sampler is checked on what is its own:
greedy rows take the argmax; the other rows draw from softmax(logits / temperature), truncated by top-k,
top-p and min-p, which chi-square tests over fixed seeds check (20,000 draws of 8 tokens, p = 0.001);
a seeded row's token depends only on its seed and step, whatever the batch; a banned token is never
drawn. Every call must return [B] int64 tokens on the logits' device and leave the logits unchanged.
"""

from __future__ import annotations

import torch

from minivllm.core.interfaces import SamplingBatch
from minivllm.core.sampling_params import SamplingParams
from minivllm.testing.kit import Contract, ContractFailure, registry

N = 20000
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
PROBS = LOGITS.softmax(-1)  # cumulative: .40 .65 .80 ...
# chi-square critical values at p = 0.001 by degrees of freedom
CHI2_CRIT = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def renormalised(keep: torch.Tensor, probs: torch.Tensor = PROBS) -> torch.Tensor:
    """``probs`` restricted to ``keep`` and renormalised."""
    return torch.where(keep, probs, 0) / probs[keep].sum()


def chi_square_misfit(counts: torch.Tensor, expected: torch.Tensor) -> str | None:
    """Why draws with these ``counts`` do not fit the ``expected`` distribution (p = 0.001); None if they do."""
    support = expected > 0
    if counts[~support].sum():
        return f"drew tokens outside the distribution's support: counts {counts.tolist()}"
    exp = expected[support].double() * counts.sum()
    chi2 = float(((counts[support] - exp) ** 2 / exp).sum())
    if chi2 >= CHI2_CRIT[int(support.sum()) - 1]:
        return (
            f"counts {counts.tolist()}, expected {[round(x, 1) for x in (expected * counts.sum()).tolist()]}: "
            f"chi-square {chi2:.1f} >= {CHI2_CRIT[int(support.sum()) - 1]}"
        )
    return None


class Calls:
    """Makes the plugin's sampler and calls it as the runner does, checking what every call must give."""

    def __init__(self, contract: str, plugin: str):
        self.contract, self.plugin = contract, plugin
        self.cls = registry("sampler").get(plugin)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def sample(
        self, logits: torch.Tensor, params: list[SamplingParams], steps: list[int], seed: int = 0, what: str = ""
    ) -> torch.Tensor:
        logits = logits.to(self.device)
        before = logits.clone()
        sampler = self.cls(logits.shape[-1], self.device, seed)
        tokens = sampler.sample(logits, SamplingBatch(params, steps, logits.shape[-1]))
        call = f"{self.cls.__name__}(vocab_size={logits.shape[-1]}, device, seed={seed}).sample(logits, batch); {what}"
        if not (isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64 and tokens.shape == (len(params),)):
            self.fail(f"sample() returned {tokens!r:.80}, not [{len(params)}] int64 tokens", call)
        if tokens.device != logits.device:
            self.fail(f"sample() returned tokens on {tokens.device}, the logits are on {logits.device}", call)
        if not torch.equal(logits, before):
            self.fail("sample() changed the logits in place (the core computes logprobs from them afterwards)", call)
        return tokens.cpu()

    def fail(self, message: str, reproduction: str) -> None:
        raise ContractFailure(self.contract, message, reproduction)

    def distribution(
        self, params: SamplingParams, expected: torch.Tensor, logits: torch.Tensor = LOGITS, seeded: bool = False
    ) -> None:
        """N rows of ``logits`` with ``params`` (each with its own seed if ``seeded``) fit ``expected``."""
        rows = [params.model_copy(update={"seed": i}) for i in range(N)] if seeded else [params] * N
        what = f"logits = {logits.tolist()} repeated {N} times, every row {params!r}" + (
            " with seeds 0 to N-1" if seeded else ""
        )
        tokens = self.sample(logits.repeat(N, 1), rows, [0] * N, what=what)
        misfit = chi_square_misfit(torch.bincount(tokens, minlength=len(logits)).double(), expected)
        if misfit:
            self.fail(
                f"the draws do not follow the distribution {[round(p, 4) for p in expected.tolist()]}: {misfit}", what
            )


def greedy(plugin: str, options: dict) -> None:
    calls = Calls("greedy", plugin)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g)
    tokens = calls.sample(logits, [SamplingParams(temperature=0.0)] * 6, [0] * 6, what="6 rows of randn(50), greedy")
    if not torch.equal(logits.gather(1, tokens[:, None])[:, 0], logits.amax(-1)):
        calls.fail(
            f"greedy rows drew {tokens.tolist()}, the argmax is {logits.argmax(-1).tolist()}",
            "6 rows of torch.randn(6, 50) (seed 0), every row SamplingParams(temperature=0)",
        )
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_p=0.9)] * 500
    mixed = calls.sample(LOGITS.repeat(1000, 1), params, [0] * 1000, what="greedy rows among sampling rows")
    if not mixed[0::2].eq(0).all():
        calls.fail(
            "a greedy row batched with sampling rows did not take the argmax",
            f"logits = {LOGITS.tolist()} repeated 1000 times, rows alternating SamplingParams(temperature=0) "
            "and SamplingParams(temperature=1, top_p=0.9)",
        )
    rounded = logits.to(torch.bfloat16)
    half = calls.sample(
        rounded,
        [SamplingParams(temperature=0.0)] * 6,
        [0] * 6,
        what="bfloat16 logits (the model's dtype when the core changed nothing)",
    )
    if not torch.equal(rounded.gather(1, half[:, None])[:, 0], rounded.amax(-1)):  # ties may take either
        calls.fail(
            f"greedy rows of bfloat16 logits drew {half.tolist()}",
            "6 rows of torch.randn(6, 50) (seed 0) in bfloat16, greedy",
        )


def temperature(plugin: str, options: dict) -> None:
    calls = Calls("temperature", plugin)
    for t in (1.0, 0.5, 2.0):
        calls.distribution(SamplingParams(temperature=t), (LOGITS / t).softmax(-1))


def truncation(plugin: str, options: dict) -> None:
    calls = Calls("truncation", plugin)
    top3 = torch.arange(8) < 3
    cases = [
        (SamplingParams(top_k=3), renormalised(top3)),
        (SamplingParams(top_p=0.7), renormalised(top3)),
        (SamplingParams(min_p=0.2), renormalised(PROBS >= 0.2 * PROBS[0])),
        (SamplingParams(top_k=5, top_p=0.7), renormalised(top3)),
        (SamplingParams(top_k=4, temperature=2.0), renormalised(torch.arange(8) < 4, (LOGITS / 2).softmax(-1))),
    ]
    for params, expected in cases:
        calls.distribution(params, expected)


def seeds(plugin: str, options: dict) -> None:
    calls = Calls("seeds", plugin)
    seeded, other = SamplingParams(seed=1234), SamplingParams()
    alone = [int(calls.sample(LOGITS[None], [seeded], [step], seed=0)[0]) for step in range(20)]
    for step in range(20):
        batch = [other, SamplingParams(seed=7, top_k=4), seeded]
        token = int(calls.sample(LOGITS.repeat(3, 1), batch, [5, 2, step], seed=1)[2])
        if token != alone[step]:
            calls.fail(
                f"at step {step} a seeded row drew {alone[step]} alone and {token} in a batch: its tokens "
                "must depend only on its seed and step",
                f"logits = {LOGITS.tolist()}; sampler seed 0, batch [SamplingParams(seed=1234)] at step "
                f"{step}; then sampler seed 1, batch [SamplingParams(), SamplingParams(seed=7, top_k=4), "
                f"SamplingParams(seed=1234)] at steps [5, 2, {step}]: row 2 differs",
            )
    if len(set(alone)) == 1:
        calls.fail(
            f"a seeded row drew {alone[0]} at every one of 20 steps: each step needs its own draw",
            f"logits = {LOGITS.tolist()}, batch [SamplingParams(seed=1234)] at steps 0 to 19",
        )
    calls.distribution(SamplingParams(), PROBS, seeded=True)


def banned_tokens(plugin: str, options: dict) -> None:
    calls = Calls("banned_tokens", plugin)
    banned = LOGITS.clone()
    banned[[0, 2]] = float("-inf")  # as the core bans stop tokens before min_tokens
    keep = banned > float("-inf")
    for params in (SamplingParams(), SamplingParams(top_p=0.9), SamplingParams(top_k=3), SamplingParams(min_p=0.1)):
        probs = banned.softmax(-1)
        if params.top_k > 0:
            keep_k = torch.zeros(8, dtype=torch.bool)
            keep_k[banned.topk(params.top_k).indices] = True
            probs = renormalised(keep_k, probs)
        elif params.top_p < 1.0:
            ordered = probs.sort(descending=True)
            cut = (ordered.values.cumsum(-1) - ordered.values) >= params.top_p
            probs = renormalised(torch.zeros(8, dtype=torch.bool).index_fill(0, ordered.indices[~cut], True), probs)
        elif params.min_p:
            probs = renormalised(probs >= params.min_p * probs.max(), probs)
        calls.distribution(params, probs * keep, logits=banned)


CONTRACTS = [
    Contract(
        "sampler",
        "greedy",
        "greedy rows (temperature 0) take the argmax, alone, among sampling rows and from bfloat16 logits",
        greedy,
    ),
    Contract(
        "sampler", "temperature", "sampling rows draw from softmax(logits / temperature) (chi-square)", temperature
    ),
    Contract(
        "sampler",
        "truncation",
        "top-k, top-p and min-p keep the tokens vLLM keeps and renormalise (chi-square)",
        truncation,
    ),
    Contract(
        "sampler",
        "seeds",
        "a seeded row's token depends only on its seed and step, whatever the batch and "
        "the engine seed; seeded rows follow the distribution",
        seeds,
    ),
    Contract(
        "sampler",
        "banned_tokens",
        "the core's processed logits are honoured: a token banned with -inf is never drawn, the rest keep their share",
        banned_tokens,
    ),
]
