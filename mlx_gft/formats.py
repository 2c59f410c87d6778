"""Row formats: what one dataset row may look like, checked and brought to one shape.

Detected per row, in mlx_lm's order (column names set by the `*_feature` options):

- `prompt` + `completion`: strings (mlx_lm, TRL standard) or chat messages (TRL
  conversational: `prompt` a list of messages, system message included, `completion` a
  list with one assistant message);
- `messages`: a chat whose last message is the assistant's answer (mlx_lm, TRL);
- `text`: plain text with no prompt to sample from, for SFT/DFT;
- `prompt` alone (TRL prompt-only): no expert answer, for GRPO, or for GFT when the row
  has teacher answers.

Any form may add `answer` (ground truth for a verifier), `teacher_responses` (or
`responses`: more expert-quality answers, strings or one-assistant-message lists) and
`tools` (passed to the chat template, as mlx_lm does); every other column goes to the
rewards. A null value (as Hub datasets fill missing cells) counts as absent.
"""

from dataclasses import dataclass, fields
from typing import Any

TEACHER_KEYS = ("teacher_responses", "responses")


class DataError(ValueError):
    """A dataset problem, located at file:line (and field) so it can be fixed."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True)
class Features:
    """Which column holds what: mlx_lm's `*_feature` options, with its defaults."""

    prompt: str = "prompt"
    completion: str = "completion"
    answer: str = "answer"
    chat: str = "messages"
    text: str = "text"

    @classmethod
    def of(cls, config: Any) -> "Features":
        """The columns a TrainConfig (or any object with `*_feature` attributes) names."""
        return cls(**{f.name: getattr(config, f"{f.name}_feature", f.default) for f in fields(cls)})


def _at(where: str, key: str) -> str:
    return f"{where}: field '{key}'"


def _given(row: dict, key: str) -> bool:
    return row.get(key) is not None


def _columns(row: dict, limit: int = 12) -> str:
    names = [str(k) for k in row]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(where, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, "is empty")
    return value


def _messages(value: Any, where: str, key: str) -> list[dict]:
    """A non-empty list of {"role": str, "content": str}. Other keys are kept for the chat
    template (a turn that only calls tools may have no content); null ones are dropped, as
    a Hub dataset gives every message every key any message has."""
    if not isinstance(value, list) or not value:
        raise DataError(_at(where, key), "expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if isinstance(m, dict):
            m = {k: v for k, v in m.items() if v is not None}
        if not _is_message(m):
            raise DataError(_at(where, f"{key}[{i}]"), 'expected {"role": str, "content": str}')
        out.append(m)
    return out


def _is_message(m: Any) -> bool:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        return False
    return isinstance(m.get("content"), str) or ("content" not in m and "tool_calls" in m)


def _answer_text(message: dict, where: str) -> str:
    """The content of the message that is the expert answer."""
    if message["role"] != "assistant":
        raise DataError(where, f"expected an assistant message, got role {message['role']!r}")
    if "content" not in message:  # a tool call's text is template syntax rewards cannot see
        raise DataError(where, "an answer that only calls tools is not supported")
    return _text(message["content"], where)


def _prompt(value: Any, where: str, key: str) -> list[dict]:
    """A prompt as chat messages: a string is one user message."""
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, _at(where, key))}]
    if not isinstance(value, list):
        kind = type(value).__name__
        raise DataError(_at(where, key), f"expected a string or a list of messages, got {kind}")
    messages = _messages(value, where, key)
    if messages[-1]["role"] == "assistant":
        # Sampling would start a second assistant turn after it: the answer was misplaced.
        raise DataError(
            _at(where, key), "ends with an assistant message; an answer goes in the completion"
        )
    return messages


def _completion(value: Any, where: str, key: str) -> str:
    """An answer's text: a string, or a list holding one assistant message (TRL)."""
    if isinstance(value, str):
        return _text(value, _at(where, key))
    if not isinstance(value, list):
        kind = type(value).__name__
        raise DataError(
            _at(where, key), f"expected a string or a list with one assistant message, got {kind}"
        )
    messages = _messages(value, where, key)
    if len(messages) != 1:
        raise DataError(
            _at(where, key), f"expected one assistant message, got {len(messages)} messages"
        )
    return _answer_text(messages[0], _at(where, f"{key}[0]"))


