"""
``hq backup``: copy the database of a (running) server's data_dir; see :mod:`hq.backup`.
"""

from __future__ import annotations

import sys


def _size(size: int) -> str:
    value, unit = float(size), "bytes"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def run_backup(
    config_file: str | None, data_dir: str | None, destination: str, overwrite: bool
) -> int:
    """
    Back up the database of ``data_dir`` (default: the config file's
    ``data_dir``) to ``destination``; print what was written. Return the exit
    status: 0, or 1 with ``error: <message>`` on stderr.
    """
    from hq.backup import BackupError, backup_database, database_path
    from hq.config import ConfigError, config_path, load_config
    from hq.store.postgres import safe_url

    if not data_dir:
        path = config_path(config_file)
        try:
            config = load_config(path)
        except ConfigError as e:
            sys.stderr.write(f"error: {e}\n")
            return 1
        if config.postgres_url is not None:
            sys.stderr.write(
                f"error: the store of {path} is PostgreSQL ({safe_url(config.postgres_url)}): "
                "hq backup copies SQLite files only; back it up with PostgreSQL's tools: "
                "pg_dump for a consistent copy (pg_dump -Fc -f hq.dump URL), or continuous "
                "archiving and point-in-time recovery (PITR, pg_basebackup + WAL archiving) "
                "to lose nothing (see docs/operations.md)\n"
            )
            return 1
        data_dir = config.data_dir
        if not data_dir:
            where = f"in {path}" if path else "(no config file found)"
            sys.stderr.write(
                f"error: data_dir is not set {where}: such a server keeps its jobs in a "
                "temporary directory; name the directory with --data-dir\n"
            )
            return 1
    try:
        result = backup_database(database_path(data_dir), destination, overwrite=overwrite)
    except BackupError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    sys.stdout.write(
        f"Backed up {result.jobs} jobs (schema version {result.schema_version}, "
        f"{_size(result.size)}) to {result.path} in {result.seconds:.2f} s\n"
    )
    return 0
