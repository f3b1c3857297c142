"""
The one place where HQ is wired together: the twistd plugin's Options and
``makeService``, also used by ``hq serve``.

:class:`HQService` is a MultiService of small child services, started in this
order and stopped in the reverse one, each waiting for the one before:

1. :class:`ExitOnSecondSignal`: a second SIGINT/SIGTERM exits at once;
2. :class:`LogService`: the application and access logs, reopened on SIGUSR1;
3. with ``sender_process``, :class:`SenderService`: the sender process
   (:mod:`hq.sender`) started, ready while the store opens, and stopped only
   after the delivery engine;
4. :class:`StoreService`: the data_dir lock, then the store opened (schema check);
5. on PostgreSQL, the cluster (:mod:`hq.cluster`): this node registered (a
   live node with its server_id stops the start), its leases renewed and
   expired ones reaped; then the listener of the other nodes' pushes and stops;
6. :class:`Recovery`: interrupted jobs queued again, the id generator advanced;
7. the delivery engine (:func:`delivery_engine`);
8. the clean-up timer (:mod:`hq.cleanup`), when ``job_lifetime`` is set (in
   a cluster, on the node holding the clean-up's leader lease);
9. with ``sender_process``, :class:`SenderReady`: the sender process ready
   (or failed: requests are then made in-process until a new one is);
10. the scheduler, which fires on the node holding the ``schedules`` lease
    in a cluster;
11. :class:`WebListener`: the port, bound early, accepting only from here on;
12. :class:`SystemdNotifier`: ``READY=1`` now, ``STOPPING=1`` first at shutdown.

A new moving part (a scheduler, a cluster heartbeat) is one more child.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, MutableMapping
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IPushProducer,
    IReactorCore,
    IReactorProcess,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from hq import __version__, commit_hash, gctune
from hq.config import Config, ConfigError, read_config
from hq.delivery import Delivery
from hq.flow import FlowControl
from hq.ids import IdGenerator, now_ms
from hq.logs import (
    ReopenableFile,
    app_observer,
    on_sigusr1,
    set_debug_events,
    start_logging,
)
from hq.metrics import ServerMetrics
from hq.policy import RetryRules
from hq.scheduler import Scheduler
from hq.site import AccessLogSite
from hq.store import IJobStore, Node, StoreError, open_store
from hq.store.sqlite import SQLiteStore
from hq.systemd import notify_address, sd_notify

if TYPE_CHECKING:
    # Imported by open_store, and only for a PostgreSQL store: a server on
    # SQLite never loads psycopg and libpq (about 10 MB of memory).
    from hq.sender import SenderProcess
    from hq.store.postgres import PostgresStore
    from hq.worker import WorkerClient

    #: The job stores a server can run on (``store`` in the config).
    AnyStore = SQLiteStore | PostgresStore

log = Logger()


class IServerReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorThreads, IReactorProcess):
    """
    What HQ needs of its reactor (the global one, in :func:`makeService`).
    """


class Options(usage.Options):
    """
    ``twistd hq`` options.

    A config file that cannot be used is not a usage error (twistd would print
    its whole usage text): it stops the start-up, as ``hq serve`` does.
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
        self["config_error"] = None
        try:
            self["config"] = read_config(self["config-file"], self["log-level"])
        except ConfigError as e:
            self["config"] = None
            self["config_error"] = str(e)


class FatalStartError(Exception):
    """
    The server cannot start; the message says why, for a person.
    """


