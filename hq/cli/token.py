"""
``hq token new``: make an API token and the ``[[tokens]]`` entry for the config;
and the ``--token`` option (``HQ_TOKEN``) of the client commands.

The token is printed once; the server keeps only its SHA-256 (docs/security.md).
"""

from __future__ import annotations

import click

from hq.auth import ROLES, check_name, config_entry, new_token

#: Where the ``--token`` option keeps its value in the click context.
_TOKEN_KEY = "hq.token"  # noqa: S105 -- a key name


def _remember_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        if any(c.isspace() for c in value):
            raise click.BadParameter("a token has no spaces")
        ctx.meta[_TOKEN_KEY] = value


#: ``--token TOKEN`` (or ``HQ_TOKEN``): sent as ``Authorization: Bearer TOKEN``.
token_option = click.option(
    "--token",
    metavar="TOKEN",
    envvar="HQ_TOKEN",
    expose_value=False,
    callback=_remember_token,
    help="API token, for a server with [[tokens]].",
)


def token_of(ctx: click.Context) -> str | None:
    """
    Return the token given with ``--token`` or ``HQ_TOKEN``, or ``None``.
    """
    token: str | None = ctx.meta.get(_TOKEN_KEY)
    return token


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    problem = check_name(value)
    if problem:
        raise click.BadParameter(problem)
    return value


@click.group("token", short_help="Make API tokens")
def token_command() -> None:
    """
    Make API tokens for a server with [[tokens]] in its config (docs/security.md).
    """


@token_command.command("new", short_help="Print a new token and its config entry")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="read: GET only; push: read + POST /job, /jobs; admin: everything.",
)
@click.option(
    "--name",
    required=True,
    callback=_check_name,
    help="Who uses it; the access log names it for each request.",
)
def new(role: str, name: str) -> None:
    """
    Print a new random token (32 random bytes, URL-safe) and the [[tokens]] entry
    with its SHA-256 to add to the server's config file. The token is shown only
    here: HQ stores and logs only its digest.
    """
    token = new_token()
    click.echo(f"Token for '{name}' (role {role}); shown once, give it to the client as")
    click.echo("HQ_TOKEN or --token:")
    click.echo()
    click.echo(f"  {token}")
    click.echo()
    click.echo("Add to the server's config file, then restart it:")
    click.echo()
    click.echo(config_entry(name, role, token), nl=False)
