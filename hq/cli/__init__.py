"""
The ``hq`` command: ``serve`` runs the server; ``push``, ``info``, ``list``, ``delete``,
``stop``, ``restart`` and ``stats`` talk to one through :mod:`hq.client`.

Arguments are parsed with click (see docs/cli.md for why); what each client command does
lives in :mod:`hq.cli.actions`, and how it runs (reactor, clock, terminal) in
:mod:`hq.cli.runtime`. Exit status: 0 on success, 1 on an error (``error: <message>`` on
stderr), 2 on a usage error (unknown command or flag, bad flag value), 130 when
interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

import click

from hq import __version__
from hq.cli import actions
from hq.cli.jobinput import JobInputError, read_jobs
from hq.cli.runtime import EXIT_INTERRUPTED, CliRuntime
from hq.cli.terminal import Output
from hq.cli.token import token_command, token_of, token_option
from hq.cli.usage import HQCommand, HQGroup
from hq.client import DEFAULT_ADDRESS, HQClient, check_address
from hq.config import LOG_LEVELS
from hq.model import STATUSES

#: Exit status of a usage error (unknown command or flag, bad flag value).
EXIT_USAGE = 2

_CLIENT_COMMANDS = "push, info, list, delete, stop, restart, stats"


def _check_address_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_address(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


_address_only = click.option(
    "-a",
    "--address",
    metavar="URL",
    envvar="HQ_ADDRESS",
    default=DEFAULT_ADDRESS,
    callback=_check_address_option,
    help="Address of the HQ server.",
)


def _address_option(f: Callable[..., None]) -> Callable[..., None]:
    """
    Add ``-a/--address`` and ``--token`` (kept in the context, see :mod:`hq.cli.token`).
    """
    return _address_only(token_option(f))


def _run(
    ctx: click.Context, address: str, command: Callable[[HQClient, Output], Awaitable[int]]
) -> NoReturn:
    """
    Run the client command ``command`` against ``address`` and exit with its status.
    """
    runtime = ctx.find_object(CliRuntime) or CliRuntime()
    output = runtime.output()
    token = token_of(ctx)
    ctx.exit(runtime.run(address, lambda client: command(client.use_token(token), output)))


@click.group(
    cls=HQGroup,
    invoke_without_command=True,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        f"The client commands ({_CLIENT_COMMANDS}) take -a/--address URL (default "
        f"{DEFAULT_ADDRESS}, or the environment variable HQ_ADDRESS). "
        "Run 'hq help COMMAND' for a command's options."
    ),
)
@click.version_option(
    __version__,
    "-v",
    "--version",
    prog_name="hq",
    message="%(prog)s version %(version)s",
    help="Print the version and exit.",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """
    A durable HTTP job queue: run the server, push and manage jobs.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command("serve", short_help="Run the HQ server")
@click.option(
    "-c",
    "--config-file",
    metavar="FILE",
    envvar="HQ_CONFIG",
    help="TOML configuration file (default: /etc/hq/hq.toml if it exists, else built-in defaults).",
)
@click.option(
    "-l",
    "--log-level",
    metavar="LEVEL",
    envvar="HQ_LOG_LEVEL",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help=f"Log level, overriding the config file: {', '.join(LOG_LEVELS)}.",
)
@click.pass_context
def serve(ctx: click.Context, config_file: str | None, log_level: str | None) -> None:
    """
    Run the HQ server in the foreground, as `twistd -n hq` does, until SIGINT or SIGTERM.
    """
    from hq.cli.serve import run_server

    ctx.exit(run_server(config_file, log_level))


@cli.command("backup", short_help="Copy the database of a data_dir, even while the server runs")
@click.option(
    "-c",
    "--config-file",
    metavar="FILE",
    envvar="HQ_CONFIG",
    help="TOML configuration file naming data_dir (default: /etc/hq/hq.toml if it exists).",
)
@click.option(
    "-d", "--data-dir", metavar="DIR", help="The data_dir to back up, instead of the config's."
)
@click.option("-f", "--force", is_flag=True, help="Replace DEST if it exists.")
@click.argument("destination", metavar="DEST")
@click.pass_context
def backup(
    ctx: click.Context, config_file: str | None, data_dir: str | None, force: bool, destination: str
) -> None:
    """
    Write a consistent copy of the server's database to DEST (a file, or a directory to
    put hq-<UTC time>.sqlite3 in), without stopping the server: it keeps accepting and
    delivering jobs meanwhile. The copy is checked (PRAGMA integrity_check) before it is
    given its name. Restore it by stopping the server and putting it in place of
    <data_dir>/hq.sqlite3 (see docs/operations.md).
    """
    from hq.cli.backup import run_backup

    ctx.exit(run_backup(config_file, data_dir, destination, force))