def _chat(value: Any, where: str, key: str) -> tuple[list[dict], str]:
    """(prompt messages, answer) of a chat whose last message is the answer."""
    messages = _messages(value, where, key)
    last = messages[-1]
    if last["role"] != "assistant" or not last.get("content", "").strip():
        tools = " (an answer that only calls tools is not supported)" * ("tool_calls" in last)
        raise DataError(
            _at(where, key), f"the last message must be a non-empty assistant answer{tools}"
        )
    return messages[:-1], last["content"]


def _prompt_only(row: dict, where: str, f: Features) -> list[dict]:
    try:
        return _prompt(row[f.prompt], where, f.prompt)
    except DataError as e:  # also say what is missing: the completion may be forgotten
        field = e.where.removeprefix(f"{where}: ")
        raise DataError(
            where, f"has '{f.prompt}' but no '{f.completion}'; {field}: {e.message}"
        ) from None


def _body(row: dict, where: str, f: Features) -> dict[str, Any]:
    """{messages, response, text, conversational} of the row's form; response None for a
    prompt-only row."""
    body: dict[str, Any] = {"messages": None, "response": None, "text": None}
    # Chat-form rows reach TRL-style batch rewards as messages, as TRL passes them.
    body["conversational"] = f.chat in row or isinstance(row.get(f.prompt), list)
    if f.prompt in row and _given(row, f.completion):
        body["messages"] = _prompt(row[f.prompt], where, f.prompt)
        body["response"] = _completion(row[f.completion], where, f.completion)
    elif f.chat in row:
        body["messages"], body["response"] = _chat(row[f.chat], where, f.chat)
    elif f.text in row:
        body["text"] = _text(row[f.text], _at(where, f.text))
    elif f.prompt in row:
        body["messages"] = _prompt_only(row, where, f)
    elif _given(row, f.completion):
        raise DataError(
            where,
            f"has '{f.completion}' but no '{f.prompt}' (the row has columns {_columns(row)}; "
            "set --prompt-feature)",
        )
    else:
        raise DataError(
            where,
            f"has columns {_columns(row)}; no '{f.prompt}' (set --prompt-feature), "
            f"'{f.chat}' (--chat-feature) or '{f.text}' (--text-feature)",
        )
    return body


def _answer(row: dict, where: str, key: str) -> str | None:
    if key != Features().answer and key not in row:  # a column the user named: not a typo
        raise DataError(where, f"has columns {_columns(row)}; no '{key}' (set --answer-feature)")
    answer = row.get(key)
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None and not isinstance(answer, str):
        raise DataError(_at(where, key), "expected a string or a number")
    return answer


def _teachers(row: dict, where: str) -> list[str]:
    """The non-empty teacher answers, as strings."""
    key = TEACHER_KEYS[0] if TEACHER_KEYS[0] in row else TEACHER_KEYS[1]
    value = [] if row.get(key) is None else row[key]
    expected = "expected a list of strings (or of one-assistant-message lists)"
    if not isinstance(value, list):
        raise DataError(_at(where, key), expected)
    out = []
    for i, t in enumerate(value):
        if isinstance(t, list):
            out.append(_completion(t, where, f"{key}[{i}]"))
        elif not isinstance(t, str):
            raise DataError(_at(where, f"{key}[{i}]"), expected)
        elif t.strip():
            out.append(t)
    return out


def parse_row(row: Any, where: str, features: Features | None = None) -> dict[str, Any]:
    """Check one row's shape; return {messages, response, text, answer, teachers, tools,
    columns, features}: `messages` is the prompt as a chat (None for a text row),
    `response` the expert answer (None for a prompt-only row), `columns` the rest."""
    f = features or Features()
    if not isinstance(row, dict):
        raise DataError(where, f"expected a JSON object, got {type(row).__name__}")
    out = _body(row, where, f)
    out["answer"] = _answer(row, where, f.answer)
    out["teachers"] = _teachers(row, where)
    out["tools"] = row.get("tools")
    if out["tools"] is not None and not isinstance(out["tools"], list):
        raise DataError(_at(where, "tools"), "expected a list of tool definitions")
    used = {f.prompt, f.completion, f.chat, f.text, f.answer, *TEACHER_KEYS}
    out["columns"] = {k: v for k, v in row.items() if k not in used}
    out["features"] = f
    return out
