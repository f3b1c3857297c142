"""
The ``hq`` command: ``serve`` runs the server; ``push``, ``info``, ``list``, ``attempts``,
``delete``, ``stop``, ``restart``, ``stats``, ``nodes``, ``schedule`` and ``flow`` talk to
one through :mod:`hq.client`.

Arguments are parsed with click (see docs/cli.md for why); what each client command does
lives in :mod:`hq.cli.actions`, and how it runs (reactor, clock, terminal) in
:mod:`hq.cli.runtime`. Exit status: 0 on success, 1 on an error (``error: <message>`` on
stderr), 2 on a usage error (unknown command or flag, bad flag value), 130 when
interrupted.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import NoReturn

import click

from hq import __version__
from hq.cli import actions
from hq.cli import flow as flow_cli
from hq.cli import schedule as schedule_cli
from hq.cli.jobinput import JobInputError, read_jobs
from hq.cli.runtime import EXIT_INTERRUPTED, CliRuntime
from hq.cli.terminal import Output
from hq.cli.token import token_command, token_of, token_option
from hq.cli.usage import HQCommand, HQGroup
from hq.client import DEFAULT_ADDRESS, MAX_BATCH_JOBS, HQClient, check_address
from hq.config import LOG_LEVELS
from hq.model import STATUSES

#: Exit status of a usage error (unknown command or flag, bad flag value).
EXIT_USAGE = 2

_CLIENT_COMMANDS = "push, info, list, attempts, delete, stop, restart, stats, nodes, schedule, flow"


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


@cli.command("migrate", short_help="Create or upgrade the store's schema, then exit")
@click.option(
    "-c",
    "--config-file",
    metavar="FILE",
    envvar="HQ_CONFIG",
    help="TOML configuration file naming the store (default: /etc/hq/hq.toml if it exists).",
)
@click.option(
    "--from-sqlite",
    metavar="DATA_DIR",
    help="Then copy the (stopped) SQLite store of DATA_DIR into the empty PostgreSQL store.",
)
@click.pass_context
def migrate(ctx: click.Context, config_file: str | None, from_sqlite: str | None) -> None:
    """
    Create or upgrade the schema of the store the config names (store = "postgresql://..."
    or SQLite in data_dir), then exit. Servers do it at start too (under a lock, so
    cluster nodes may start together); this runs it alone, e.g. before a rolling upgrade.
    With --from-sqlite, also copy every job, attempt, idempotency key and schedule of a
    single-node SQLite store into the (empty) PostgreSQL store, in one transaction.
    """
    from hq.cli.migrate import run_migrate, run_migrate_from_sqlite

    if from_sqlite is not None:
        ctx.exit(run_migrate_from_sqlite(config_file, from_sqlite))
    ctx.exit(run_migrate(config_file))


def _read_stdin() -> bytes:
    return sys.stdin.buffer.read()


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _check_run_at(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    problem = click.BadParameter(
        f"{value!r} is not an RFC 3339 time with an offset or Z, "
        "such as 2024-05-01T09:30:00Z or 2024-05-01T11:30:00+02:00"
    )
    if not _RFC3339.fullmatch(value):
        raise problem
    # fromisoformat takes at most 6 digits of a second (and 3.11 not a lower-case z).
    head, dot, rest = value.upper().replace(" ", "T").partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[: min(digits, 6)] + rest[digits:]
    try:
        return datetime.fromisoformat(head + dot + rest.replace("Z", "+00:00"))
    except ValueError:
        raise problem from None


def _check_delay(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"it must be 0 or more seconds, not {value:g}")
    return value


def _check_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 1 <= len(value) <= 255:
        raise click.BadParameter(f"it must be 1 to 255 characters, not {len(value)}")
    return value


def _check_callback_url(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    # The server checks it too (422); this only saves sending a batch for a plain typo.
    if value is None:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#":
        raise click.BadParameter(
            f"{value!r} is not an absolute http or https URL (http://HOST:PORT/PATH)"
        )
    return value


@cli.command("push", short_help="Push jobs from JSON files or stdin; print their ids")
@_address_option
@click.option(
    "--retries",
    metavar="N",
    type=click.IntRange(0, 1000),
    help="Extra attempts after a failed one, 0-1000 (default: the server's 'retries').",
)
@click.option(
    "--delay",
    metavar="SECONDS",
    type=float,
    callback=_check_delay,
    help="Deliver no sooner than SECONDS from now (fractions allowed).",
)
@click.option(
    "--run-at",
    metavar="TIME",
    callback=_check_run_at,
    help="Deliver no sooner than TIME, RFC 3339 with an offset or Z (2024-05-01T09:30:00Z).",
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    callback=_check_key,
    help="Push the job only if no job was pushed with KEY lately (one job only).",
)
@click.option(
    "--flow-key",
    metavar="KEY",
    callback=_check_key,
    help="Count the jobs under the flow limits of KEY (default: each URL's host:port).",
)
@click.option(
    "--callback-url",
    metavar="URL",
    callback=_check_callback_url,
    help="After a job succeeds, push a job to URL with the finished job as payload.",
)
@click.option(
    "--failure-callback-url",
    metavar="URL",
    callback=_check_callback_url,
    help="After a job fails for the last time, push a job to URL with it as payload.",
)
@click.option(
    "--batch-size",
    metavar="N",
    type=click.IntRange(1),
    default=MAX_BATCH_JOBS,
    help="Jobs per POST /jobs request.",
)
@click.argument("files", metavar="FILE|-...", nargs=-1, required=True)
@click.pass_context
def push(
    ctx: click.Context,
    address: str,
    retries: int | None,
    delay: float | None,
    run_at: datetime | None,
    idempotency_key: str | None,
    flow_key: str | None,
    callback_url: str | None,
    failure_callback_url: str | None,
    batch_size: int,
    files: tuple[str, ...],
) -> None:
    """
    Read jobs from FILEs ('-' is stdin), push them and print each new id on its own line,
    in input order.

    A file holds one job (a JSON object with "url" and optionally "name", "comment",
    "payload", "headers", "timeout", "retries", "runAt", "delay", "idempotencyKey",
    "flowKey", "callbackUrl", "failureCallbackUrl"), or many jobs as JSON lines (one object
    per line). All input is read and checked first: invalid JSON is an error naming the
    file and line, and then nothing is sent. One job is sent with POST /job; more go in
    batches through POST /jobs, each batch stored whole or not at all: if the server
    refuses a job, the error names its file and line, the batches before it stay pushed
    (their ids are printed) and the rest is not sent. A progress bar is drawn on stderr for
    100 jobs or more when stderr is a terminal.

    --retries, --delay, --run-at, --flow-key, --callback-url and --failure-callback-url
    are set on every job, replacing the job's own field (--delay and --run-at also replace
    the job's "runAt" or "delay"). --idempotency-key needs exactly one job; give each of
    many jobs its own "idempotencyKey" field.
    """
    if delay is not None and run_at is not None:
        raise click.UsageError("--delay and --run-at cannot be used together", ctx=ctx)
    runtime = ctx.find_object(CliRuntime) or CliRuntime()
    try:
        sources = read_jobs(files, read_stdin=_read_stdin)
    except JobInputError as e:
        runtime.output().error(e.message)
        ctx.exit(1)
    if idempotency_key is not None and len(sources) > 1:
        raise click.UsageError(
            f"--idempotency-key is for one job, but the input has {len(sources)}: "
            'give each job its own "idempotencyKey" field instead',
            ctx=ctx,
        )
    options = actions.PushOptions(
        retries=retries,
        run_at=run_at,
        delay=delay,
        idempotency_key=idempotency_key,
        flow_key=flow_key,
        callback_url=callback_url,
        failure_callback_url=failure_callback_url,
        batch_size=batch_size,
    )
    _run(ctx, address, lambda client, output: actions.push_jobs(client, sources, output, options))


@cli.command("info", short_help="Show one job as indented JSON")
@_address_option
@click.argument("job_id", metavar="JOB_ID")
@click.pass_context
def info(ctx: click.Context, address: str, job_id: str) -> None:
    """
    Print the job JOB_ID as indented JSON, every field as the server sends it.
    """
    _run(ctx, address, lambda client, output: actions.show_job(client, job_id, output))


def _filter_options(limit_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """
    Return a decorator adding the list filters --name --term --status --begin --reverse
    --limit (with ``limit_help``) to a command.
    """
    options = [
        click.option("-n", "--name", metavar="REGEXP", help="Only jobs whose name matches (RE2)."),
        click.option(
            "-t",
            "--term",
            metavar="REGEXP",
            help="Only jobs whose name, id, comment, URL or status matches (RE2).",
        ),
        click.option(
            "-s",
            "--status",
            metavar="STATUS",
            type=click.Choice(STATUSES),
            help=f"Only jobs with this status: {', '.join(STATUSES)}.",
        ),
        click.option(
            "-b", "--begin", metavar="ID", help="Start at this id (inclusive), for paging."
        ),
        click.option("-r", "--reverse", is_flag=True, help="Newest first."),
        click.option("-l", "--limit", metavar="N", type=int, help=limit_help),
    ]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@cli.command("list", short_help="List jobs as a table")
@_address_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids, one per line.")
@click.option(
    "-d",
    "--detail",
    is_flag=True,
    help="Add the COMMENT, URL, RUN AT, STARTED and FINISHED columns.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the list as the server sends it.")
@_filter_options("At most N jobs (0: the server's default; negative: all).")
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


@cli.command("attempts", short_help="Show the delivery attempts of a job")
@_address_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the attempts as the server sends them."
)
@click.argument("job_id", metavar="JOB_ID")
@click.pass_context
def attempts(ctx: click.Context, address: str, as_json: bool, job_id: str) -> None:
    """
    Print the attempts to deliver JOB_ID, oldest first, as a table: ATTEMPT (from 1),
    STARTED, DURATION, STATUS (the worker's HTTP status, empty when none came) and ERR.
    """
    runtime = ctx.find_object(CliRuntime) or CliRuntime()
    _run(
        ctx,
        address,
        lambda client, output: actions.show_attempts(client, job_id, output, as_json, runtime.now),
    )


_BULK_LIMIT_HELP = "With filters: act on at most N matching jobs (default: all)."
_yes_option = click.option(
    "-y", "--yes", is_flag=True, help="With filters: do not ask for confirmation."
)


def _bulk_or_ids(
    ctx: click.Context,
    action: str,
    job_ids: tuple[str, ...],
    filters: actions.Filters,
    yes: bool,
) -> None:
    """
    Check the ids or filters of ``action``; for filters, ask for confirmation unless
    ``yes``. Raises UsageError, or exits 1 when the question is answered no.
    """
    if job_ids and filters.given:
        raise click.UsageError(f"{', '.join(filters.given)} cannot be used with job ids", ctx=ctx)
    if not job_ids and not filters.given:
        raise click.UsageError(
            f"give job ids, or filters (--name, --term, --status) to {action} every job "
            "that matches",
            ctx=ctx,
        )
    if job_ids:
        return
    if not filters.selects:
        raise click.UsageError(
            f"{', '.join(filters.given)} also need --name, --term or --status: "
            f"hq {action} never acts on every job",
            ctx=ctx,
        )
    if yes:
        return
    runtime = ctx.find_object(CliRuntime) or CliRuntime()
    question = actions.bulk_question(action, filters)
    if not runtime.isatty(sys.stdin):
        raise click.UsageError(
            f"not confirmed: {question} (stdin is not a terminal to ask on; add --yes)",
            ctx=ctx,
        )
    if not click.confirm(question, default=False, err=True):
        runtime.output().note(f"nothing {actions.BULK_ACTIONS[action][1]}")
        ctx.exit(1)


@cli.command("delete", short_help="Delete finished jobs, by id or by filter")
@_address_option
@_filter_options(_BULK_LIMIT_HELP)
@_yes_option
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1)
@click.pass_context
def delete(
    ctx: click.Context,
    address: str,
    name: str | None,
    term: str | None,
    status: str | None,
    begin: str | None,
    reverse: bool,
    limit: int | None,
    yes: bool,
    job_ids: tuple[str, ...],
) -> None:
    """
    Delete each job (it must not be waiting, scheduled or running), printing each id once
    deleted. Stops at the first error and says which ids were done and which were not
    tried.

    Without ids, delete every finished job matching the filters (at least one of --name,
    --term, --status) in one request and print "deleted N jobs". On a terminal you are
    asked first; elsewhere --yes is required.
    """
    filters = actions.Filters(name, term, status, begin, reverse, limit)
    _bulk_or_ids(ctx, "delete", job_ids, filters, yes)
    if not job_ids:
        _run(
            ctx,
            address,
            lambda client, output: actions.act_on_matching(client, "delete", filters, output),
        )
    _run(
        ctx, address, lambda client, output: actions.act_on_jobs(client, "delete", job_ids, output)
    )


@cli.command("stop", short_help="Stop (cancel) active jobs, by id or by filter")
@_address_option
@_filter_options(_BULK_LIMIT_HELP)
@_yes_option
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1)
@click.pass_context
def stop(
    ctx: click.Context,
    address: str,
    name: str | None,
    term: str | None,
    status: str | None,
    begin: str | None,
    reverse: bool,
    limit: int | None,
    yes: bool,
    job_ids: tuple[str, ...],
) -> None:
    """
    Stop each job: a waiting or scheduled job is canceled without being sent, a running
    job's request is aborted. Prints each id once stopped. Stops at the first error and
    says which ids were done and which were not tried.

    Without ids, stop every active job matching the filters (at least one of --name,
    --term, --status) in one request and print "stopped N jobs". On a terminal you are
    asked first; elsewhere --yes is required.
    """
    filters = actions.Filters(name, term, status, begin, reverse, limit)
    _bulk_or_ids(ctx, "stop", job_ids, filters, yes)
    if not job_ids:
        _run(
            ctx,
            address,
            lambda client, output: actions.act_on_matching(client, "stop", filters, output),
        )
    _run(ctx, address, lambda client, output: actions.act_on_jobs(client, "stop", job_ids, output))


@cli.command("restart", short_help="Run finished jobs again, by id or by filter")
@_address_option
@click.option(
    "-c", "--copy", is_flag=True, help="Run each as a new job (new id); keep the original."
)
@_filter_options(_BULK_LIMIT_HELP)
@_yes_option
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1)
@click.pass_context
def restart(
    ctx: click.Context,
    address: str,
    copy: bool,
    name: str | None,
    term: str | None,
    status: str | None,
    begin: str | None,
    reverse: bool,
    limit: int | None,
    yes: bool,
    job_ids: tuple[str, ...],
) -> None:
    """
    Run each finished job again, in place (same id, outcome cleared), or with --copy as a
    new job. Prints each id once restarted (with --copy, the new ids). Stops at the first
    error and says which ids were done and which were not tried.

    Without ids, restart in place every finished job matching the filters (at least one
    of --name, --term, --status) in one request and print "restarted N jobs". On a
    terminal you are asked first; elsewhere --yes is required.
    """
    filters = actions.Filters(name, term, status, begin, reverse, limit)
    if copy and filters.given:
        raise click.UsageError(
            "--copy cannot be used with filters: matching jobs are restarted in place", ctx=ctx
        )
    _bulk_or_ids(ctx, "restart", job_ids, filters, yes)
    if not job_ids:
        _run(
            ctx,
            address,
            lambda client, output: actions.act_on_matching(client, "restart", filters, output),
        )
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


@cli.command("nodes", short_help="Show the live nodes of the cluster as indented JSON")
@_address_option
@click.pass_context
def nodes(ctx: click.Context, address: str) -> None:
    """
    Print the live servers of the cluster (GET /nodes) as indented JSON: with a
    PostgreSQL store every node with a recent heartbeat, on SQLite the server alone.
    """
    _run(ctx, address, lambda client, output: actions.show_nodes(client, output))


class _InOrder(click.Group):
    """
    A group listing its commands in the order they were added.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    "schedule", cls=_InOrder, short_help="Add, list, show, pause, resume and delete schedules"
)
def schedule_command() -> None:
    """
    Recurring jobs: a schedule pushes its job at each time a cron expression names, in a
    time zone (docs/schedules.md). The subcommands take -a/--address and --token like the
    other client commands.
    """