class Console:
    """
    The standard output and error of the person (or unit) who started HQ.

    ``hq serve`` writes to ``sys.stdout`` and ``sys.stderr``. Under twistd,
    which redirects both into its log and, in daemon mode, replaces them with
    /dev/null, this keeps the ones HQ was started with, and a log file left
    empty in the config means twistd's log: ``--logfile`` (``twistd.log`` for
    a daemon), or standard output with ``-n``. A daemon's parent process
    waits until HQ is ready (exit 0) or cannot start (exit 1).
    """

    def __init__(
        self,
        out: IO[str],
        err: IO[str],
        log_path: str | None = "",
        twistd: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.out = out
        self._err: IO[str] | None = err
        #: Where the logs go when log_file / access_log_file are empty: a path,
        #: "" for ``out``, None when twistd logs to syslog or a custom observer.
        self.log_path = log_path
        #: twistd's options (its status pipe and pidfile); None under ``hq serve``.
        self._twistd = twistd
        self._status_pipe: int | None = None

    @classmethod
    def of_serve(cls) -> Console:
        return cls(sys.stdout, sys.stderr)

    @classmethod
    def of_twistd(cls, twistd: MutableMapping[str, Any]) -> Console:
        """
        Return the console of ``twistd`` (its ServerOptions), before it has
        begun logging or become a daemon (in ``makeService``).
        """
        logfile = twistd.get("logfile") or ""
        log_path: str | None
        if twistd.get("syslog") or twistd.get("logger"):
            log_path = None  # not a file HQ can write to
        elif logfile == "-" or (twistd.get("nodaemon") and not logfile):
            log_path = ""
        else:
            log_path = os.path.abspath(logfile or "twistd.log")
        # A copy of stderr: a daemon's own stderr is /dev/null. Closed when started.
        try:
            err: IO[str] = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        except (AttributeError, OSError, ValueError):
            err = sys.stderr  # not a file: nothing to keep across a fork
        return cls(sys.stdout, err, log_path, twistd)

    @property
    def under_twistd(self) -> bool:
        return self._twistd is not None

    def log_file(self, path: str, turns: IReactorTime | None = None) -> ReopenableFile:
        """
        Open the log file ``path``; the empty path means this console's log.
        ``turns``: see :class:`ReopenableFile`.

        :raises FatalStartError: for the empty path under ``twistd --syslog``
            (or ``--logger``), whose destination HQ cannot write its lines to.
        :raises OSError: when the file cannot be opened.
        """
        if path or self.log_path is not None:
            return ReopenableFile(path or self.log_path or "", self.out, turns)
        raise FatalStartError("with twistd --syslog or --logger, set log_file and access_log_file")

    def starting(self) -> None:
        """
        Take twistd's start-up status pipe (a daemon's parent waits on it), so
        that it reports the end of HQ's start, not of privilegedStartService.
        """
        if self._twistd is not None:
            # Set by twistd's daemonize (twisted.scripts._twistd_unix); twistd
            # writes to it only if it is still there when startService returns.
            self._status_pipe = self._twistd.get("statusPipe")
            self._twistd["statusPipe"] = None

    def started(self) -> None:
        """
        Tell a daemon's parent that HQ is ready; let go of the start-up stderr.
        """
        self._report(b"0")

    def failed(self, message: str) -> None:
        """
        Write ``error: message`` to stderr; a daemon's parent exits 1.
        """
        if self._err is not None:
            try:
                self._err.write(f"error: {message}\n")
                self._err.flush()
            except (OSError, ValueError):
                pass
        if self._twistd is not None and self._twistd.get("pidfile"):
            # twistd removes it only after a start that did not fail. Before
            # the report: the daemon's parent exits as soon as it has it, and
            # whoever ran it may look for the pidfile at once.
            try:
                os.unlink(self._twistd["pidfile"])
            except OSError:
                pass
        self._report(b"1 " + message.encode("ascii", "backslashreplace")[:98])

    def _report(self, status: bytes) -> None:
        if self._status_pipe is not None:
            try:
                os.write(self._status_pipe, status)
                os.close(self._status_pipe)
            except OSError:
                pass
            self._status_pipe = None
        if self._twistd is not None:
            err, self._err = self._err, None
            if err is not None and err is not sys.stderr:
                err.close()


def cannot_start(console: Console, message: str) -> None:
    """
    Say, in the log and on the console, that HQ cannot start and why.
    """
    log.critical("HQ cannot start: {error}", error=message)
    console.failed(message)


class Stage(Service):
    """
    A child of :class:`HQService` whose start or stop takes time: HQService
    awaits :meth:`start` before starting the next child, and :meth:`stop`
    before stopping the one before it.
    """

    async def start(self) -> None:
        """
        Finish starting. Fails (FatalStartError, StoreError...) when HQ cannot start.
        """

    async def stop(self) -> None:
        """
        Undo what privilegedStartService and start did; safe when they did not run.
        """

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self.stop())


