"""``python -m experiments.dashboard``: start the labml dashboard.

    python -m experiments.dashboard [--host 127.0.0.1] [--port 5005] [--data DIR] [--token [TOKEN]]
    python -m experiments.dashboard --mongo [HOST[:PORT]]
    python -m experiments.dashboard import RUN [RUN ...] [--url URL]   (runs trained without it: .importer)

Open the printed URL in a browser; point runs at it with
``python -m experiments.evidence_mnist dashboard=http://127.0.0.1:5005``.
Exit status: 0 after Ctrl-C / SIGTERM, 2 on a usage or start-up error
(port in use, data folder locked or writable by other users, MongoDB unreachable,
``--host`` beyond this machine without ``--token``).

There is no login. On 127.0.0.1 web pages cannot reach it (:mod:`.security`), but every user of this
machine can. ``--token`` adds a shared secret: runs must send it
(``dashboard=http://HOST:PORT/?token=TOKEN``, or ``DASHBOARD_TOKEN=TOKEN`` in the run's environment) and
browsers open ``http://HOST:PORT/?token=TOKEN`` once (it is kept in a cookie). Without a value a random
token is made and printed. Listening beyond this machine (``--host 0.0.0.0``) requires it.
"""

import argparse
import logging
import secrets
import signal
import socket
import string
import sys
from pathlib import Path
from typing import NoReturn

from . import security

DEFAULT_PORT = 5005
DEFAULT_DATA = Path(__file__).resolve().parents[2] / 'data' / 'dashboard'


def _parse_args(argv):
    if list(argv or [])[:1] == ['import']:  # `python -m experiments.dashboard import RUN ...`
        from .importer import parse_args
        return parse_args(list(argv)[1:])
    p = argparse.ArgumentParser(
        prog='python -m experiments.dashboard',
        description='Watch labml runs live: the labml-app dashboard with an embedded file store '
                    '(no database server) and no internet access needed.')
    p.add_argument('--host', default='127.0.0.1',
                   help='address to bind (default: 127.0.0.1, this machine only; another address, such as '
                        '0.0.0.0, requires --token)')
    p.add_argument('--port', type=int, default=DEFAULT_PORT,
                   help=f'port to listen on (default: {DEFAULT_PORT}; 0 picks a free port)')
    p.add_argument('--data', type=Path, default=DEFAULT_DATA, metavar='DIR',
                   help=f'folder of the embedded store; kept across restarts (default: {DEFAULT_DATA})')
    p.add_argument('--mongo', nargs='?', const='localhost:27017', default=None, metavar='HOST[:PORT]',
                   help="use labml-app's native MongoDB storage instead of the file store "
                        '(default address: localhost:27017)')
    p.add_argument('--token', nargs='?', const='', default=None, metavar='TOKEN',
                   help='accept only runs and browsers that send this shared secret (without a value: a random '
                        'one, printed); runs: dashboard=http://HOST:PORT/?token=TOKEN or DASHBOARD_TOKEN=TOKEN')
    p.add_argument('--max-body-mb', type=float, default=16.0, metavar='MB',
                   help='largest request body accepted, in MiB (default 16; larger ones get 413)')
    p.add_argument('--read-timeout', type=float, default=None, metavar='S',
                   help='seconds a request has to arrive whole, headers and body, or its connection is closed '
                        '(default 30)')
    p.add_argument('--access-log', action='store_true', help='log every HTTP request')
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f'--port must be in 0..65535, got {args.port}')
    if not 0 < args.max_body_mb <= 1024:
        p.error(f'--max-body-mb must be in (0, 1024], got {args.max_body_mb}')
    if args.read_timeout is not None and not 0 < args.read_timeout <= 3600:
        p.error(f'--read-timeout must be in (0, 3600], got {args.read_timeout}')
    if args.token == '':
        args.token = secrets.token_urlsafe(18)
    if args.token is not None and not all(c in TOKEN_CHARS for c in args.token):
        p.error('--token may hold only ASCII letters, digits and - _ . ~ (it travels in URLs and a cookie)')
    if args.token is None and not security.is_loopback(args.host):
        p.error(f'--host {args.host} lets other machines in, and the dashboard has no login: add --token '
                f'(a random token is printed; runs then need DASHBOARD_TOKEN or dashboard=...?token=)')
    return args


TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + '-_.~')


class DashboardError(RuntimeError):
    """The dashboard cannot start; the message is user facing (one line, exit code 2)."""


def _fail(message: str) -> NoReturn:
    raise DashboardError(message)


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so "port in use" is one clear line.

    The bound socket is handed to uvicorn, so nothing can take the port in between.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        _fail(f'cannot resolve --host {host!r}: {e.strerror}')
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == 98:  # EADDRINUSE
            _fail(f'port {port} on {host} is already in use (is a dashboard already running? '
                  f'pick another with --port)')
        _fail(f'cannot listen on {host}:{port}: {e.strerror}')
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def host_warning(host: str) -> str:
    """The warning printed for a dashboard listening beyond this machine ('' on loopback; --token is
    required there)."""
    if security.is_loopback(host):
        return ''
    return (f'dashboard: warning: listening on {host}: only runs and browsers with the token get in, but it '
            f'travels in plain HTTP (no TLS): use it on a network you trust')


def _warn(message: str) -> None:
    print(f'dashboard: warning: {message}', file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = _parse_args(argv)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]

    from . import server, storage
    server.set_labml_app_env(args.host, port)
    try:
        if args.mongo is not None:
            store = storage.init_mongo_store(args.mongo)
        else:
            store = str(storage.init_file_store(args.data, warn=_warn))
        app = server.create_app(store, token=args.token, max_body=int(args.max_body_mb * 1024 * 1024),
                                hosts=security.allowed_hosts(args.host, port))
    except storage.StoreError as e:
        sock.close()
        _fail(str(e))

    import uvicorn
    url_host = f'[{host}]' if ':' in host else host
    banner = (f'labml dashboard: http://{url_host}:{port}  (store: {store})\n'
              f'  run table and uncertainty views: http://{url_host}:{port}/view/runs')
    if args.token is not None:
        banner += (f'\n  token required: open http://{url_host}:{port}/?token={args.token} ; '
                   f'runs: dashboard=http://{url_host}:{port}/?token={args.token} (or DASHBOARD_TOKEN={args.token})')

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            print(banner, flush=True)  # printed once the server accepts requests

    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # the guards' one-line warnings (refused requests, cut connections, dropped series) beside uvicorn's
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('dashboard: %(levelname)s: %(message)s'))
    logging.getLogger('experiments.dashboard').addHandler(handler)
    config = uvicorn.Config(
        app, log_level='warning', access_log=args.access_log, timeout_graceful_shutdown=3,
        http=security.guarded_protocol(read_timeout=args.read_timeout or security.READ_TIMEOUT_S),
        limit_concurrency=security.BUSY_CONNECTIONS, timeout_keep_alive=5)
    _Server(config).run(sockets=[sock])
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _entry() -> int:
    if sys.argv[1:2] == ['import']:
        from .importer import main as import_main
        return import_main(sys.argv[2:])
    # SIGTERM stops the dashboard like Ctrl-C: uvicorn shuts down gracefully, then
    # re-raises the signal to the handler installed here, which ends with status 0.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return main()
    except DashboardError as e:
        print(f'dashboard: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == '__main__':
    sys.exit(_entry())
