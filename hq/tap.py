"""
The one place where HQ is wired together: the twistd plugin's Options and
``makeService``, also used by ``hq serve``.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from hq import __version__, commit_hash
from hq.config import Config, ConfigError, read_config

log = Logger()


class Options(usage.Options):
    """
    ``twistd hq`` options.
    """

    synopsis = "[-c config.toml] [-l level]"
    longdesc = "Run the HQ job queue server."
    optParameters = [
        [
            "config-file",
            "c",
            None,
            "TOML config file (default: $HQ_CONFIG, /etc/hq/hq.toml).",
        ],
        ["log-level", "l", None, "Override log_level: debug, info, warn, error or off."],
    ]

    def postOptions(self) -> None:
        try:
            self["config"] = read_config(self["config-file"], self["log-level"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class FatalStartError(Exception):
    """
    The server cannot start; the message says why, for a person.
    """


class HQService(MultiService):
    """
    The whole server. Starts in order (store, recovery, dispatch, cleanup, HTTP)
    and stops in the reverse order, each step waiting for the one before.
    """

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._data_dir = config.data_dir
        self._temporary = False
        self._port: Any = None
        self._site: Any = None
        self._store: Any = None
        self._dispatch: Any = None
        self._metrics: Any = None
        self._cleanup: Service | None = None
        self._logs: list[Any] = []
        self.exit_code = 0
        self._stopping = False
        self.ready: Deferred[None] = Deferred()
        self.address: tuple[str, int] | None = None

    # Start-up.

    def privilegedStartService(self) -> None:
        """
        Do the checks that can fail at once, before the reactor runs: logging,
        the data_dir lock and the listening port. Fails with FatalStartError.
        """
        try:
            self._prepare()
        except FatalStartError as e:
            sys.stderr.write(f"error: {e}\n")
            raise SystemExit(1) from None
        super().privilegedStartService()

    def _prepare(self) -> None:
        from hq.logs import ReopenableFile, app_observer, start_logging

        try:
            app_log = ReopenableFile(self.config.log_file)
            access_log = ReopenableFile(self.config.access_log_file)
        except OSError as e:
            raise FatalStartError(f"cannot open log file {e.filename}: {e.strerror}") from None
        self._logs = [app_log, access_log]
        start_logging(app_observer(self.config.log_level, app_log, self.config.log_format))
        self._open_store()
        self._listen(access_log)

    def _open_store(self) -> None:
        from hq.store import StoreError
        from hq.store.sqlite import SQLiteStore

        if not self._data_dir:
            self._data_dir = tempfile.mkdtemp(prefix="hq_data_")
            self._temporary = True
            log.warn(
                "Your 'data_dir' configuration is not set. HQ uses the temporary directory "
                "{path}, deleted when the server stops: jobs are lost at exit.",
                path=self._data_dir,
            )
        self._store = SQLiteStore(self._data_dir, self._reactor, on_commit=self._commit_observed)
        try:
            self._store.lock()
        except StoreError as e:
            raise FatalStartError(str(e)) from None
        except OSError as e:
            raise FatalStartError(f"cannot use data_dir {self._data_dir}: {e.strerror}") from None

    def _listen(self, access_log: Any) -> None:
        from prometheus_client import disable_created_metrics

        from hq.api import HQApi
        from hq.delivery import Delivery
        from hq.health import HealthCheck
        from hq.ids import IdGenerator
        from hq.metrics import ServerMetrics
        from hq.site import AccessLogSite
        from hq.ui import mount, ui_resource
        from hq.worker import WorkerClient, make_http_client

        config = self.config
        commit = commit_hash()
        self._ids = IdGenerator(config.server_id, self._reactor)
        worker = WorkerClient(
            make_http_client(self._reactor, max_output_bytes=config.max_output_bytes),
            self._reactor,
            f"HQ/{__version__}",
            config.max_output_bytes,
        )
        self._dispatch = Delivery(
            store=self._store,
            worker=worker,
            clock=self._reactor,
            dispatchers=config.dispatchers,
            workers_per_dispatcher=config.workers_per_dispatcher,
            queue_size=config.queues,
            shutdown_timeout=config.shutdown_timeout,
        )
        if config.metrics:
            # The per-metric ``*_created`` series are clutter in the text format.
            disable_created_metrics()
            self._metrics = ServerMetrics(
                self._store,
                self._dispatch,
                self._reactor,
                max_workers=config.dispatchers * config.workers_per_dispatcher,
                queue_size=config.queues,
                version=__version__,
                commit_hash=commit,
            )
            self._dispatch.add_observer(self._metrics.job_finished)
        dispatch = self._dispatch
        health = HealthCheck(self._store.probe_write, lambda: bool(dispatch.running), self._reactor)
        api = HQApi(
            store=self._store,
            dispatch=self._dispatch,
            ids=self._ids,
            clock=self._reactor,
            config=config,
            version=__version__,
            commit_hash=commit,
            metrics=self._metrics,
            health=health,
        )
        ui = ui_resource(config.ui_path, __version__, commit) if config.ui else None
        # The API parses form bodies itself: Twisted's own parse of every POST's
        # Content-Type (through the email package) was a tenth of a push's cost.
        site = AccessLogSite(
            mount(api.resource(), ui, config.ui_path),
            access_log,
            timeout=60,
            request_timeout=config.request_timeout,
            max_body_bytes=config.max_body_bytes,
            trusted_proxies=config.trusted_proxies,
            log_format=config.log_format,
            parsePOSTFormSubmission=False,
        )
        try:
            self._port = self._reactor.listenTCP(config.port, site, interface=config.host)
            self._site = site
        except CannotListenError as e:
            raise FatalStartError(
                f"cannot listen on {config.addr}: {e.socketError.strerror or e.socketError}"
            ) from None
        # Accept connections only once the store is open and jobs are recovered.
        self._port.stopReading()
        host = self._port.getHost()
        self.address = (host.host, host.port)

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._exit_on_second_signal)
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(self._fatal)

    def _exit_on_second_signal(self) -> None:
        """
        Wrap the reactor's SIGINT/SIGTERM handlers: the first signal shuts down
        gracefully, a second one exits at once.
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)

            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                if self._stopping:
                    os.write(2, b"hq: second signal, exiting now\n")
                    os._exit(128 + sig)
                self._stopping = True
                if callable(previous):
                    previous(sig, frame)

            signal.signal(signum, handler)

    async def _start(self) -> None:
        from hq.cleanup import Cleanup
        from hq.logs import on_sigusr1

        await self._store.open()
        now = int(self._reactor.seconds() * 1000)
        recovery = await self._store.recover(now)
        if recovery.requeued or recovery.canceled:
            log.info(
                "Recovered {requeued} interrupted jobs (delivered again) and "
                "{canceled} stopped ones",
                requeued=recovery.requeued,
                canceled=recovery.canceled,
            )
        self._ids.observe(await self._store.max_id())
        self._dispatch.startService()
        if self.config.job_lifetime > 0:
            self._cleanup = Cleanup(self._store, self._reactor, self.config.job_lifetime).service()
            self._cleanup.startService()
        on_sigusr1(self._reopen_logs, self._reactor)
        self._port.startReading()
        assert self.address is not None
        host, port = self.address
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        base = f"http://{shown}:{port}"
        log.info(
            "HQ {version} listening on {base} (data_dir {data_dir}, pid {pid})",
            version=__version__,
            base=base,
            data_dir=self._data_dir,
            pid=os.getpid(),
        )
        if self.config.ui:
            log.info("Web UI at {base}{ui}/", base=base, ui=self.config.ui_path)
        # Ready only now that the API answers: a Type=notify unit starts its
        # dependents (and `systemctl start` returns) at this point.
        self._notify(f"READY=1\nSTATUS=Listening on {base}")
        # What exists now lives as long as the server: keep the collector from
        # walking it again and again, and collect young objects less often
        # (garbage collection was ~60 us of each job's cost; benchmarks/).
        gc.freeze()
        gc.set_threshold(10_000, 20, 100)
        self.ready.callback(None)

    def _notify(self, state: str) -> None:
        from hq.systemd import notify_address, sd_notify

        if not sd_notify(state) and notify_address(os.environ) is not None:
            log.warn(
                "Could not notify systemd at NOTIFY_SOCKET {socket}",
                socket=os.environ.get("NOTIFY_SOCKET"),
            )

    def _commit_observed(self, seconds: float, writes: int, committed: bool) -> None:
        # On the store's writer thread.
        metrics = self._metrics
        if metrics is not None:
            metrics.commit_observed(seconds, writes, committed)

    def _reopen_logs(self) -> None:
        for f in self._logs:
            f.reopen()
        log.info("Reopened the log files")

    def _fatal(self, reason: Any) -> None:
        message = str(reason.value) if reason.check(Exception) else reason.getErrorMessage()
        log.critical("HQ cannot start: {message}", message=message)
        sys.stderr.write(f"error: {message}\n")
        self.exit_code = 1
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self._reactor.running:
            self._reactor.stop()

    # Shutdown.

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        self._notify("STOPPING=1")
        super().stopService()
        log.info(
            "Shutting down: no new requests; waiting up to {timeout} s for running jobs",
            timeout=self.config.shutdown_timeout,
        )
        if self._site is not None:
            self._site.stopping = True
        if self._port is not None:
            await self._port.stopListening()
        if self._cleanup is not None and self._cleanup.running:
            await self._cleanup.stopService()
        if self._dispatch is not None and self._dispatch.running:
            await self._dispatch.stopService()
        if self._store is not None:
            await self._store.close()
        if self._temporary:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            log.info("Removed temporary directory {path}", path=self._data_dir)
        log.info("HQ stopped")
        for f in self._logs:
            f.flush()


def makeService(options: Options) -> HQService:
    """
    Build the HQ service from parsed options (the twistd plugin entry point).
    """
    from twisted.internet import reactor

    return HQService(options["config"], reactor)