class ExitOnSecondSignal(Service):
    """
    Wraps the reactor's SIGINT/SIGTERM handlers: the first signal shuts down
    gracefully, a second one (or one during any shutdown) exits at once.
    """

    def __init__(self, reactor: IReactorCore) -> None:
        self._reactor = reactor
        self.stopping = False

    def startService(self) -> None:
        super().startService()
        # After the reactor has installed its own handlers.
        self._reactor.callWhenRunning(self._wrap)

    def _wrap(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)

            def handler(sig: int, frame: FrameType | None, previous: object = previous) -> None:
                if self.stopping:
                    os.write(2, b"hq: second signal, exiting now\n")
                    os._exit(128 + sig)
                self.stopping = True
                if callable(previous):
                    previous(sig, frame)

            signal.signal(signum, handler)


class LogService(Service):
    """
    The application log and the access log: opened, and made the one log
    destination, before anything else starts; reopened on SIGUSR1.
    """

    def __init__(self, config: Config, console: Console, reactor: IServerReactor) -> None:
        self._config = config
        self._console = console
        self._reactor = reactor
        self._files: list[ReopenableFile] = []

    @property
    def access_log(self) -> ReopenableFile:
        return self._files[1]

    def privilegedStartService(self) -> None:
        config = self._config
        try:
            self._files = [
                self._console.log_file(config.log_file),
                # Written by the site, a turn of the reactor at a time.
                self._console.log_file(config.access_log_file, turns=self._reactor),
            ]
        except OSError as e:
            raise FatalStartError(f"cannot open log file {e.filename}: {e.strerror}") from None
        observer = app_observer(config.log_level, self._files[0], config.log_format)
        set_debug_events(config.log_level == "debug")
        start_logging(observer, replace=self._console.under_twistd)

    def startService(self) -> None:
        super().startService()
        on_sigusr1(self.reopen, self._reactor)

    def reopen(self) -> None:
        for f in self._files:
            f.reopen()
        log.info("Reopened the log files")

    def flush(self) -> None:
        for f in self._files:
            f.flush()


class StoreService(Stage):
    """
    The job store: the data_dir lock taken at once (another server on it stops
    the start before the port is bound), then opened, its schema checked and
    upgraded; closed last at shutdown. A temporary data_dir is removed then.
    """

    def __init__(self, store: AnyStore, data_dir: str, temporary: bool) -> None:
        self.store = store
        self.data_dir = data_dir
        self._temporary = temporary
        self._opened = False

    def privilegedStartService(self) -> None:
        if self._temporary:
            log.warn(
                "Your 'data_dir' configuration is not set. HQ uses the temporary directory "
                "{path}, deleted when the server stops: jobs are lost at exit.",
                path=self.data_dir,
            )
        try:
            self.store.lock()
        except StoreError as e:
            raise FatalStartError(str(e)) from None
        except OSError as e:
            raise FatalStartError(f"cannot use data_dir {self.data_dir}: {e.strerror}") from None

    async def start(self) -> None:
        await self.store.open()
        self._opened = True

    async def stop(self) -> None:
        if self._opened:
            self._opened = False
            await self.store.close()
        self.remove_temporary()

    def remove_temporary(self) -> None:
        if self._temporary and os.path.isdir(self.data_dir):
            shutil.rmtree(self.data_dir, ignore_errors=True)
            log.info("Removed temporary directory {path}", path=self.data_dir)