@schedule_command.command("add", short_help="Add a schedule; print its id")
@_address_option
@click.option("-n", "--name", help="The schedule's name (default 'default'), and its jobs'.")
@click.option(
    "-z",
    "--timezone",
    metavar="ZONE",
    default="UTC",
    show_default=True,
    help="IANA time zone the cron expression is read in (Europe/Berlin).",
)
@click.option("--job-name", metavar="NAME", help="The jobs' name (default: the schedule's).")
@click.option("--comment", help="The jobs' comment.")
@click.option("--payload", metavar="JSON", help="The jobs' payload, a JSON value.")
@click.option(
    "-H", "--header", "headers", metavar="NAME:VALUE", multiple=True, help="A job header (repeat)."
)
@click.option("--timeout", metavar="SECONDS", type=click.IntRange(0), help="The jobs' timeout.")
@click.option(
    "--retries", metavar="N", type=click.IntRange(0, 1000), help="The jobs' retries, 0-1000."
)
@click.option(
    "--flow-key",
    metavar="KEY",
    callback=_check_key,
    help="The jobs' flow key (default: the URL's host:port).",
)
@click.option(
    "--callback-url",
    metavar="URL",
    callback=_check_callback_url,
    help="After a job succeeds, push a job to URL with the finished job as payload.",
)
@click.option(
    "--failure-callback-url",
    metavar="URL",
    callback=_check_callback_url,
    help="After a job fails for the last time, push a job to URL with it as payload.",
)
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.argument("cron", metavar="CRON")
@click.argument("url", metavar="URL")
@click.pass_context
def schedule_add(
    ctx: click.Context,
    address: str,
    name: str | None,
    timezone: str,
    job_name: str | None,
    comment: str | None,
    payload: str | None,
    headers: tuple[str, ...],
    timeout: int | None,
    retries: int | None,
    flow_key: str | None,
    callback_url: str | None,
    failure_callback_url: str | None,
    paused: bool,
    cron: str,
    url: str,
) -> None:
    """
    Add a schedule that pushes a job to URL at each time CRON names, and print its id.
    CRON has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first);
    quote it: hq schedule add '30 2 * * *' http://worker/nightly -z Europe/Berlin.
    """
    job: dict[str, object] = {"url": url}
    optional = {
        "name": job_name,
        "comment": comment,
        "payload": schedule_cli.parse_payload(payload),
        "headers": schedule_cli.parse_headers(headers),
        "timeout": timeout,
        "retries": retries,
        "flowKey": flow_key,
        "callbackUrl": callback_url,
        "failureCallbackUrl": failure_callback_url,
    }
    job.update({key: value for key, value in optional.items() if value is not None})
    body: dict[str, object] = {"cron": cron, "timezone": timezone, "job": job, "paused": paused}
    if name is not None:
        body["name"] = name
    _run(ctx, address, lambda client, output: schedule_cli.add_schedule(client, body, output))