def _read_stdin() -> bytes:
    return sys.stdin.buffer.read()


@cli.command("push", short_help="Push jobs from JSON files or stdin; print their ids")
@_address_option
@click.argument("files", metavar="FILE|-...", nargs=-1, required=True)
@click.pass_context
def push(ctx: click.Context, address: str, files: tuple[str, ...]) -> None:
    """
    Read jobs from FILEs ('-' is stdin), push them in order and print each new id on its
    own line as soon as it is pushed.

    A file holds one job (a JSON object with "url" and optionally "name", "comment",
    "payload", "headers", "timeout"), or many jobs as JSON lines (one object per line). All input is
    read and checked first: invalid JSON is an error naming the file and line, and then
    nothing is sent. If the server refuses a job, the ones before it stay pushed (their ids
    are printed) and the error says which were not. A progress bar is drawn on stderr for
    100 jobs or more when stderr is a terminal.
    """
    runtime = ctx.find_object(CliRuntime) or CliRuntime()
    try:
        sources = read_jobs(files, read_stdin=_read_stdin)
    except JobInputError as e:
        runtime.output().error(e.message)
        ctx.exit(1)
    _run(ctx, address, lambda client, output: actions.push_jobs(client, sources, output))


@cli.command("info", short_help="Show one job as indented JSON")
@_address_option
@click.argument("job_id", metavar="JOB_ID")
@click.pass_context
def info(ctx: click.Context, address: str, job_id: str) -> None:
    """
    Print the job JOB_ID as indented JSON, every field as the server sends it.
    """
    _run(ctx, address, lambda client, output: actions.show_job(client, job_id, output))


@cli.command("list", short_help="List jobs as a table")
@_address_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids, one per line.")
@click.option(
    "-d", "--detail", is_flag=True, help="Add the COMMENT, URL, STARTED and FINISHED columns."
)
@click.option("--json", "as_json", is_flag=True, help="Print the list as the server sends it.")
@click.option("-n", "--name", metavar="REGEXP", help="Only jobs whose name matches (RE2).")
@click.option(
    "-t",
    "--term",
    metavar="REGEXP",
    help="Only jobs whose name, id, comment, URL or status matches (RE2).",
)
@click.option(
    "-s",
    "--status",
    metavar="STATUS",
    type=click.Choice(STATUSES),
    help=f"Only jobs with this status: {', '.join(STATUSES)}.",
)
@click.option("-b", "--begin", metavar="ID", help="Start at this id (inclusive), for paging.")
@click.option("-r", "--reverse", is_flag=True, help="Newest first.")
@click.option(
    "-l",
    "--limit",
    metavar="N",
    type=int,
    help="At most N jobs (0: the server's default; negative: all).",
)
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1)
@click.pass_context
def list_command(
    ctx: click.Context,
    address: str,
    quiet: bool,
    detail: bool,
    as_json: bool,
    name: str | None,
    term: str | None,
    status: str | None,
    begin: str | None,
    reverse: bool,
    limit: int | None,
    job_ids: tuple[str, ...],
) -> None:
    """
    Print jobs as a table: ID NAME CREATED DURATION STATUS, oldest first. Times are
    relative ("3 minutes ago"); DURATION is from start to finish. Statuses are coloured on a
    terminal (not when NO_COLOR is set).

    With JOB_IDs, print those jobs; otherwise one page of jobs that pass the filters. When
    more jobs follow, stderr says which --begin shows the next page.
    """
    options = actions.ListOptions(
        ids=job_ids,
        name=name,
        term=term,
        status=status,
        begin=begin,
        reverse=reverse,
        limit=limit,
        quiet=quiet,
        detail=detail,
        json=as_json,
    )
    if job_ids and options.filters:
        raise click.UsageError(f"{', '.join(options.filters)} cannot be used with job ids", ctx=ctx)
    if quiet and as_json:
        raise click.UsageError("--quiet and --json cannot be used together", ctx=ctx)
    runtime = ctx.find_object(CliRuntime) or CliRuntime()
    _run(
        ctx,
        address,
        lambda client, output: actions.list_jobs(client, options, output, runtime.now),
    )


