"""The group log (`--log-completions`): at every report, a few of the iteration's groups
as JSON lines in <adapter_path>/completions.jsonl, and one of them on the terminal.

Each record is one group: its prompt, reference answer and tau, and every member
(expert, teacher answers, samples) with its text, reward (the sum the advantages
z-score, and each reward's own score), advantage, whether it was cut off and whether it
trained, and per token its text, log p under the policy the update used, the method's
coefficient (DCR's for GFT) and its weight in the update's loss
(`weights.token_weights`): -sum(weight * logp) over every member of the iteration is
the loss the report line shows. TRL prints a table of completions, rewards and
advantages (its `log_completions`); the per-token columns are GFT's own.

A row the update did not run (a quiet group's, with every advantage 0, or a cut-off
sample under mask_truncated) still shows its log-probs: one forward over the logged
rows, without gradient, before the update changes the weights. Its weights are 0.
"""

import json
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .groups import pad_batch, response_start
from .logprobs import token_logprobs
from .methods import method
from .models import eval_mode
from .weights import KIND_NAMES, coefficients


def logged_rows(batch, config: TrainConfig) -> list[int]:
    """The member rows of the groups the log shows: the first num_completions_to_print."""
    groups = range(min(config.num_completions_to_print, len(batch.groups.sizes)))
    return batch.groups.member_rows(groups)


def before_update(model, batch, rows: list[int], config: TrainConfig) -> dict[int, np.ndarray]:
    """{row: log p of its response tokens} under the current weights, for the logged
    rows, taken before the update: the log-probs of the rows the update leaves out."""
    if not rows:
        return {}
    members = [batch.groups.members[r] for r in rows]
    tokens, mask = pad_batch([(m.prompt, m.response) for m in members])
    start = response_start(mask)
    temperature = config.temperature if method(config).tempered else 1.0
    with eval_mode(model):
        lp, _ = token_logprobs(model, tokens, temperature, start=start)
    lp = np.array(lp)
    out = {}
    for i, (row, m) in enumerate(zip(rows, members, strict=True)):
        first = len(m.prompt) - 1 - start
        out[row] = lp[i, first : first + len(m.response)]
    return out


def token_pieces(tokenizer, tokens: list[int]) -> list[str]:
    """Each token's text, as its share of the growing decoded string (a word piece keeps
    its leading space; a token that ends inside a character gives '' and the next one
    the whole character)."""
    pieces, before = [], ""
    for i in range(len(tokens)):
        text = tokenizer.decode(tokens[: i + 1])
        if text.startswith(before):
            pieces.append(text[len(before) :])
        else:  # decoding is not prefix-stable here: the token on its own
            pieces.append(tokenizer.decode(tokens[i : i + 1]))
        before = text
    return pieces


def _number(x) -> float | None:
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
    records = []
    for g in range(min(config.num_completions_to_print, len(batch.groups.sizes))):
        rows = range(starts[g], starts[g + 1])
        example = members[rows[0]].example
        record = {
            "iteration": iteration,
            "group": g,
            "prompt": example.prompt_text,
            "answer": example.answer,
            "tau": config.tau,
            "loss": config.loss,
            "members": [],
        }
        for row in rows:
            m = members[row]
            first = len(m.prompt) - 1 - batch.start  # the response's first scored column
            cols = slice(first, first + len(m.response))
            trained = bool(advantages[row] != 0 and mask[row].sum() > 0)
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
                    "tokens": token_pieces(tokenizer, m.response),
                    "logp": [float(x) for x in logp],
                    "coef": [float(x) for x in coef],
                    "weight": [float(x) for x in weight],
                }
            )
        records.append(record)
    return records


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
        p = np.exp(np.array(m["logp"])) if m["logp"] else np.zeros(0)
        rect = f"{(p <= tau).mean():.0%}" if p.size else "-"
        flags = "" if m["trained"] else " (not trained)"
        flags += " (cut off)" if m["truncated"] else ""
        lines.append(
            f"  {m['kind']:<8}{reward:>8}{m['advantage']:>+8.2f}  {rect:>6}  "
            f"{_first_words(m['text'])!r}{flags}"
        )
    return "\n".join(lines)


def log_iteration(model, batch, config: TrainConfig):
    """Before the update: what the log will need that the update changes (`before_update`
    on the logged rows). Returns it, for `finish`."""
    return before_update(model, batch, logged_rows(batch, config), config)


def finish(batch, updated, shown, tokenizer, config: TrainConfig, iteration: int, log) -> None:
    """After the update: write the logged groups and show the first on the terminal."""
    records = group_records(batch, updated, shown, tokenizer, config, iteration)
    if records:
        write_records(Path(config.adapter_path) / "completions.jsonl", records)
        log(group_table(records[0]))
