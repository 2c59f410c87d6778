"""The shared log-prob function: values, entropy, and the LM head on response positions only."""

import mlx.core as mx
import numpy as np
from mlx_lm import load

from mlx_gft.groups import pad_batch, response_start
from mlx_gft.logprobs import gather_logprobs, token_logprobs


def test_gather_logprobs_matches_numpy():
    logits = mx.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    lp, ent = gather_logprobs(logits, mx.array([0, 2]), with_entropy=True)
    z = np.array(logits)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.array(lp), [logp[0, 0], logp[1, 2]], rtol=1e-6)
    np.testing.assert_allclose(np.array(ent), -(np.exp(logp) * logp).sum(-1), rtol=1e-6)


def test_start_skips_prompt_positions_exactly(tiny_model):
    model, _ = load(str(tiny_model))
    rng = np.random.default_rng(0)
    pairs = [(list(rng.integers(3, 200, 40)), list(rng.integers(3, 200, n))) for n in (5, 9)]
    tokens, mask = pad_batch(pairs)
    start = response_start(mask)
    assert start == 32  # the 40-token prompts: targets from position 39, rounded down
    full, full_ent = token_logprobs(model, tokens, with_entropy=True)
    part, part_ent = token_logprobs(model, tokens, with_entropy=True, start=start)
    assert part.shape == (2, tokens.shape[1] - 1 - start)
    np.testing.assert_allclose(np.array(part), np.array(full[:, start:]), atol=1e-5)
    np.testing.assert_allclose(np.array(part_ent), np.array(full_ent[:, start:]), atol=1e-5)
