"""Finding a reward function from its name (a built-in, ``path/to/file.py:function`` or
``package.module:function``) and telling which API it is written for (per sample, or per
batch as TRL calls it) from its signature, before the model loads."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .builtin_rewards import _OPTIONAL, BUILTIN_REWARDS, RewardError


def load_reward(spec: str) -> Callable[..., float]:
    """A reward from a built-in name, ``path/to/file.py:function`` or ``package.module:fn``."""
    if spec in BUILTIN_REWARDS:
        _check_installed(spec)
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise RewardError(
            f"unknown reward {spec!r}: use a built-in ({', '.join(BUILTIN_REWARDS)}), "
            "path/to/file.py:function or package.module:function"
        )
    where, name = spec.rsplit(":", 1)  # rsplit: a Windows path has a drive colon
    if not where or not name:
        raise RewardError(f"reward {spec!r}: expected 'file.py:function' or 'module:function'")
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _import_file(spec, Path(where).expanduser())
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise RewardError(f"reward {spec!r}: cannot import module {where!r}: {exc}") from exc
        except Exception as exc:
            raise RewardError(
                f"reward {spec!r}: importing module {where!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    fn: object = module
    for part in name.split("."):  # "Class.method" works too
        if not hasattr(fn, part):
            public = sorted(
                k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
            )
            raise RewardError(
                f"reward {spec!r}: {where!r} has no function {name!r} "
                f"(callables defined there: {', '.join(public) or 'none'})"
            )
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardError(f"reward {spec!r}: {name!r} is a {type(fn).__name__}, not a function")
    reward_api(spec, fn)  # a signature that fits neither API fails here, before the model loads
    return fn


def _check_installed(name: str) -> None:
    if name in _OPTIONAL:
        module, package = _OPTIONAL[name]
        if importlib.util.find_spec(module) is None:
            raise RewardError(
                f"the {name!r} reward needs {package}, which is not installed: "
                f"pip install {package}"
            )


def _import_file(spec: str, path: Path) -> object:
    if not path.is_file():
        raise RewardError(f"reward {spec!r}: file {str(path)!r} does not exist")
    # A private, path-derived module name: two reward files called rewards.py can coexist.
    module_name = f"_mlx_gft_user_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardError(f"reward {spec!r}: cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickle look modules up here
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # SystemExit: a script's argparse at top level
        del sys.modules[module_name]
        raise RewardError(
            f"reward {spec!r}: importing {str(path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


# The keyword arguments each API passes besides the dataset's own columns.
SAMPLE_ARGS = ("prompt", "completion", "answer", "reference", "kind", "truncated",
               "completion_ids")  # fmt: skip
BATCH_ARGS = ("prompts", "completions", "completion_ids", "trainer_state", "answer",
              "reference", "kind", "truncated")  # fmt: skip
_APIS = (
    "per sample, f(*, prompt, completion, answer, reference, **kwargs) -> float, or per "
    "batch as in TRL, f(prompts, completions, **kwargs) -> list[float | None]"
)


def reward_api(name: str, fn: Callable[..., object]) -> str:
    """ "batch" for TRL's ``f(prompts, completions, **kwargs)``, "sample" for
    ``f(*, prompt, completion, **kwargs)``; a RewardError for a signature that fits neither.

    Read from the parameter names, so the mistake shows when the reward loads (before the
    model) and not as a missing argument at the first training step."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins / C callables have no signature
        return "sample"
    kinds = inspect.Parameter
    named = {p.name for p in params if p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)}
    batch, single = named & {"prompts", "completions"}, named & {"prompt", "completion"}
    if batch and single:
        raise RewardError(
            f"reward {name!r} takes {', '.join(sorted(single))} and "
            f"{', '.join(sorted(batch))}: a reward is called {_APIS}, not both"
        )
    if not any(p.kind is kinds.VAR_KEYWORD for p in params):
        raise RewardError(
            f"reward {name!r} must accept **kwargs: it is called {_APIS}, with every "
            "extra dataset column as a keyword argument"
        )
    positional = [
        p.name for p in params if p.kind is kinds.POSITIONAL_ONLY and p.default is p.empty
    ]
    if positional:
        raise RewardError(
            f"reward {name!r}: {', '.join(positional)} cannot be passed by name (positional-only); "
            f"a reward is called with keyword arguments, {_APIS}"
        )
    return "batch" if batch else "sample"


def _required(fn: Callable[..., object]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in keyword and p.default is p.empty]
