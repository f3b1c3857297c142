"""
Help text for ``hq`` in the layout of the Go tool (urfave/cli): ``NAME``, ``USAGE``,
``DESCRIPTION``, ``COMMANDS`` and ``OPTIONS`` sections, each option with its default and
its environment variable (``[$HQ_ADDRESS]``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import click

from hq import __version__


class GoHelpFormatter(click.HelpFormatter):
    """
    Click's formatter with the Go tool's three-space indentation.
    """

    def __init__(self, indent_increment: int = 3, **kwargs: Any) -> None:
        super().__init__(indent_increment=indent_increment, **kwargs)


class HQContext(click.Context):
    """
    A click Context that formats help with :class:`GoHelpFormatter`.
    """

    formatter_class = GoHelpFormatter


def _section(formatter: click.HelpFormatter, title: str, lines: Sequence[str]) -> None:
    formatter.write_heading(title)
    with formatter.indentation():
        for line in lines:
            formatter.write_text(line)
    formatter.write_paragraph()


def _dl_section(
    formatter: click.HelpFormatter, title: str, rows: Sequence[tuple[str, str]]
) -> None:
    formatter.write_heading(title)
    with formatter.indentation():
        formatter.write_dl(rows, col_max=32)
    formatter.write_paragraph()


def option_rows(command: click.Command, ctx: click.Context) -> list[tuple[str, str]]:
    """
    Return ``(flags, help)`` for each option of ``command``, the help followed by
    ``(default: ...)`` and ``[$ENV_VAR]`` when they apply.
    """
    rows = []
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        flags = record[0]
        text = param.help or ""
        # Only plain values: click marks "no default" with a sentinel object.
        if not param.is_flag and type(param.default) in (str, int) and param.default != "":
            text += f" (default: {param.default})"
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        if envvars:
            text += " [" + ", ".join(f"${name}" for name in envvars) + "]"
        rows.append((flags, text.strip()))
    return rows


def _arguments(command: click.Command, ctx: click.Context) -> str:
    pieces = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Argument):
            metavar = param.make_metavar(ctx)
            pieces.append(metavar if param.required else f"[{metavar}]")
    return " ".join(pieces)


class HQCommand(click.Command):
    """
    A command whose help looks like the Go tool's.
    """

    context_class = HQContext

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """
        Write ``Usage: hq NAME [command options] ARGS``.
        """
        args = " ".join(a for a in ("[command options]", _arguments(self, ctx)) if a)
        formatter.write_usage(ctx.command_path, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """
        Write the NAME, USAGE, DESCRIPTION and OPTIONS sections.
        """
        _section(formatter, "NAME", [f"{ctx.command_path} - {self.get_short_help_str(200)}"])
        args = " ".join(a for a in ("[command options]", _arguments(self, ctx)) if a)
        _section(formatter, "USAGE", [f"{ctx.command_path} {args}"])
        if self.help:
            formatter.write_heading("DESCRIPTION")
            with formatter.indentation():
                formatter.write_text(inspect.cleandoc(self.help))
            formatter.write_paragraph()
        _dl_section(formatter, "OPTIONS", option_rows(self, ctx))
        if self.epilog:
            formatter.write_text(self.epilog)


class HQGroup(click.Group):
    """
    The ``hq`` command group: commands listed in the order they were added, help like
    the Go tool's.
    """

    context_class = HQContext
    command_class = HQCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        """
        Return the command names in the order they were added (not sorted).
        """
        return list(self.commands)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """
        Write ``Usage: hq [global options] command [command options] [arguments...]``.
        """
        formatter.write_usage(
            ctx.command_path, "[global options] command [command options] [arguments...]"
        )

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """
        Write the NAME, USAGE, VERSION, COMMANDS and GLOBAL OPTIONS sections.
        """
        _section(formatter, "NAME", [f"{ctx.command_path} - {self.get_short_help_str(200)}"])
        _section(
            formatter,
            "USAGE",
            [f"{ctx.command_path} [global options] command [command options] [arguments...]"],
        )
        _section(formatter, "VERSION", [__version__])
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(200)))
        _dl_section(formatter, "COMMANDS", rows)
        _dl_section(formatter, "GLOBAL OPTIONS", option_rows(self, ctx))
        if self.epilog:
            formatter.write_text(self.epilog)