@schedule_command.command("list", short_help="List the schedules as a table")
@_address_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids, one per line.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as the server sends it.")
@click.pass_context
def schedule_list(ctx: click.Context, address: str, quiet: bool, as_json: bool) -> None:
    """
    Print every schedule: ID NAME CRON TIMEZONE NEXT RUN LAST RUN LAST JOB STATUS
    (active or paused), in id order.
    """
    if quiet and as_json:
        raise click.UsageError("--quiet and --json cannot be used together", ctx=ctx)
    runtime = ctx.find_object(CliRuntime) or CliRuntime()
    _run(
        ctx,
        address,
        lambda client, output: schedule_cli.list_schedules(
            client, output, runtime.now(), quiet, as_json
        ),
    )


@schedule_command.command("show", short_help="Show one schedule as indented JSON")
@_address_option
@click.argument("schedule_id", metavar="ID")
@click.pass_context
def schedule_show(ctx: click.Context, address: str, schedule_id: str) -> None:
    """
    Print the schedule ID as indented JSON, as the server sends it.
    """
    _run(
        ctx, address, lambda client, output: schedule_cli.show_schedule(client, schedule_id, output)
    )


def _schedule_action(action: str, text: str) -> None:
    @schedule_command.command(action, short_help=text)
    @_address_option
    @click.argument("schedule_ids", metavar="ID...", nargs=-1, required=True)
    @click.pass_context
    def command(ctx: click.Context, address: str, schedule_ids: tuple[str, ...]) -> None:
        _run(
            ctx,
            address,
            lambda client, output: schedule_cli.act_on_schedules(
                client, action, schedule_ids, output
            ),
        )

    command.help = (
        f"{text}, printing each id when done. Stops at the first error and says which ids "
        "were not tried."
    )