class Recovery(Stage):
    """
    Jobs left unfinished by the last run: waiting and interrupted ones are
    queued again, and new ids continue after the highest stored one.
    """

    def __init__(
        self,
        store: IJobStore,
        ids: IdGenerator,
        clock: IReactorTime,
        flow: FlowControl | None = None,
    ) -> None:
        self._store = store
        self._ids = ids
        self._clock = clock
        self._flow = flow

    async def start(self) -> None:
        recovery = await self._store.recover(now_ms(self._clock))
        if recovery.requeued or recovery.canceled:
            log.info(
                "Recovered {requeued} interrupted jobs (delivered again) and "
                "{canceled} stopped ones",
                requeued=recovery.requeued,
                canceled=recovery.canceled,
            )
        self._ids.observe(await self._store.max_id())
        if self._flow is not None:
            # The limits set with PUT /flow/{key} survive restarts (SPEC §16).
            self._flow.load(await self._store.flow_limits())


class WebListener(Stage):
    """
    The HTTP port. Bound in privilegedStartService (an address in use stops
    the start at once) but not accepting connections until :meth:`start`,
    when everything behind it runs; at shutdown it stops first: requests still
    arriving on open connections are answered 503 (``site.stopping``).
    """

    def __init__(
        self,
        config: Config,
        make_site: Callable[[], AccessLogSite],
        reactor: IReactorTCP,
        data_dir: str,
    ) -> None:
        self._config = config
        self._make_site = make_site
        self._reactor = reactor
        self._data_dir = data_dir
        self._site: AccessLogSite | None = None
        self._port: IListeningPort | None = None
        self.base = ""

    def privilegedStartService(self) -> None:
        config = self._config
        self._site = self._make_site()
        if config.listen:
            self._port = listen_on_endpoint(self._reactor, config.listen, self._site)
            self._pause_and_name()
            return
        try:
            # AccessLogSite's channel class is narrower than ServerFactory's generic says.
            self._port = self._reactor.listenTCP(
                config.port,
                self._site,  # type: ignore[arg-type]
                interface=config.host,
            )
        except CannotListenError as e:
            reason = e.socketError.strerror or e.socketError
            raise FatalStartError(f"cannot listen on {config.addr}: {reason}") from None
        self._pause_and_name()

    def _pause_and_name(self) -> None:
        assert self._port is not None
        producer = IPushProducer(self._port, None)
        if producer is not None:
            producer.pauseProducing()
        host = self._port.getHost()
        if not isinstance(host, IPv4Address | IPv6Address):
            self.base = str(host)
            return
        shown = "127.0.0.1" if host.host in ("0.0.0.0", "::") else host.host
        if ":" in shown:
            shown = f"[{shown}]"
        scheme = "https" if self._config.listen.startswith(("ssl:", "tls:")) else "http"
        self.base = f"{scheme}://{shown}:{host.port}"

    def node_address(self) -> str:
        """
        The API's address for other nodes of a cluster (``GET /nodes``): the
        host name in place of a wildcard interface.
        """
        if self._config.listen or self._config.host:
            return self.base
        return self.base.replace("127.0.0.1", socket.gethostname(), 1)

    async def start(self) -> None:
        assert self._port is not None
        producer = IPushProducer(self._port, None)
        if producer is not None:
            producer.resumeProducing()
        log.info(
            "HQ {version} listening on {base} (data_dir {data_dir}, pid {pid})",
            version=__version__,
            base=self.base,
            data_dir=self._data_dir,
            pid=os.getpid(),
        )
        if self._config.ui:
            log.info("Web UI at {base}{ui}/", base=self.base, ui=self._config.ui_path)

    async def stop(self) -> None:
        if self._site is not None:
            self._site.stopping = True
        port, self._port = self._port, None
        stopped = port.stopListening() if port is not None else None
        if stopped is not None:
            await stopped


