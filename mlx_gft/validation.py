"""What training measures on the model besides the loss: the expert answers' NLL and
entropy, held-out sampled accuracy, and KL to the base policy on a fixed probe set.
Everything here runs without dropout and changes no weight."""

import mlx.core as mx

from .config import TrainConfig
from .data import Example, has_answers
from .evaluate import accuracy
from .groups import pad_batch, response_start
from .logprobs import token_logprobs
from .losses import k3
from .models import adapters_disabled, eval_mode
from .rewards import verifier_name
from .sampling import sample_groups


def make_probe(model, tokenizer, examples: list[Example], config: TrainConfig) -> dict:
    """A fixed probe set for KL(pi_base || pi_theta): one base-policy answer per prompt,
    with its base log-probs, taken once (adapters off, so a resumed run keeps the true base)."""
    examples = [e for e in examples if e.prompt][: config.probe_size]
    if not examples:
        return {}
    with adapters_disabled(model), eval_mode(model):
        samples = sample_groups(
            model,
            tokenizer,
            [e.prompt for e in examples],
            1,
            max_tokens=config.max_completion_length,
            seed=config.seed + 7,
        )
        tokens, mask = pad_batch(
            [(e.prompt, s.tokens) for e, s in zip(examples, samples, strict=True)]
        )
        start = response_start(mask)
        base_lp, _ = token_logprobs(model, tokens, start=start)
    return {"tokens": tokens, "mask": mask[:, start:], "base_lp": base_lp}


def probe_kl(model, probe: dict) -> dict:
    """KL(pi_base || pi_theta) on the probe answers (sampled from the base):
    `kl_to_base` summed over each answer's tokens and averaged over answers (the
    reference's measure, which grows with answer length), and `kl_to_base_per_token`,
    the same terms averaged over every token (what TRL and verl report as KL). The
    reference sums log pi_base - log pi_theta; with r = pi_theta / pi_base, r - 1 - log r
    has the same expectation under the base but is never negative, so an 8-answer probe
    does not report a negative KL; each token's term is bounded (`losses.k3`) so one
    extreme token cannot dominate. {} without a probe."""
    if not probe:
        return {}
    start = probe["tokens"].shape[1] - 1 - probe["mask"].shape[1]
    with eval_mode(model):
        lp, _ = token_logprobs(model, probe["tokens"], start=start)
    terms = k3(lp - probe["base_lp"]) * probe["mask"]
    return {
        "kl_to_base": terms.sum(-1).mean().item(),
        "kl_to_base_per_token": (terms.sum() / mx.maximum(probe["mask"].sum(), 1)).item(),
    }


def expert_stats(model, examples: list[Example], batch_size: int) -> dict:
    """Token-mean NLL of the expert answers, and the model's mean token entropy on them:
    a loss and an entropy every method is measured on alike (a run's own `entropy` is
    taken on its samples for GFT/GRPO but on the expert answers for SFT/DFT)."""
    nll, entropy, count = 0.0, 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        tokens, mask = pad_batch([(e.prompt, e.expert) for e in chunk])
        start = response_start(mask)
        lp, ent = token_logprobs(model, tokens, start=start, with_entropy=True)
        mask = mask[:, start:]
        nll += (-(lp * mask).sum()).item()
        entropy += (ent * mask).sum().item()
        count += mask.sum().item()
    if not count:  # no expert answer to measure (prompt-only rows): no number, not 0
        return {"nll": float("nan"), "entropy": float("nan")}
    return {"nll": nll / count, "entropy": entropy / count}


def validate(model, tokenizer, valid_set: list[Example], config: TrainConfig, reward_fns) -> dict:
    """Expert-answer NLL (comparable across losses) and, with a verifier, sampled accuracy."""
    n = len(valid_set) if config.val_batches < 0 else config.val_batches * config.batch_size
    subset = valid_set[:n]
    with eval_mode(model):  # no dropout: the same model gives the same numbers
        stats = expert_stats(model, subset, config.batch_size)
        out = {"val_loss": stats["nll"], "val_entropy": stats["entropy"]}
        verifier = verifier_name(r.name for r in reward_fns)
        if verifier and has_answers(subset):
            acc = accuracy(
                model,
                tokenizer,
                subset,
                verifier,
                temperature=config.temperature,
                max_tokens=config.max_completion_length,
                seed=config.seed,
                batch_size=config.batch_size * config.group_size,
            )
            out["val_acc"] = acc["avg_at_k"]
            # A handful of validation problems: a plot of val_acc needs its n and noise.
            out["val_problems"] = acc["n"]
            out["val_acc_stderr"] = acc["avg_at_k_stderr"]
        return out
