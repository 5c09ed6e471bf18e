"""The `fused` sampler's Triton kernel: greedy rows equal torch's argmax, floors are honoured, the draws
follow softmax(logits / T) (chi-square, several chunks per row), seeded rows do not depend on their
batch, and the whole sampler draws `default`'s distribution for every setting."""

import pytest
import torch

from minivllm.core.interfaces import SamplingBatch
from minivllm.core.sampling_params import SamplingParams
from minivllm.plugins.samplers.default import DefaultSampler
from minivllm.plugins.samplers.fused import FusedSampler
from tests.plugins.test_fast_sampler import CASES, LOGITS, chi2_fit, chi2_same

pytestmark = pytest.mark.kernels
NUM_SMS = 8  # any count works; small in the interpreter


def kernel(logits, inv_temp, floor, seeds):
    from minivllm.plugins.samplers.fused_kernels import gumbel_argmax

    device = logits.device
    return gumbel_argmax(
        logits,
        torch.tensor(inv_temp, device=device, dtype=torch.float32),
        torch.tensor(floor, device=device, dtype=torch.float32),
        torch.tensor(seeds, device=device, dtype=torch.int64),
        NUM_SMS,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_rows_equal_argmax_and_floors_hold(device, dtype):
    vocab = 5000 if device == "cpu" else 151936
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(6, vocab, generator=g, device=device).to(dtype)
    logits[1, 17] = logits[1, 4000] = 50.0  # a tie: the smaller index wins, as with torch.argmax
    got = kernel(logits, [0.0] * 6, [float("-inf")] * 6, [1] * 6)
    assert got.tolist() == logits.float().argmax(-1).tolist() and got[1] == 17
    floor = logits.float().topk(10, dim=-1).values[:, -1]  # only the 10 best may win
    sampled = kernel(logits, [1.0] * 6, floor.tolist(), list(range(6)))
    assert (logits.float().gather(1, sampled[:, None])[:, 0] >= floor).all()


def test_draws_follow_the_softmax_across_chunks(device):
    """A row of 5,000 tokens (several chunks, one program each) sampled 20,000 times with one seed per
    draw: the 7 most likely tokens and the rest, against softmax(logits / 0.7)."""
    n, vocab = (500, 2500) if device == "cpu" else (20000, 5000)
    g = torch.Generator().manual_seed(1)
    row = torch.randn(vocab, generator=g)
    row[:8] += torch.tensor([4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5])
    probs = (row / 0.7).softmax(-1)
    sampled = kernel(row.to(device).repeat(n, 1), [1 / 0.7] * n, [float("-inf")] * n, list(range(n))).cpu()
    bins = torch.where(sampled < 7, sampled, 7)
    counts = torch.bincount(bins, minlength=8).double()
    chi2_fit(counts, torch.cat([probs[:7], probs[7:].sum()[None]]))


def test_seeds_make_rows_independent_of_their_batch(device):
    logits = LOGITS.to(device)
    alone = kernel(logits[None], [1.0], [float("-inf")], [42])
    batch = kernel(logits.repeat(3, 1), [1.0, 1.0, 0.5], [float("-inf")] * 3, [7, 42, 9])
    assert alone[0] == batch[1]


@pytest.mark.parametrize("case", list(CASES))
def test_the_sampler_draws_defaults_distribution(device, case):
    params, expected = CASES[case]
    n = 500 if device == "cpu" else 20000
    batch = SamplingBatch([params] * n, [0] * n, len(LOGITS))
    logits = LOGITS.to(device).repeat(n, 1)
    fused = FusedSampler(len(LOGITS), torch.device(device), seed=0).sample(logits, batch).cpu()
    default = DefaultSampler(len(LOGITS), torch.device(device), seed=2).sample(logits, batch).cpu()
    fused_counts = torch.bincount(fused, minlength=len(LOGITS)).double()
    chi2_fit(fused_counts, expected)
    chi2_same(fused_counts, torch.bincount(default, minlength=len(LOGITS)).double())


def test_seeded_requests_in_the_sampler(device):
    sampler = FusedSampler(len(LOGITS), torch.device(device), seed=0)
    seeded, other = SamplingParams(seed=5, top_k=6), SamplingParams(temperature=0.3)
    logits = LOGITS.to(device)
    alone = [int(sampler.sample(logits[None], SamplingBatch([seeded], [s], 8))[0]) for s in range(10)]
    mixed = [
        int(sampler.sample(logits.repeat(3, 1), SamplingBatch([other, seeded, other], [3, s, 1], 8))[1])
        for s in range(10)
    ]
    assert alone == mixed and len(set(alone)) > 1
