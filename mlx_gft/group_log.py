"""The group log (`--log-completions`): at every report, a few of the iteration's groups
as JSON lines in <adapter_path>/completions.jsonl, and one of them on the terminal.

Each record is one group: its prompt, reference answer and tau, the optimizer update it
belonged to, and every member (expert, teacher answers, samples) with its text, reward
(the sum the advantages z-score, and each reward's own score), advantage, whether it was
cut off and whether it trained, and per token its text, log p under the policy the
update used, the method's coefficient (DCR's for GFT) and its weight in that update's
loss (`weights.token_weights`). For GFT, SFT and DFT, -sum(weight * logp) over the
members of one update is that update's loss (the report line shows the mean over an
iteration's updates: with one update per batch and every group logged, the reported
loss itself). For GRPO the weight is A times the aggregation's, without the PPO ratio
(1 at the sampling policy) and the KL term; SFT without mask_prompt also trains the
prompt's tokens, which the log does not list. TRL prints a table of completions,
rewards and advantages (its `log_completions`); the per-token columns are GFT's own.

A row the update did not run (a quiet group's, with every advantage 0, or a cut-off
sample under mask_truncated) still shows its log-probs: a forward over the logged rows,
without gradient, before the update changes the weights. Its weights are 0.
"""

import json
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .groups import pad_batch, response_start
from .methods import method, skips_zero_advantage
from .models import eval_mode
from .rollout import logprobs_in_parts
from .weights import KIND_NAMES, coefficients, contributing_rows


def logged_groups(batch, config: TrainConfig) -> range:
    """The groups the log shows: the first num_completions_to_print."""
    return range(min(config.num_completions_to_print, len(batch.groups.sizes)))


def response_columns(member, start: int) -> slice:
    """The scored columns (target positions from `start`) of a member's response tokens:
    target t predicts token t + 1, so the response begins at len(prompt) - 1; a row with
    no prompt (SFT on text) has no prediction for its first token."""
    first = max(len(member.prompt) - 1, 0) - start
    return slice(first, first + len(member.response) - (0 if member.prompt else 1))


def logged_tokens(member) -> list[int]:
    """The response tokens the log lists: those the columns above predict."""
    return member.response if member.prompt else member.response[1:]


def before_update(model, batch, config: TrainConfig) -> dict[int, np.ndarray]:
    """{row: log p of its logged tokens} under the current weights for the logged rows,
    taken before the update in micro-batches as the update runs them: the log-probs of
    the rows the update leaves out."""
    rows = batch.groups.member_rows(logged_groups(batch, config))
    if not rows:
        return {}
    members = [batch.groups.members[r] for r in rows]
    tokens, mask = pad_batch([(m.prompt, m.response) for m in members])
    start = response_start(mask)
    temperature = config.temperature if method(config).tempered else 1.0
    with eval_mode(model):
        lp = np.array(logprobs_in_parts(model, tokens, start, config, temperature))
    columns = [response_columns(m, start) for m in members]
    return {row: lp[i, cols] for i, (row, cols) in enumerate(zip(rows, columns, strict=True))}


def token_pieces(tokenizer, tokens: list[int], window: int = 8) -> list[str]:
    """Each token's text: what it adds to the decoding of the few tokens before it (a
    word piece keeps its leading space; a token that ends inside a character gives ''
    and the next one the whole character). Linear in the answer's length."""
    pieces = []
    for i in range(len(tokens)):
        lo = max(0, i - window)
        before = tokenizer.decode(tokens[lo:i]) if i > lo else ""
        text = tokenizer.decode(tokens[lo : i + 1])
        if text.startswith(before):
            pieces.append(text[len(before) :])
        else:  # decoding is not prefix-stable here: the token on its own
            pieces.append(tokenizer.decode(tokens[i : i + 1]))
    return pieces


def _number(x) -> float | None:
    """A JSON number, or null for what is not finite (a step skipped as non-finite)."""
    x = float(x)
    return x if np.isfinite(x) else None