def listen_on_endpoint(reactor: Any, description: str, site: AccessLogSite) -> IListeningPort:
    """
    Listen with the server endpoint ``description`` (config ``listen``, e.g.
    ``tcp:19900:interface=127.0.0.1`` or ``ssl:19443:privateKey=key.pem:certKey=cert.pem``)
    and return the port.

    :raises FatalStartError: naming ``listen`` when the description is invalid
        (or its files cannot be read) or the endpoint cannot listen.
    """
    from twisted.internet.endpoints import serverFromString

    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:  # a bad description or an unreadable key/certificate
        raise FatalStartError(f"'listen' {description!r} is not usable: {e}") from None
    outcome: list[Any] = []
    endpoint.listen(site).addBoth(outcome.append)  # type: ignore[arg-type]
    if not outcome:
        raise FatalStartError(f"'listen' {description!r} did not start listening at once")
    result = outcome[0]
    if isinstance(result, Failure):
        error = result.value
        if isinstance(error, CannotListenError) and error.socketError is not None:
            reason = error.socketError.strerror or error.socketError
        else:
            reason = result.getErrorMessage()
        raise FatalStartError(f"cannot listen on {description}: {reason}") from None
    return cast(IListeningPort, result)


class SystemdNotifier(Service):
    """
    Tells systemd (``Type=notify``) that HQ is ready, once the API answers, so
    its dependents start (and ``systemctl start`` returns) then; and that it
    is stopping, first thing at shutdown.
    """

    def __init__(self, web: WebListener) -> None:
        self._web = web

    def startService(self) -> None:
        super().startService()
        self._notify(f"READY=1\nSTATUS=Listening on {self._web.base}")

    def stopService(self) -> None:
        super().stopService()
        self._notify("STOPPING=1")

    def _notify(self, state: str) -> None:
        if not sd_notify(state) and notify_address(os.environ) is not None:
            log.warn(
                "Could not notify systemd at NOTIFY_SOCKET {socket}",
                socket=os.environ.get("NOTIFY_SOCKET"),
            )


class StartFailure(Service):
    """
    What twistd runs when the config cannot be used: it says why and exits 1.
    """

    def __init__(self, message: str, console: Console) -> None:
        self._message = message
        self._console = console

    def privilegedStartService(self) -> None:
        self._console.starting()
        cannot_start(self._console, self._message)
        raise SystemExit(1)


