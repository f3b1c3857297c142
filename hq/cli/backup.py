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

    if not data_dir:
        path = config_path(config_file)
        try:
            data_dir = load_config(path).data_dir
        except ConfigError as e:
            sys.stderr.write(f"error: {e}\n")
            return 1
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
