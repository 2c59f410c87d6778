"""Every tool's --help: every option explained, its default said once, and
mlx_gft.lora's options in groups (mlx_lm.lora's own first)."""

import argparse
import dataclasses
import re

import pytest
from mlx_lm.lora import CONFIG_DEFAULTS

from mlx_gft import convert, distill, evaluate, lora, plots, report
from mlx_gft.config import TrainConfig

PARSERS = {
    "mlx_gft.lora": lora.build_parser,
    "mlx_gft.evaluate": evaluate.build_parser,
    "mlx_gft.distill": distill.build_parser,
    "mlx_gft.convert": convert.build_parser,
    "mlx_gft.plots": plots.build_parser,
    "mlx_gft.report": report.build_parser,
}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("tool", PARSERS)
def test_every_option_is_explained_with_its_default_said_once(tool):
    parser = PARSERS[tool]()
    assert parser.prog == tool  # as the console script is named
    formatter = parser._get_formatter()
    for action in _options(parser):
        text = formatter._get_help_string(action) if hasattr(formatter, "_get_help_string") else ""
        text = text or action.help or ""
        name = action.option_strings[-1]
        assert len(text.strip()) > 10, f"{tool} {name}: no help"
        assert text.count("(default:") <= 1, f"{tool} {name}: default said twice: {text}"
        assert not text.rstrip().endswith("..."), f"{tool} {name}: help trails off"
        default = action.default
        if tool != "mlx_gft.lora" and default not in (None, argparse.SUPPRESS, False):
            assert "default" in text, f"{tool} {name}: default {default!r} not shown"
    page = parser.format_help()
    assert "(default: None)" not in page


def test_lora_help_groups_cover_every_option_once():
    grouped = [name for names in lora.HELP_GROUPS.values() for name in names]
    assert len(grouped) == len(set(grouped)), "an option in two groups"
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(grouped) == fields - set(lora.YAML_ONLY)
    # The first group is mlx_lm.lora's own options, and they are all there.
    first = next(iter(lora.HELP_GROUPS.values()))
    assert set(first) == (set(CONFIG_DEFAULTS) & fields) - set(lora.YAML_ONLY)
    page = lora.build_parser().format_help()
    titles = [t for t in lora.HELP_GROUPS if not re.search(rf"^{re.escape(t)}:$", page, re.M)]
    assert titles == [], f"groups missing from --help: {titles}"


def test_lora_help_says_what_differs_from_mlx_lm():
    page = " ".join(lora.build_parser().format_help().split())
    assert "mlx_lm.lora does not clip" in page  # grad_clip 1.0 changes every update
    for key in lora.DEFAULTS_DIFFER:
        assert f"{key}: " in page
    assert "GRPO only: KL to the base model" in page  # --kl-coef is not GFT's