@cli.command("delete", short_help="Delete finished jobs")
@_address_option
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1, required=True)
@click.pass_context
def delete(ctx: click.Context, address: str, job_ids: tuple[str, ...]) -> None:
    """
    Delete each job (it must not be waiting or running), printing each id once deleted.
    Stops at the first error and says which ids were done and which were not tried.
    """
    _run(
        ctx, address, lambda client, output: actions.act_on_jobs(client, "delete", job_ids, output)
    )


@cli.command("stop", short_help="Stop (cancel) waiting or running jobs")
@_address_option
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1, required=True)
@click.pass_context
def stop(ctx: click.Context, address: str, job_ids: tuple[str, ...]) -> None:
    """
    Stop each job: a waiting job is canceled without being sent, a running job's request
    is aborted. Prints each id once stopped. Stops at the first error and says which ids
    were done and which were not tried.
    """
    _run(ctx, address, lambda client, output: actions.act_on_jobs(client, "stop", job_ids, output))


@cli.command("restart", short_help="Run finished jobs again")
@_address_option
@click.option(
    "-c", "--copy", is_flag=True, help="Run each as a new job (new id); keep the original."
)
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1, required=True)
@click.pass_context
def restart(ctx: click.Context, address: str, copy: bool, job_ids: tuple[str, ...]) -> None:
    """
    Run each finished job again, in place (same id, outcome cleared), or with --copy as a
    new job. Prints each id once restarted (with --copy, the new ids). Stops at the first
    error and says which ids were done and which were not tried.
    """
    _run(
        ctx,
        address,
        lambda client, output: actions.act_on_jobs(client, "restart", job_ids, output, copy),
    )


@cli.command("stats", short_help="Show the server's counters as indented JSON")
@_address_option
@click.pass_context
def stats(ctx: click.Context, address: str) -> None:
    """
    Print the server's counters (GET /stats) as indented JSON.
    """
    _run(ctx, address, lambda client, output: actions.show_stats(client, output))


cli.add_command(token_command)


@cli.command("help", short_help="Show the commands, or one command's help")
@click.argument("command", metavar="COMMAND", required=False)
@click.pass_context
def help_command(ctx: click.Context, command: str | None) -> None:
    """
    Show the list of commands, or the help of COMMAND.
    """
    parent = ctx.parent
    assert parent is not None
    if command is None:
        click.echo(parent.get_help())
        return
    found = cli.get_command(parent, command)
    if found is None:
        raise click.UsageError(f"No such command '{command}'.", ctx=parent)
    sub = found.context_class(found, info_name=command, parent=parent)
    click.echo(found.get_help(sub))


def _show_usage_error(e: click.UsageError) -> None:
    err = sys.stderr
    if e.ctx is not None:
        err.write(e.ctx.get_usage() + "\n")
        topic = "" if e.ctx.parent is None else f" {e.ctx.info_name}"
        err.write(f"Try 'hq help{topic}' for help.\n")
    err.write(f"error: {e.format_message()}\n")
    err.flush()


def run_cli(argv: list[str] | None = None, runtime: CliRuntime | None = None) -> int:
    """
    Run ``hq`` with ``argv`` (``sys.argv[1:]`` when ``None``) and return the exit status.

    ``runtime`` (the reactor, clock and terminal; :class:`CliRuntime` by default) is what
    tests replace.
    """
    try:
        result = cli.main(
            args=argv,
            prog_name="hq",
            standalone_mode=False,
            obj=runtime or CliRuntime(),
        )
    except click.UsageError as e:
        _show_usage_error(e)
        return EXIT_USAGE
    except click.ClickException as e:
        sys.stderr.write(f"error: {e.format_message()}\n")
        return e.exit_code
    except click.Abort:
        # Ctrl-C while reading input (click turns KeyboardInterrupt into Abort).
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """
    The ``hq`` console script: run the command line and exit with its status.
    """
    sys.exit(run_cli(argv))


__all__ = ["HQCommand", "cli", "main", "run_cli"]