_schedule_action("delete", "Delete schedules (the jobs they made stay)")
_schedule_action("pause", "Pause schedules (idempotent)")
_schedule_action("resume", "Resume paused schedules from now (idempotent)")
cli.add_command(schedule_command)


@click.group("flow", cls=_InOrder, short_help="List, show and set the flow limits of flow keys")
def flow_command() -> None:
    """
    Flow control (SPEC §16): each job counts under a flow key (by default its URL's
    host:port; push --flow-key sets another). A key's limits cap how many of its jobs are
    delivered at once (parallelism) and how many start per period (rate); a paused key
    delivers none. Limits survive restarts and hold across a cluster. The subcommands take
    -a/--address and --token like the other client commands; changing limits needs an
    admin token.
    """


_flow_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the flow as the server sends it."
)


def _check_flow_key(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not 1 <= len(value) <= 255:
        raise click.BadParameter(f"a flow key is 1 to 255 characters, not {len(value)}")
    return value


_flow_key_argument = click.argument("key", metavar="KEY", callback=_check_flow_key)


@flow_command.command("list", short_help="List the flow keys as a table")
@_address_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the keys, one per line.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as the server sends it.")
@click.pass_context
def flow_list(ctx: click.Context, address: str, quiet: bool, as_json: bool) -> None:
    """
    Print the keys that have limits set, jobs waiting or running, or an adaptive limit in
    force, in key order: KEY RUNNING WAITING LIMIT (the parallelism in force now)
    PARALLELISM RATE (jobs per period) PAUSED. "-" is no limit.
    """
    if quiet and as_json:
        raise click.UsageError("--quiet and --json cannot be used together", ctx=ctx)
    _run(ctx, address, lambda client, output: flow_cli.list_flows(client, output, quiet, as_json))


@flow_command.command("show", short_help="Show one flow key as indented JSON")
@_address_option
@_flow_key_argument
@click.pass_context
def flow_show(ctx: click.Context, address: str, key: str) -> None:
    """
    Print the limits and load of KEY as indented JSON, as the server sends it, with the
    recent changes of its limit in force (limitHistory). A key never seen has no limits.
    """
    _run(ctx, address, lambda client, output: flow_cli.show_flow(client, key, output))


def _check_period(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"it must be more than 0 seconds, not {value:g}")
    return value


@flow_command.command("set", short_help="Replace the limits of a flow key")
@_address_option
@click.option(
    "--parallelism",
    metavar="N",
    type=click.IntRange(0),
    help="At most N jobs of KEY delivered at once (0: no limit).",
)
@click.option(
    "--rate",
    metavar="N",
    type=click.IntRange(0),
    help="At most N jobs of KEY started per period (0: no limit).",
)
@click.option(
    "--period",
    metavar="SECONDS",
    type=float,
    callback=_check_period,
    help="The period of --rate, a sliding window (fractions allowed; the server's default 1).",
)
@click.option(
    "--paused/--no-paused", default=None, help="Pause or resume KEY too (default: unchanged)."
)
@_flow_json_option
@_flow_key_argument
@click.pass_context
def flow_set(
    ctx: click.Context,
    address: str,
    parallelism: int | None,
    rate: int | None,
    period: float | None,
    paused: bool | None,
    as_json: bool,
    key: str,
) -> None:
    """
    Replace the limits of KEY with the ones given (PUT /flow/KEY) and print the key's
    row. A limit not given is removed: --parallelism and --rate default to 0 (no limit),
    --period to 1 second; only pausing stays as it was unless --paused or --no-paused is
    given. So hq flow set api.example.com:443 --parallelism 4 --rate 10 --period 60
    means "4 at once, 10 a minute".
    """
    if parallelism is None and rate is None and period is None and paused is None:
        raise click.UsageError(
            "give --parallelism, --rate, --period or --paused/--no-paused "
            f"(to remove the limits of a key: hq flow delete {shlex.quote(key)})",
            ctx=ctx,
        )

    def run(client: HQClient, output: Output) -> Awaitable[int]:
        return flow_cli.change_flow(
            lambda: client.set_flow(
                key, parallelism=parallelism, rate=rate, period=period, paused=paused
            ),
            output,
            as_json,
        )

    _run(ctx, address, run)


def _flow_action(
    action: str,
    method: Callable[[HQClient, str], Awaitable[flow_cli.Flow]],
    text: str,
    help_text: str,
) -> None:
    @flow_command.command(action, short_help=text)
    @_address_option
    @_flow_json_option
    @_flow_key_argument
    @click.pass_context
    def command(ctx: click.Context, address: str, as_json: bool, key: str) -> None:
        def run(client: HQClient, output: Output) -> Awaitable[int]:
            return flow_cli.change_flow(lambda: method(client, key), output, as_json)

        _run(ctx, address, run)

    command.help = help_text


_flow_action(
    "pause",
    HQClient.pause_flow,
    "Pause a flow key (idempotent)",
    "Deliver none of KEY's jobs until it is resumed (those running finish); print the "
    "key's row. Pausing a paused key is fine.",
)
_flow_action(
    "resume",
    HQClient.resume_flow,
    "Resume a paused flow key (idempotent)",
    "Deliver KEY's jobs again, within its limits; print the key's row.",
)
_flow_action(
    "delete",
    HQClient.delete_flow,
    "Remove the limits of a flow key",
    "Remove the limits of KEY and resume it (its jobs stay; host_parallelism applies to "
    "it again); print the key's row.",
)
cli.add_command(flow_command)


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
        if e.ctx.parent is not None and e.ctx.parent.parent is not None:
            # A subcommand of a group (hq flow set): 'hq help' takes one name only.
            err.write(f"Try '{e.ctx.command_path} --help' for help.\n")
        else:
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
    except click.exceptions.NoArgsIsHelpError as e:
        # A group alone (hq flow, hq schedule): its help, as 'hq' alone prints the list.
        click.echo(e.ctx.get_help() if e.ctx is not None else "")
        return 0
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