def delivery_engine(
    config: Config,
    store: IJobStore,
    reactor: IServerReactor,
    ids: IdGenerator | None = None,
    sender: SenderService | None = None,
) -> Delivery:
    """
    Return the delivery engine: the service that feeds stored jobs to workers
    (``ids`` makes the callback jobs' ids); with ``sender``, most requests to
    workers are made by its process (:mod:`hq.sender`).
    """
    from hq.worker import Sender, worker_client

    local = worker_client(reactor, **client_settings(config))
    worker: Sender = local if sender is None else sender.sender_for(local)
    delivery = Delivery(
        store=store,
        worker=worker,
        clock=reactor,
        dispatchers=config.dispatchers,
        workers_per_dispatcher=config.workers_per_dispatcher,
        queue_size=config.queues,
        shutdown_timeout=config.shutdown_timeout,
        rules=RetryRules(config.retry_min_backoff, config.retry_max_backoff),
        flow=FlowControl(
            reactor,
            host_parallelism=config.host_parallelism,
            adaptive=config.adaptive_flow,
            ceiling=config.dispatchers * config.workers_per_dispatcher,
            park_capacity=max(1, config.queues // 4),
        ),
        new_id=None if ids is None else ids.next_id,
    )
    if sender is not None and sender.sender is not None:
        # A run that is alone goes out from this process (hq.sender).
        sender.sender.runs = lambda: delivery.runs
    return delivery


def client_settings(config: Config) -> dict[str, Any]:
    """
    Return the settings of the server's client to workers
    (:func:`hq.worker.worker_client`'s arguments), as the sender process gets
    them too.
    """
    return {
        "user_agent": f"HQ/{__version__}",
        "max_output_bytes": config.max_output_bytes,
        "deny": list(config.deny_networks),
        "allow": list(config.allow_networks),
        "signing_secrets": list(config.signing_secrets),
    }


#: Seconds the start waits for the sender process (it is usually ready in a
#: fraction of one); requests are made in-process until it is.
SENDER_START_TIMEOUT = 10.0


class SenderService(Stage):
    """
    The sender process (:mod:`hq.sender`), when ``sender_process``
    is on: started early, so that it gets ready while the store opens;
    stopped after the delivery engine, once no request to a worker is in
    flight. Until it is ready, requests are made by the server's own process.
    """

    def __init__(self, config: Config, reactor: IServerReactor) -> None:
        self._config = config
        self._reactor = reactor
        self.sender: SenderProcess | None = None
        self._ready: Deferred[None] | None = None

    def sender_for(self, local: WorkerClient) -> SenderProcess:
        """
        Return the sender, with ``local`` as the client of this process.
        """
        from hq.sender import SenderProcess

        self.sender = SenderProcess(self._reactor, local, client_settings(self._config))
        return self.sender

    def startService(self) -> None:
        super().startService()
        if self.sender is not None:
            self._ready = self.sender.start()

    def ready(self) -> Stage:
        """
        Return the stage that waits (up to :data:`SENDER_START_TIMEOUT` s)
        until the process is ready or has failed to start, so that the port
        accepts connections with the sender ready in the usual case.
        """
        return SenderReady(self)

    async def wait(self) -> None:
        if self._ready is None:
            return
        ready = self._ready
        ready.addTimeout(SENDER_START_TIMEOUT, self._reactor, lambda _, __: None)
        await ready

    async def stop(self) -> None:
        if self.sender is not None:
            await self.sender.stop()


class SenderReady(Stage):
    """
    Wait until the sender process is ready (see :meth:`SenderService.ready`).
    """

    def __init__(self, sender: SenderService) -> None:
        self._sender = sender

    async def start(self) -> None:
        await self._sender.wait()


def server_metrics(
    config: Config, store: IJobStore, delivery: Delivery, reactor: IServerReactor
) -> ServerMetrics:
    """
    Return the Prometheus metrics of the server, told of every started job,
    recorded attempt and finished job.
    """
    from prometheus_client import disable_created_metrics

    # The per-metric ``*_created`` series are clutter in the text format.
    disable_created_metrics()
    metrics = ServerMetrics(
        store,
        delivery,
        reactor,
        max_workers=config.dispatchers * config.workers_per_dispatcher,
        queue_size=config.queues,
        version=__version__,
        commit_hash=commit_hash(),
    )
    metrics.observe(delivery)
    metrics.flow = delivery.flow
    return metrics


def web_resource(
    config: Config,
    store: AnyStore,
    delivery: Delivery,
    ids: IdGenerator,
    metrics: ServerMetrics | None,
    reactor: IServerReactor,
    nodes: Callable[[], Deferred[list[Node]]] | None = None,
    schedules_changed: Callable[[], object] = lambda: None,
) -> IResource:
    """
    Return the resource served: the API, with the web UI under ``ui_basename``.
    """
    from hq.api import HQApi
    from hq.guard import NetworkGuard
    from hq.health import HealthCheck
    from hq.ui import mount, ui_resource

    commit = commit_hash()
    health = HealthCheck(store.probe_write, lambda: bool(delivery.running), reactor)
    api = HQApi(
        store=store,
        dispatch=delivery,
        ids=ids,
        clock=reactor,
        config=config,
        version=__version__,
        commit_hash=commit,
        metrics=metrics,
        health=health,
        guard=NetworkGuard.from_config(config.deny_networks, config.allow_networks),
        nodes=nodes,
        schedules_changed=schedules_changed,
        flow=delivery.flow,
    )
    ui = ui_resource(config.ui_path, __version__, commit) if config.ui else None
    return protected(config, mount(api.resource(), ui, config.ui_path), reactor)


def protected(config: Config, resource: IResource, reactor: IServerReactor) -> IResource:
    """
    Return ``resource`` behind the token check when ``[[tokens]]`` are configured
    (the UI's files stay open; its API calls need a token), else ``resource``.
    """
    from hq.auth import protect

    return protect(resource, config.tokens, reactor, config.ui_path if config.ui else None)


def web_site(config: Config, resource: IResource, access_log: ReopenableFile) -> AccessLogSite:
    """
    Return the Site serving ``resource``, with the limits and the access log.
    """
    # The API parses form bodies itself: Twisted's own parse of every POST's
    # Content-Type (through the email package) was a tenth of a push's cost.
    return AccessLogSite(
        resource,
        access_log,
        timeout=60,
        request_timeout=config.request_timeout,
        max_body_bytes=config.max_body_bytes,
        trusted_proxies=config.trusted_proxies,
        log_format=config.log_format,
        parsePOSTFormSubmission=False,
    )


class HQService(MultiService):
    """
    The whole server: its children (see the module) start in order, each
    waiting for the one before, and stop in the reverse order, likewise.
    ``ready`` fires when the API accepts requests.
    """

    def __init__(
        self, config: Config, reactor: IServerReactor, console: Console | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._console = console or Console.of_serve()
        self.exit_code = 0
        self.ready: Deferred[None] = Deferred()
        self._starting: Deferred[None] | None = None
        self._failed = False
        self._metrics: ServerMetrics | None = None
        self._signals = ExitOnSecondSignal(reactor)
        self._logs = LogService(config, self._console, reactor)
        postgres = config.postgres_url is not None
        data_dir = config.data_dir or ("" if postgres else tempfile.mkdtemp(prefix="hq_data_"))
        store = open_store(config, reactor, data_dir=data_dir, on_commit=self._commit_observed)
        self._store = StoreService(store, data_dir, temporary=not (config.data_dir or postgres))
        self._add_children(store)

    def _add_children(self, store: AnyStore) -> None:
        config, reactor = self.config, self._reactor
        ids = IdGenerator(config.server_id, reactor)
        sender = SenderService(config, reactor) if config.sender_process else None
        delivery = delivery_engine(config, store, reactor, ids, sender)
        if config.metrics:
            self._metrics = server_metrics(config, store, delivery, reactor)
            if sender is not None and sender.sender is not None:
                self._metrics.watch_sender(sender.sender)
        from hq.cluster import local_nodes

        postgres = None if isinstance(store, SQLiteStore) else store
        if postgres is not None:
            nodes = postgres.nodes
        else:
            # ``web`` is bound below, before any request is answered.
            started = now_ms(reactor)
            nodes = local_nodes(config.server_id, lambda: web.node_address(), started, reactor)
        schedules_leader = None
        if postgres is not None:
            from hq.scheduler import LEADER_SECONDS

            # Fires happen once anyway (conditional); the lease spares the
            # other nodes their losing attempts.
            schedules_leader = functools.partial(postgres.lead, "schedules", LEADER_SECONDS)
        scheduler = Scheduler(store, ids, reactor, delivery.enqueue, leader=schedules_leader)
        resource = web_resource(
            config, store, delivery, ids, self._metrics, reactor, nodes, scheduler.wake
        )
        web = WebListener(
            config,
            lambda: web_site(config, resource, self._logs.access_log),
            reactor,
            self._store.data_dir,
        )
        children: list[IService] = [self._signals, self._logs]
        if sender is not None:
            children.append(sender)
        children.append(self._store)
        if postgres is not None:
            children += self._cluster(postgres, delivery, web)
        children += [Recovery(store, ids, reactor, delivery.flow), delivery]
        if config.job_lifetime > 0:
            from hq.cleanup import INTERVAL, Cleanup

            leader = None
            if postgres is not None:
                # Held across ticks; a stopped node's lease ends with it.
                leader = functools.partial(postgres.lead, "cleanup", INTERVAL * 2.5)
            cleanup = Cleanup(store, reactor, config.job_lifetime, leader)
            children.append(cleanup.service())
        # After the recovery (ids continue after the stored ones), before the port.
        if sender is not None:
            children.append(sender.ready())
        children += [scheduler, web, SystemdNotifier(web)]
        for child in children:
            child.setServiceParent(self)

    def _cluster(
        self, store: PostgresStore, delivery: Delivery, web: WebListener
    ) -> list[IService]:
        """
        Return the services of this node of a cluster: its registration,
        heartbeat, lease renewal and reaper, and the listener.
        """
        from hq.cluster import ClusterNode, NotifyListener
        from hq.store.postgres import PUSH_CHANNEL, STOP_CHANNEL

        reactor = self._reactor
        node = ClusterNode(store, web.node_address, delivery, reactor)
        listener = NotifyListener(
            store.connect,
            reactor,
            on_push=delivery.poke,
            on_stop=delivery.cancel,
            channels=(PUSH_CHANNEL, STOP_CHANNEL),
            own_pid=store.writer_pid,
        )
        from hq.flow import limits_refresher

        return [node, listener, limits_refresher(delivery.flow, store, reactor)]

    def _commit_observed(self, seconds: float, writes: int, committed: bool) -> None:
        # On the store's writer thread.
        if self._metrics is not None:
            self._metrics.commit_observed(seconds, writes, committed)

    # Start-up.

    def privilegedStartService(self) -> None:
        """
        Do what can fail at once, before the reactor runs, in the children's
        order: the logs, the data_dir lock, the port. On failure say why and
        exit with status 1.
        """
        self._console.starting()
        try:
            super().privilegedStartService()
        except FatalStartError as e:
            cannot_start(self._console, str(e))
            self._store.remove_temporary()
            self._logs.flush()
            raise SystemExit(1) from None

    def startService(self) -> None:
        """
        Start the children in order (each :class:`Stage` awaited); on failure
        say why, stop what started and exit with status 1.
        """
        Service.startService(self)
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._fatal)

    async def _start(self) -> None:
        for child in self:
            if self._signals.stopping:
                return
            child.startService()
            if isinstance(child, Stage):
                await child.start()
        gctune.settle()
        self._console.started()
        self.ready.callback(None)

    def _fatal(self, reason: Failure) -> None:
        self._failed = True
        self.exit_code = 1
        if reason.check(FatalStartError, StoreError, OSError):
            cannot_start(self._console, reason.getErrorMessage())
        else:
            log.failure("HQ cannot start", reason)
            self._console.failed(reason.getErrorMessage())
        if self._console.under_twistd:
            # twistd has no way to exit with an error once its reactor runs.
            self._reactor.addSystemEventTrigger("after", "shutdown", self._exit_failed)
        if self._reactor.running:
            self._reactor.stop()

    def _exit_failed(self) -> None:
        self._logs.flush()
        os._exit(1)

    # Shutdown.

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in the reverse order, each awaited; return a Deferred
        that fires when the last (the store) has closed.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._signals.stopping = True
        if self._starting is not None:
            # Its errback has handled a failure: this fires with None.
            await self._starting
        if self.ready.called:
            log.info(
                "Shutting down: no new requests; waiting up to {timeout} s for running jobs",
                timeout=self.config.shutdown_timeout,
            )
        Service.stopService(self)
        for child in reversed(list(self)):
            if child.running or isinstance(child, Stage):
                stopped = child.stopService()
                if stopped is not None:
                    await stopped
        if not self._failed:
            log.info("HQ stopped")
        self._logs.flush()


def makeService(options: Options) -> Service:
    """
    Build the HQ service from parsed options (the twistd plugin entry point).
    """
    from twisted.internet import reactor

    twistd = getattr(options, "parent", None)
    console = Console.of_twistd(twistd) if twistd is not None else Console.of_serve()
    if options["config"] is None:
        return StartFailure(options["config_error"], console)
    return HQService(options["config"], cast(IServerReactor, reactor), console)
