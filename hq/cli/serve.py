"""
``hq serve``: run the server in the foreground, as ``twistd -n hq`` does.
"""

from __future__ import annotations

import sys
from typing import cast


def run_server(config_file: str | None, log_level: str | None) -> int:
    """
    Run HQ until it is stopped by a signal; return the process exit status.

    Reads ``config_file`` (or ``$HQ_CONFIG``, or ``/etc/hq/hq.toml``);
    ``log_level`` (or ``$HQ_LOG_LEVEL``) overrides the file's ``log_level``.
    """
    from twisted.internet import reactor

    from hq.config import ConfigError, read_config
    from hq.tap import HQService, IServerReactor

    try:
        config = read_config(config_file, log_level)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    service = HQService(config, cast(IServerReactor, reactor))
    try:
        service.privilegedStartService()
    except SystemExit as e:
        return int(e.code or 1)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return service.exit_code
