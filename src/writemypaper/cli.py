"""The `writemypaper` command: parses arguments and calls one function per verb.

    writemypaper --help
    writemypaper prepare --input data/sample --out prepared

The verbs themselves are commands.py's pairs (`add_<verb>_arguments`, `cmd_<verb>`); this module builds the parser
from them and runs the one asked for. The first line of `cmd_<verb>`'s docstring is the verb's line in
`writemypaper --help`; the rest is its `writemypaper <verb> --help` description.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from writemypaper import __version__
from writemypaper.commands import VERBS
from writemypaper.errors import UserError


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default said once: appended where its help does not say it already, and left out where there is
    none to say (an option that is off, or that falls back to the preset, says so in its help)."""

    def _get_help_string(self, action):
        text, default = action.help or "", action.default
        if "(default" in text or action.required or default is None or default is False or default == [] \
                or default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"

    def _fill_text(self, text, width, indent):
        """Paragraphs wrap to the terminal; an indented block (the examples) is kept as written."""
        out = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)


# ---------------------------------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="writemypaper",
        description="Fine-tune a Gemma chat model to turn the summary of a Korean academic paper into its full "
        "abstract, then measure, serve and share it.\n\nStart with: writemypaper demo",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"writemypaper {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for name, (add_arguments, command) in VERBS.items():
        first, _, rest = (command.__doc__ or "").partition("\n")
        summary, _, description = f"{first}\n{textwrap.dedent(rest)}".strip().partition("\n\n")
        sp = sub.add_parser(name, help=summary, description=description, formatter_class=_Formatter)
        add_arguments(sp)
        sp.set_defaults(func=command)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a list of positionals from one run of them only: KEY=VALUE items (or summary words) after an
    # option, as in `generate "요약" --model runs/demo generation.seed=1`, come back here; they join the list.
    rest = next((getattr(args, d) for d in ("overrides", "args") if isinstance(getattr(args, d, None), list)), None)
    if extra and (rest is None or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        rest.extend(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from writemypaper.logs import quiet_libraries

    # Library warnings and log lines would sit above our one-line errors and read as their cause (logs.py).
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        for problem in str(e).splitlines() or [""]:  # every problem found, one a line
            print(f"writemypaper: error: {problem}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("writemypaper: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
