"""
C{twistd -n portunus-server --data-dir DIR}: the control plane.

The composition root: resolve and check the data dir, load C{server.toml},
make or load the TLS certificate, open the store, then serve the control
listener (AMP over TLS) and the operator HTTP API.  Startup refusals exit
before anything is bound, with Portunus' exit codes: 75 for a store held by
another server, 78 for a schema newer than this code, 1 otherwise.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IReactorCore
from twisted.logger import ILogObserver, Logger
from twisted.python.threadpool import ThreadPool

from portunus import __version__
from portunus.compat import clear_exit_signal, raise_listen_errors_at_start
from portunus.control.enrollment import new_secret
from portunus.control.tls import (
    ensure_server_certificate,
    server_tls_options,
    write_file_atomically,
)
from portunus.dataplane.rlimits import raise_nofile_limit
from portunus.errors import PortunusError
from portunus.logging import make_observer
from portunus.reactors import IProcessReactor, installed_reactor
from portunus.secretfiles import refuse_shared_secret_file
from portunus.server.api import audit as audit_api
from portunus.server.api import metrics as metrics_api
from portunus.server.api import settings as settings_api
from portunus.server.api.app import make_api
from portunus.server.api.httplimits import apply_limits
from portunus.server.audit.writer import AuditLog
from portunus.server.auth.accounts import Accounts
from portunus.server.auth.passwords import Passwords, thread_runner
from portunus.server.auth.service import AccountsService
from portunus.server.auth.setupfile import SetupTokenFile
from portunus.server.auth.throttle import Throttle
from portunus.server.controlplane import ControlPlane, PlaneSettings
from portunus.server.datadir import prepare_data_dir, resolve_data_dir
from portunus.server.gate import Gate, fit_to_descriptors
from portunus.server.httpsite import QuietSite
from portunus.server.metrics import ServerMetrics
from portunus.server.metricsweb import MetricsRoot
from portunus.server.sessions import ServerSession, control_factory
from portunus.server.settings import (
    SERVER_TOML,
    ListenerKind,
    ServerSettings,
    load_server_settings,
)
from portunus.server.store import Store, open_store
from portunus.tapsupport import (
    LOG_OPTIONS,
    LoggingOptions,
    SighupService,
    install_log_observer,
    name_pidfile,
    open_log_sink,
)

__all__ = ["OPERATOR_TOKEN_FILE", "Options", "makeService"]

log = Logger()

#: twistd's pidfile unless --pidfile says otherwise (not twistd.pid: see name_pidfile).
PIDFILE = "portunus-server.pid"

#: Where the generated operator token lives when server.toml sets none.
OPERATOR_TOKEN_FILE = "operator.token"

#: Exit codes of store refusals (Portunus §1.5; 75/78 as sysexits); every
#: other startup refusal exits with its registry code (config_invalid 2,
#: TLS material 78, data dir and filesystem 1).
_STARTUP_EXIT = {"startup.store_in_use": 75, "startup.schema_version_too_new": 78}


class Options(LoggingOptions):
    synopsis = "[--data-dir DIR] [options]"
    longdesc = (
        "Run the Portunus control plane: the control listener edges connect to "
        "(AMP over pinned TLS) and the operator HTTP API."
    )
    optParameters = [
        [
            "data-dir",
            "d",
            None,
            "State directory (default: $STATE_DIRECTORY, $XDG_STATE_HOME/portunus, ...).",
        ],
        ["advertised-endpoint", None, None, "HOST[:PORT] edges dial (goes into enroll URIs)."],
        ["operator-http-listen", None, None, "ADDR:PORT of the operator HTTP API."],
        ["control-listen", None, None, "ADDR:PORT of the control listener."],
        *LOG_OPTIONS,
    ]

    def postOptions(self) -> None:
        super().postOptions()
        name_pidfile(self, PIDFILE)


def _fail(error: PortunusError) -> SystemExit:
    sys.stderr.write(f"error: {error.code}: {error.message}\n")
    sys.stderr.flush()
    return SystemExit(_STARTUP_EXIT.get(error.code, error.error.exit_code))


def operator_token(settings: ServerSettings) -> tuple[str, str | None]:
    """
    The operator bearer token: C{server.toml}'s C{operator_token}, else the
    one in C{<data_dir>/operator.token}, generated (0600) on first start.
    Returns the token and the file it came from (None: server.toml).
    """
    if settings.operator_token:
        return settings.operator_token, None
    path = os.path.join(settings.data_dir, OPERATOR_TOKEN_FILE)
    try:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = new_secret()
        write_file_atomically(path, (token + "\n").encode("ascii"), 0o600)
    return token, path


def load_settings(options: Options, environ: dict[str, str]) -> ServerSettings:
    data_dir = resolve_data_dir(options["data-dir"], environ, os.getcwd())
    prepare_data_dir(data_dir, environ)
    settings = load_server_settings(data_dir, environ).with_overrides(
        control_listen=options["control-listen"],
        operator_http_listen=options["operator-http-listen"],
        advertised_endpoint=options["advertised-endpoint"],
    )
    if settings.operator_token:
        # Only server.toml sets it: the file holds a superadmin credential.
        path = os.path.join(data_dir, SERVER_TOML)
        try:
            refuse_shared_secret_file(path, "startup.server_toml_permissions", "operator_token")
        except OSError as e:
            raise PortunusError("config_invalid", f"cannot inspect {path}: {e.strerror}") from None
    return settings


class ServerService(MultiService):
    """The control plane's listeners, and a clean stop of sessions and store."""

    def __init__(
        self, plane: ControlPlane, store: Store, observer: ILogObserver, reactor: IReactorCore
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.plane = plane
        self.store = store
        self._observer = observer

    def setServiceParent(self, parent: Any) -> None:
        install_log_observer(parent, self._observer)
        super().setServiceParent(parent)

    def stopService(self) -> Any:
        self.plane.stop()
        d = super().stopService()

        def stopped(_: object) -> Any:
            log.info("portunus-server stopped", event="server.stopped")
            # twistd re-raises the stopping signal at exit; a clean stop of
            # sessions and store exits 0 instead (as the standalone does).
            clear_exit_signal(self._reactor)
            return None

        closing = self.store.close() if d is None else d.addCallback(lambda _: self.store.close())
        return closing.addCallback(stopped)


class _Listener(StreamServerEndpointService):
    """
    A listener whose bind failure stops startup: exit 1 naming the address,
    instead of a server that runs without it.
    """

    def __init__(self, endpoint: Any, factory: Any, what: str, address: str) -> None:
        super().__init__(endpoint, factory)
        raise_listen_errors_at_start(self)
        self._what = what
        self._address = address

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            sys.stderr.write(
                f"error: bind_failed: cannot listen for the {self._what} on "
                f"{self._address}: {e}; stop what holds it or choose another address\n"
            )
            sys.stderr.flush()
            raise SystemExit(1) from None


def _listener(
    reactor: IReactorCore, settings: ServerSettings, kind: ListenerKind, factory: IProtocolFactory
) -> _Listener:
    names = {
        "control": ("control listener", settings.control_listen),
        "operator_http": ("operator HTTP API", settings.operator_http_listen),
        "metrics": ("metrics listener", settings.metrics_listen),
    }
    what, address = names[kind]
    endpoint = serverFromString(reactor, settings.endpoint_description(kind))
    return _Listener(endpoint, factory, what, str(address))


def makeService(options: Options, reactor: IProcessReactor | None = None) -> IService:
    if reactor is None:
        reactor = installed_reactor()
    environ = dict(os.environ)
    sink = open_log_sink(options)
    observer = make_observer(options["log-format"], options.level, sink)
    try:
        settings = load_settings(options, environ)
        advertised = settings.advertised_endpoint
        extra = [advertised.host] if advertised is not None else []
        cert = ensure_server_certificate(
            settings.tls_cert_path, settings.tls_key_path, socket.gethostname(), extra
        )
        store = open_store(settings.data_dir, reactor)
    except PortunusError as e:
        raise _fail(e) from None
    token, token_file = operator_token(settings)
    control_port = settings.control_listen.port
    endpoint = (
        advertised.with_port(control_port)
        if advertised is not None
        else f"127.0.0.1:{control_port}"
    )
    plane = ControlPlane(
        store,
        PlaneSettings(
            advertised_endpoint=endpoint,
            cert_fingerprint=cert.fingerprint,
            control_port=control_port,
            udp_flow_idle_secs=settings.udp_flow_idle_secs,
            udp_max_flows_per_rule=settings.udp_max_flows_per_rule,
            range_rule_max_ports=settings.range_rule_max_ports,
            ack_timeout_secs=settings.ack_timeout_secs,
        ),
        reactor,
    )
    # Queued first on the store's one worker thread, so it lands before any
    # enrollment the API or CLI could issue.
    Deferred.fromCoroutine(plane.load_advertised_override()).addErrback(
        lambda f: log.failure("could not load the advertised endpoint override", f)
    )
    metrics = ServerMetrics(plane)
    plane.auth_failure_observer = metrics.auth_failed
    service = ServerService(plane, store, observer, reactor)
    SighupService(reactor, sink).setServiceParent(service)

    hashing = ThreadPool(minthreads=0, maxthreads=2, name="portunus-passwords")
    accounts = Accounts(
        store.accounts,
        Passwords(thread_runner(reactor, hashing)),
        Throttle(reactor),
        reactor,
        operator_token=token,
        setup_file=SetupTokenFile(settings.data_dir),
    )
    AccountsService(accounts, hashing, reactor).setServiceParent(service)
    # Before the listeners: it stops (writing what it holds) as they do,
    # and the store closes after it.
    audit = AuditLog(store.audit, reactor, observer=metrics)
    audit.setServiceParent(service)

    # Before the listeners: strangers on the control port may take at most
    # half of whatever open-file limit the server gets.
    nofile = raise_nofile_limit("server")
    gate = Gate(fit_to_descriptors(settings.control_limits, nofile), reactor, observer=metrics)
    gate.setServiceParent(service)
    control = control_factory(
        server_tls_options(cert.cert_pem, cert.key_pem),
        gate,
        lambda ticket: ServerSession(plane, reactor, ticket),
    )
    _listener(reactor, settings, "control", control).setServiceParent(service)

    api = make_api(
        plane,
        accounts,
        reactor,
        audit,
        observer=metrics,
        public_origin=settings.operator_http_public_origin,
        services={
            audit_api.ROUTES: audit_api.AuditReader(audit, store.audit, reactor),
            settings_api.ROUTES: settings_api.AdvertisedSettings.of(
                plane,
                cert_pem=cert.cert_pem,
                seed=advertised.with_port(control_port) if advertised is not None else None,
                control_port=control_port,
            ),
            metrics_api.ROUTES: metrics,
        },
    )
    site = apply_limits(QuietSite(api.resource(), request_event="api.request"))
    _listener(reactor, settings, "operator_http", site).setServiceParent(service)

    metrics_site = QuietSite(MetricsRoot(metrics))
    _listener(reactor, settings, "metrics", metrics_site).setServiceParent(service)

    reactor.callWhenRunning(
        lambda: log.info(
            "portunus-server {version} serving: control {control} (TLS, pin sha256:"
            "{fingerprint}), operator API http://{http}, metrics http://{metrics}/metrics; "
            "data dir {data_dir}; "
            "operator bearer {bearer_source}",
            event="server.started",
            version=__version__,
            control=str(settings.control_listen),
            fingerprint=cert.fingerprint,
            http=str(settings.operator_http_listen),
            metrics=str(settings.metrics_listen),
            data_dir=settings.data_dir,
            advertised_endpoint=endpoint,
            bearer_source=f"in {token_file}" if token_file else "from server.toml",
            cert_generated=cert.generated,
        )
    )
    return service
