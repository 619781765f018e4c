"""Pages of the docs site made from the code itself (run by mkdocs-gen-files at every build).

- reference/cli.md: every command's flags, read from the same argparse parsers that parse them
  (group, value, default, allowed values and help as `--help` prints them). It is committed, so
  that it reads on GitHub too, and checked: a build (and tests/test_docs.py) fails when it differs
  from what the parsers give. `python docs/gen_pages.py --write` remakes it.
- benchmarks.md: BENCHMARKS.md, the measurements and their history, as it is at the repo's root
  (where `python -m bench` rewrites its generated sections).
"""

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def commands() -> List[Tuple[str, argparse.ArgumentParser]]:
    """(module, parser) of every command line the project installs."""
    from nst_jax.cli import run, video
    from weights_tools import convert, fetch, synthetic
    return [("nst_jax.run", run.build_parser()), ("nst_jax.video", video.build_parser()),
            ("weights_tools.fetch", fetch.build_parser()), ("weights_tools.convert", convert.build_parser()),
            ("weights_tools.synthetic", synthetic.build_parser())]


# A Settings flag's help ends with the default preset's value in brackets (cli.flags.add_field_flag).
_DEFAULT_IN_HELP = re.compile(r"\s*\[([^\[\]]*)\]$")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    """`text` as code; a pipe cannot be escaped inside a table's code span, so such text is plain."""
    return f"`{text}`" if "|" not in str(text) else str(text)


def _flag_rows(parser: argparse.ArgumentParser, action: argparse.Action) -> Tuple[str, str, str, str]:
    """(flag, value it takes, default, meaning) of one argument, as --help words it."""
    names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices is not None:
        takes = " ".join(_code(choice) for choice in action.choices)
    elif action.nargs == 0:
        takes = "(switch)"
    else:
        takes = _code(action.metavar or action.dest.upper())
    help_text = parser._get_formatter()._expand_help(action) if action.help else ""
    default = ""
    found = _DEFAULT_IN_HELP.search(help_text)
    if found:
        default, help_text = _code(found.group(1)), help_text[:found.start()]
    elif action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
        default = _code(action.default)
    return names, takes, default, help_text


def _groups(parser: argparse.ArgumentParser) -> Iterator[Tuple[str, List[argparse.Action]]]:
    for group in parser._action_groups:
        actions = [action for action in group._group_actions
                   if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)]
        if actions:
            yield group.title or "", actions


def cli_reference() -> str:
    """The CLI reference page: one section per command, one table per flag group. The usage
    lines are wrapped at 100 columns whatever the terminal (argparse reads $COLUMNS)."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return _cli_reference()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def _cli_reference() -> str:
    lines = ["# Command-line reference", "",
             "Made from the commands' own parsers by `docs/gen_pages.py`: what `--help` says, as tables; "
             "the docs build and the tests fail when this page differs from the parsers. Settings flags "
             "show the default preset's value (`--preset` changes it).", ""]
    for module, parser in commands():
        lines += [f"## python -m {module}", "", "```", parser.format_usage().strip(), "```", ""]
        if parser.description:
            lines += [_cell(parser.description), ""]
        for title, actions in _groups(parser):
            lines += [f"### {title[0].upper() + title[1:]}" if title else "### Arguments", "",
                      "| flag | takes | default | meaning |", "| --- | --- | --- | --- |"]
            lines += ["| " + " | ".join(_cell(cell) for cell in _flag_rows(parser, action)) + " |"
                      for action in actions]
            lines.append("")
    return "\n".join(lines)


CLI_PAGE = ROOT / "docs" / "reference" / "cli.md"


def _write_pages() -> None:
    import mkdocs_gen_files  # only under `mkdocs build`
    if CLI_PAGE.read_text() != cli_reference():
        raise RuntimeError(f"{CLI_PAGE.relative_to(ROOT)} differs from the commands' parsers: "
                           f"run python docs/gen_pages.py --write")
    with mkdocs_gen_files.open("benchmarks.md", "w") as page:
        page.write((ROOT / "BENCHMARKS.md").read_text())


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        CLI_PAGE.write_text(cli_reference())
    else:
        print(cli_reference())
elif __name__ == "<run_path>":  # how mkdocs-gen-files runs its scripts (runpy.run_path)
    _write_pages()
