"""Storage back ends for the dashboard: an embedded file store, or labml-app's MongoDB.

labml-app keeps everything in ``labml_db`` models and indexes. Its only shipped
initialiser (``labml_app.db.init_mongo_db``) insists on a running MongoDB, but
``labml_db`` also ships file drivers (``FileDbDriver``, ``FileIndexDbDriver``)
that implement the same interface. :func:`init_file_store` wires every labml-app
model and index to those drivers, so the app runs unchanged on a plain folder:

    DIR/models/<ModelName>/<ModelName>:<uuid>.pkl   one pickle per model instance
    DIR/indexes/<IndexName>.json                    one JSON dict per index

Models are pickled, as labml-app's own Mongo driver does (``MongoPickleDbDriver``):
they hold numpy arrays and sets that JSON cannot represent.

The stock file drivers truncate a file before rewriting it, so a dashboard killed
mid-write could leave an empty model behind; the subclasses below write to a
temporary file and ``os.replace`` it, which is atomic on POSIX.

Reads never write: labml-app's read handlers create records for any id they are asked about and rewrite the
user and project on every request. Inside :func:`read_only` (the request guard enters it for every GET) the
drivers drop saves, deletes and index updates, so a read leaves the folder as it was (and works on a full disk).
labml-app's MongoDB drivers (``--mongo``) are its own and still write on reads.

The models are pickles: whoever can write into the data folder can run code in the dashboard.
:func:`init_file_store` refuses a folder that other users can write to.
"""

import contextlib
import contextvars
import fcntl
import os
import socket
import stat
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

from labml_db import Index, Model
from labml_db.driver.file import FileDbDriver
from labml_db.index_driver.file import FileIndexDbDriver
from labml_db.serializer.json import JsonSerializer
from labml_db.serializer.pickle import PickleSerializer

from configs.checkpoint import atomic_write_bytes

STORE_FORMAT = 1
"""Bumped if the on-disk layout changes; written to ``DIR/store.json``."""


class StoreError(RuntimeError):
    """The dashboard cannot use the requested storage (message is user facing)."""


def _atomic_write(path: Path, data, is_bytes: bool) -> None:
    """Write ``data`` to ``path`` so a reader never sees a half-written file (no fsync: a killed
    dashboard process loses nothing it wrote, since the page cache outlives it; the models are rewritten every
    few seconds, and syncing each would cost more than a power cut could)."""
    atomic_write_bytes(path, lambda f: f.write(data if is_bytes else data.encode()), sync=False)


_READ_ONLY = contextvars.ContextVar('dashboard_read_only', default=False)


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Within this (in this task or thread only), the file drivers write nothing (see the module doc)."""
    token = _READ_ONLY.set(True)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def is_read_only() -> bool:
    return _READ_ONLY.get()


class AtomicFileDbDriver(FileDbDriver):
    """``labml_db``'s ``FileDbDriver`` with atomic (write + rename) saves, none inside :func:`read_only`."""

    def save_dict(self, key: str, data) -> None:
        if _READ_ONLY.get():
            return
        path = self._db_path / f'{key}.{self._serializer.file_extension}'
        _atomic_write(path, self._serializer.to_string(data), self._serializer.is_bytes)

    def delete(self, key: str) -> None:
        if _READ_ONLY.get():
            return
        path = self._db_path / f'{key}.{self._serializer.file_extension}'
        try:
            path.unlink()
        except FileNotFoundError:  # deleting twice is harmless (labml-app does it on some paths)
            pass

    def get_all(self):
        # skip our temporary files (".<name>.tmp") left by a crash mid-write
        return [k for k in super().get_all() if not k.startswith('.')]


class AtomicFileIndexDbDriver(FileIndexDbDriver):
    """``labml_db``'s ``FileIndexDbDriver`` (a cached dict in a JSON file) with atomic saves; inside
    :func:`read_only` neither the file nor the cached dict changes (an entry for a model that was not saved
    would dangle)."""

    def set(self, index_key: str, model_key: str) -> None:
        if not _READ_ONLY.get():
            super().set(index_key, model_key)

    def delete(self, index_key: str) -> None:
        if not _READ_ONLY.get():
            super().delete(index_key)

    def _save_cache(self) -> None:
        _atomic_write(self._index_path, self._serializer.to_string(self._cache), False)

    def get_all(self):
        self._load_cache()
        return list(self._cache.keys())


def _labml_app_schema():
    """labml-app's models and indexes (importing ``labml_app.db`` registers them), and the dashboard's own
    (:mod:`.histograms`)."""
    from labml_app import db
    from . import histograms
    return db.models + histograms.MODELS, db.indexes + histograms.INDEXES


def _create_default_projects() -> None:
    """The two shared projects labml-app expects (same as the end of ``init_mongo_db``)."""
    from labml_app import settings
    from labml_app.db import project
    project.create_project(settings.FLOAT_PROJECT_TOKEN, 'float project')
    project.create_project(settings.SAMPLES_PROJECT_TOKEN, 'samples project')