def group_records(
    batch, updated, shown: dict[int, np.ndarray], tokenizer, config: TrainConfig, iteration: int
) -> list[dict]:
    """The logged groups of one iteration as JSON-ready records (module docstring).
    `updated`: step.run_updates' result; `shown`: `before_update`'s log-probs."""
    members, starts = batch.groups.members, np.cumsum([0, *batch.groups.sizes])
    advantages = np.array(batch.advantages)
    mask = np.array(batch.mask)
    trains = contributing_rows(mask, advantages, skips_zero_advantage(config))
    groups = len(batch.groups.sizes)
    records = []
    for g in logged_groups(batch, config):
        rows = range(starts[g], starts[g + 1])
        example = members[rows[0]].example
        record = {
            "iteration": iteration,
            "group": g,
            # Updates split along group boundaries, in order (step.plan_updates).
            "update": int(np.searchsorted(np.cumsum(_update_sizes(groups, config)), g, "right")),
            "prompt": example.prompt_text,
            "answer": example.answer,
            "tau": config.tau,
            "loss": config.loss,
            "members": [],
        }
        for row in rows:
            m = members[row]
            cols = response_columns(m, batch.start)
            trained = bool(trains[row])
            if trained and updated.logps is not None:
                logp = updated.logps[row, cols]
                coef = updated.coef[row, cols]
                weight = updated.weights[row, cols]
            else:
                logp = shown[row]
                coef = coefficients(logp, config.loss, config.tau)
                weight = np.zeros(len(logp))
            rewards = {name: _number(column[row]) for name, column in batch.reward_columns.items()}
            total = batch.rewards[row] if batch.rewards is not None else np.nan
            record["members"].append(
                {
                    "kind": KIND_NAMES[m.kind],
                    "text": m.text,
                    "reward": _number(total),
                    "rewards": rewards,
                    "advantage": float(advantages[row]),
                    "truncated": bool(m.truncated),
                    "trained": trained,
                    "tokens": token_pieces(tokenizer, logged_tokens(m)),
                    "logp": [_number(x) for x in logp],
                    "coef": [_number(x) for x in coef],
                    "weight": [_number(x) for x in weight],
                }
            )
        records.append(record)
    return records


def _update_sizes(groups: int, config: TrainConfig) -> list[int]:
    """Groups per optimizer update, as plan_updates splits them."""
    return [len(part) for part in np.array_split(np.arange(groups), config.updates_per_batch)]


def write_records(path: Path, records: list[dict]) -> None:
    """Append the records, one JSON object per line (a resumed run appends too)."""
    with Path(path).open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def _first_words(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 3] + "..."


def group_table(record: dict) -> str:
    """One group, compactly, for the terminal: each member's kind, reward, advantage,
    share of its tokens rectified and first words (TRL prints its completions so)."""
    prompt = _first_words(record["prompt"] or "", 70)
    lines = [f"Group {record['group']} of iteration {record['iteration']}: {prompt!r}"]
    lines.append(f"  {'kind':<8}{'reward':>8}{'adv':>8}  {'p<=tau':>6}  answer")
    tau = record["tau"]
    for m in record["members"]:
        reward = "-" if m["reward"] is None else f"{m['reward']:.2f}"
        p = np.exp(np.array([x for x in m["logp"] if x is not None]))
        rect = f"{(p <= tau).mean():.0%}" if p.size else "-"
        flags = "" if m["trained"] else " (not trained)"
        flags += " (cut off)" if m["truncated"] else ""
        lines.append(
            f"  {m['kind']:<8}{reward:>8}{m['advantage']:>+8.2f}  {rect:>6}  "
            f"{_first_words(m['text'])!r}{flags}"
        )
    return "\n".join(lines)


def finish(batch, updated, shown, tokenizer, config: TrainConfig, iteration: int, log) -> None:
    """After the update: write the logged groups and show the first on the terminal."""
    records = group_records(batch, updated, shown, tokenizer, config, iteration)
    if records:
        write_records(Path(config.adapter_path) / "completions.jsonl", records)
        log(group_table(records[0]))
