"""The docs site's CLI reference (docs/gen_pages.py) lists every flag of every command, with what
`--help` says of it, and the committed page is what the parsers give; CI builds the whole site in
strict mode (.ci/run)."""

import argparse
import importlib.util

import pytest

from datafiles import ROOT


def _generator():
    spec = importlib.util.spec_from_file_location("gen_pages", ROOT / "docs" / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # under this name it writes no page
    return module


def test_the_committed_cli_reference_is_what_the_parsers_give():
    generator = _generator()
    assert generator.CLI_PAGE.read_text() == generator.cli_reference(), \
        "docs/reference/cli.md is stale: run python docs/gen_pages.py --write"


def test_the_cli_reference_has_every_flag_of_every_command_with_its_help():
    generator = _generator()
    page = generator.cli_reference()
    commands = generator.commands()
    assert [module for module, _ in commands] == ["nst_jax.run", "nst_jax.video", "weights_tools.fetch",
                                                  "weights_tools.convert", "weights_tools.synthetic"]
    for module, parser in commands:
        section = page.split(f"## python -m {module}\n", 1)[1].split("\n## python -m ", 1)[0]
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                assert not any(f"`{name}`" in section for name in action.option_strings), action.option_strings
                continue
            names = action.option_strings or [action.metavar or action.dest]
            row = next((line for line in section.splitlines() if line.startswith(f"| `{names[0]}`")), None)
            assert row is not None, f"{module}: {names[0]} is missing from the reference"
            if action.help:
                words = " ".join(parser._get_formatter()._expand_help(action).split()).replace("|", "\\|")
                assert words.split(" [")[0][:60] in row, (names[0], row)


def test_the_video_commands_refused_flags_stay_out_of_its_reference():
    page = _generator().cli_reference()
    video = page.split("## python -m nst_jax.video\n", 1)[1].split("\n## python -m ", 1)[0]
    for refused in ("--batch", "--sweep-seed", "--checkpoint-every", "--scales"):
        assert f"`{refused}`" not in video
    assert "`--temporal-weight`" in video and "`--checkpoint-every`" in page.split("## python -m nst_jax.video")[0]


@pytest.mark.parametrize("flag, default", [("--style-weight", "`100`"), ("--num-steps", "`1000`")])
def test_settings_flags_show_the_default_presets_value(flag, default):
    page = _generator().cli_reference()
    row = next(line for line in page.splitlines() if line.startswith(f"| `{flag}`"))
    assert row.split(" | ")[2] == default, row