class _DirLock:
    """An exclusive ``flock`` on ``DIR/.lock``: one dashboard process per data folder.

    Two processes would each cache the JSON indexes in memory and overwrite each
    other's updates, so a second dashboard on the same folder is refused.
    """

    def __init__(self, path: Path):
        self.path = path
        self._f = open(str(path), 'a+')
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise StoreError(f'another dashboard is already using {path.parent} '
                             f'(stop it, or pass a different --data folder)')
        self._f.seek(0)
        self._f.truncate()
        self._f.write(str(os.getpid()))
        self._f.flush()


_lock: Optional[_DirLock] = None


def check_permissions(data_dir: Path) -> Optional[str]:
    """Refuses (:class:`StoreError`) a data folder in which another user could plant a pickle: the folder, or
    anything in it, writable by everyone or owned by another user. Returns a warning when some of it is
    group-writable (the members of that group could do the same), else None."""
    me = os.geteuid()
    group_writable = []
    paths = [data_dir]
    for folder, dirs, files in os.walk(data_dir):  # symbolic links are checked, not followed
        paths += [Path(folder, name) for name in dirs + files]
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:  # removed meanwhile
            continue
        if st.st_uid != me:
            raise StoreError(f'{path} belongs to another user (uid {st.st_uid}): the dashboard loads pickles '
                             f'from --data, which runs code from them; use a folder of your own')
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_mode & stat.S_IWOTH:
            raise StoreError(f'{path} is writable by every user (mode {stat.filemode(st.st_mode)}): the '
                             f'dashboard loads pickles from --data, which runs code from them; '
                             f'chmod -R o-w {data_dir} or use another folder')
        if st.st_mode & stat.S_IWGRP:
            group_writable.append(path)
    if group_writable:
        return (f'{group_writable[0]} is writable by its group (with {len(group_writable) - 1} more in --data): its members '
                f'can run code in the dashboard through the pickles it loads; chmod -R g-w {data_dir} unless '
                f'you trust them')
    return None


def init_file_store(data_dir: Path, warn: Optional[Callable[[str], None]] = None) -> Path:
    """Point all labml-app models and indexes at files under ``data_dir``.

    Returns the resolved folder. Raises :class:`StoreError` if the folder cannot
    be created, is locked by another dashboard process, or other users can write to it
    (:func:`check_permissions`; a group-writable one is passed to ``warn``).
    """
    global _lock
    data_dir = Path(data_dir).expanduser().resolve()
    try:
        (data_dir / 'models').mkdir(parents=True, exist_ok=True)
        (data_dir / 'indexes').mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f'cannot create data folder {data_dir}: {e.strerror}') from e
    warning = check_permissions(data_dir)
    if warning and warn is not None:
        warn(warning)
    if _lock is None or _lock.path != data_dir / '.lock':
        _lock = _DirLock(data_dir / '.lock')
    meta = data_dir / 'store.json'
    if not meta.exists():
        _atomic_write(meta, f'{{"format": {STORE_FORMAT}, "backend": "labml_db file drivers"}}\n',
                      False)

    models, indexes = _labml_app_schema()
    pickle, json = PickleSerializer(), JsonSerializer()
    Model.set_db_drivers([AtomicFileDbDriver(pickle, m, data_dir / 'models' / m.__name__)
                          for m in models])
    Index.set_db_drivers([AtomicFileIndexDbDriver(json, i, data_dir / 'indexes' / f'{i.__name__}.json')
                          for i in indexes])
    _create_default_projects()
    return data_dir


def parse_mongo_address(address: str) -> Tuple[str, int]:
    """``'host'``, ``'host:port'`` or ``''`` (localhost) -> ``(host, port)``."""
    address = (address or '').strip()
    if address.startswith('mongodb://'):
        address = address[len('mongodb://'):].rstrip('/')
    host, _, port = address.rpartition(':') if ':' in address else (address, '', '')
    host = host or 'localhost'
    try:
        return host, int(port) if port else 27017
    except ValueError:
        raise StoreError(f'invalid MongoDB address {address!r} (expected HOST[:PORT])') from None


def init_mongo_store(address: str = '') -> str:
    """Use labml-app's native MongoDB storage (``labml_app.db.init_mongo_db``).

    A quick TCP probe runs first: pymongo would otherwise wait its 30 s server
    selection timeout before labml-app reports that MongoDB is missing.
    """
    host, port = parse_mongo_address(address)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as e:
        raise StoreError(f'MongoDB is not reachable at {host}:{port} ({e.strerror or e}); '
                         f'drop --mongo to use the embedded file store') from None
    from labml_app import db
    from . import histograms
    # init_mongo_db sets drivers for the models and indexes in these lists
    db.models.extend(m for m in histograms.MODELS if m not in db.models)
    db.indexes.extend(i for i in histograms.INDEXES if i not in db.indexes)
    try:
        db.init_mongo_db(host, port)
    except Exception as e:  # labml-app raises a bare Exception with an explanation
        raise StoreError(str(e)) from e
    return f'mongodb://{host}:{port}/labml'
