"""
``hq migrate``: create or upgrade the store's schema, and nothing else.
"""

from __future__ import annotations

import sys
from typing import Any


def run_migrate(config_file: str | None) -> int:
    """
    Open the store the config names (PostgreSQL's ``store`` URL, or SQLite in
    ``data_dir``), which creates or upgrades its schema, and close it. Return
    the exit status: 0, or 1 with ``error: <message>`` on stderr.
    """
    from twisted.internet import task

    from hq.config import ConfigError, config_path, load_config
    from hq.store import StoreError, open_store, postgres, sqlitefile

    try:
        config = load_config(config_path(config_file))
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    if config.postgres_url is None and not config.data_dir:
        sys.stderr.write("error: neither 'store' nor 'data_dir' is set: nothing to migrate\n")
        return 1
    outcome: list[int] = []

    async def migrate(reactor: Any) -> None:
        store = open_store(config, reactor)
        try:
            store.lock()
            await store.open()
        except (StoreError, OSError) as e:
            sys.stderr.write(f"error: {e}\n")
            outcome.append(1)
            return
        await store.close()
        if isinstance(store, postgres.PostgresStore):
            where, version = store.where, postgres.SCHEMA_VERSION
        else:
            where, version = store.path, sqlitefile.SCHEMA_VERSION
        sys.stdout.write(f"{where}: schema version {version}, up to date\n")
        outcome.append(0)

    def main(reactor: Any) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(migrate(reactor))

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return outcome[0] if outcome else 1


def run_migrate_from_sqlite(config_file: str | None, data_dir: str) -> int:
    """
    Copy the SQLite store of ``data_dir`` into the PostgreSQL store the config
    names (see :func:`hq.migrate_sqlite.copy_sqlite`); print progress and a
    summary. Return the exit status: 0, or 1 with ``error: <message>`` on stderr.
    """
    from hq.config import ConfigError, config_path, load_config
    from hq.migrate_sqlite import MigrationError, copy_sqlite
    from hq.store.postgres import safe_url

    try:
        config = load_config(config_path(config_file))
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    if config.postgres_url is None:
        sys.stderr.write(
            "error: --from-sqlite copies into a PostgreSQL store: set "
            'store = "postgresql://..." in the configuration file\n'
        )
        return 1

    def progress(line: str) -> None:
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()

    where = safe_url(config.postgres_url)
    progress(f"Copying {data_dir} into {where} ...")
    try:
        copied = copy_sqlite(data_dir, config.postgres_url, progress)
    except MigrationError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    rows = copied.rows
    progress(f"copied {rows['jobs']} jobs")
    progress(
        f"Copied {rows['jobs']} jobs, {rows['attempts']} attempts, "
        f"{rows['idempotency_keys']} idempotency keys and {rows['schedules']} schedules "
        f"(greatest id {copied.max_id}) in {copied.seconds:.2f} s, in one transaction"
    )
    if copied.running:
        progress(
            f"{copied.running} jobs were running on the SQLite server: they are copied as "
            "running, and the first node to start gives them back (waiting again, the "
            "interrupted attempt recorded)"
        )
    return 0
