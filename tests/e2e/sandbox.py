"""A throw-away systemd container for end-to-end tests of MessageHub's campaign units.

The container boots the machine's own systemd on an overlay of the host root whose
writable layer is a tmpfs. The overlay and the container live in a private mount and
PID namespace. So only writes to the caller's bind mounts reach the host's file
systems, and the kernel ends every process of the container when systemd-nspawn
ends. The module does not use pytest.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SYSTEMD = Path("/lib/systemd/systemd")
REQUIRED_TOOLS = ("systemd-nspawn", "nsenter", "unshare", "timeout", "runuser")

# Commands on the host and in the container get this environment, not the caller's,
# so variables set by pytest or the virtualenv do not change what the commands do.
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}

READY_STATES = frozenset({"running", "degraded"})
# From these states systemd never goes on to "running" or "degraded".
FAILED_STATES = frozenset({"maintenance", "stopping"})

# Seconds given to the wrapper, after the container is gone, to exit by itself.
REAP_TIMEOUT = 10.0
# Seconds `timeout` waits after its SIGTERM before it sends SIGKILL.
KILL_AFTER = 10

# Runs as PID 1 of a new PID namespace with a private mount namespace, then becomes
# systemd-nspawn. The kernel releases these mounts when the last process of the
# namespace exits, and they never appear in the host's mount table.
# nspawn keeps lock files and a directory per machine under /run/systemd/nspawn and
# leaves them behind when it is killed. The tmpfs on /run keeps them off hosts whose
# /run is on disk.
BOOT_SCRIPT = r"""
set -eu
base=$1
size=$2
shift 2
mount -t tmpfs -o mode=0755,size=16m messagehub-run /run
mount -t tmpfs -o "mode=0755,size=$size" messagehub-sandbox "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
exec systemd-nspawn --directory="$base/root" "$@"
"""

# Creates the parent directories, writes standard input to $1 and sets mode $2.
WRITE_SCRIPT = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod -- "$2" "$1"'


class SandboxError(RuntimeError):
    """The container failed to boot, to stop, or to leave the host clean."""


class ContainerCommandError(subprocess.CalledProcessError):
    """A command run inside the container exited with a non-zero status."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\nstderr: {stderr[-2000:]}"


@dataclass(frozen=True)
class Availability:
    """Whether this machine can boot a SystemdContainer, with the reason if not."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


class SystemdContainer:
    """A real systemd booted in a throw-away container, used as a context manager.

    `binds` are host directories mounted read-write at the same path inside the
    container. `lifetime` (seconds) is a hard limit enforced by `timeout`, so the
    container ends even if the Python process that started it dies.
    """

    def __init__(
        self,
        binds: Sequence[str | os.PathLike[str]] = (),
        *,
        name: str | None = None,
        lifetime: float = 600.0,
        boot_timeout: float = 60.0,
        shutdown_timeout: float = 20.0,
        tmpfs_size: str = "1G",
    ) -> None:
        self.binds = [_checked_bind(path) for path in binds]
        self.name = name or f"messagehub-{secrets.token_hex(4)}"
        self.lifetime = lifetime
        self.boot_timeout = boot_timeout
        self.shutdown_timeout = shutdown_timeout
        self.tmpfs_size = tmpfs_size

        self.scratch_dir: Path | None = None
        self.nspawn_pid: int | None = None
        self.leader_pid: int | None = None
        self.boot_seconds: float | None = None
        self.shutdown_seconds: float | None = None

        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None
        self._nspawn_fd: int | None = None
        self._leader_fd: int | None = None
        self._namespaces: set[str] = set()

    @classmethod
    def available(cls) -> Availability:
        """Check for root, the tools and the systemd binary that a boot needs."""
        if os.geteuid() != 0:
            return Availability(False, f"systemd-nspawn needs root, but this process runs as uid {os.geteuid()}")

        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            return Availability(False, f"missing on PATH: {', '.join(missing)} (Debian package systemd-container, util-linux, coreutils)")

        if not os.access(SYSTEMD, os.X_OK):
            return Availability(False, f"{SYSTEMD} is missing or not executable (Debian package systemd)")

        return Availability(True, "root, systemd-nspawn and systemd are present")

    def __enter__(self) -> SystemdContainer:
        started = time.monotonic()
        self.start()
        try:
            self.wait_until_running()
        except BaseException:
            self.stop()
            raise

        self.boot_seconds = time.monotonic() - started
        log.info("booted container %s in %.1f s", self.name, self.boot_seconds)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start systemd-nspawn and find the container's PID 1, without waiting for the boot."""
        if self._process is not None:
            raise SandboxError(f"container {self.name} was already started")

        # mkdtemp adds only letters, digits and '_', so checking the parent is enough.
        _check_overlay_path(Path(tempfile.gettempdir()))
        self.scratch_dir = Path(tempfile.mkdtemp(prefix="messagehub-nspawn-"))
        base = self.scratch_dir / "base"
        base.mkdir()

        self._log_file = self.scratch_dir / "nspawn.log"
        with open(self._log_file, "wb") as output:
            self._process = subprocess.Popen(
                self._wrapper_command(base),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=CLEAN_ENV,
                # Own session and process group, so the fallback kill in stop()
                # reaches only the processes started here.
                start_new_session=True,
            )

        try:
            self._find_processes(time.monotonic() + self.boot_timeout)
        except BaseException:
            self.stop()
            raise

    def wait_until_running(self, timeout: float | None = None) -> str:
        """Wait until `systemctl is-system-running` reports running or degraded, and return it."""
        limit = self.boot_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        state = ""
        while time.monotonic() < deadline:
            self._check_nspawn_alive()
            result = self.run(["systemctl", "is-system-running"], check=False, timeout=limit)
            state = result.stdout.strip()
            if state in READY_STATES:
                return state

            if state in FAILED_STATES:
                raise SandboxError(f"container {self.name} boot failed: system state {state!r}\n{self._log_tail()}")

            time.sleep(0.1)

        raise SandboxError(f"container {self.name} timed out after {limit} s while booting (last state {state!r})\n{self._log_tail()}")

    def run(
        self,
        cmd: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container, as root or as `user`, and capture its text output.

        On timeout only the host-side nsenter is killed, so the command may go on
        running inside the container until the container stops.
        """
        # The pidfd check keeps nsenter from entering another process that reused
        # the PID of a container that already ended. A PID reused in the instant
        # between this check and nsenter's own lookup is not caught.
        if self.leader_pid is None or self._leader_fd is None or _wait_for_exit(self._leader_fd, 0):
            raise SandboxError(f"container {self.name} is not running")

        argv = ["nsenter", f"--target={self.leader_pid}", "--all", "--"]
        if user is not None:
            argv += ["runuser", "-u", user, "--"]
        argv += list(cmd)

        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV, check=False)
        if check and result.returncode != 0:
            raise ContainerCommandError(result.returncode, list(cmd), result.stdout, result.stderr)

        return result

    def write_file(self, path: str, text: str, *, mode: int = 0o644) -> None:
        """Write a text file inside the container as root, creating its parent directories."""
        # Writing through /proc/PID/root from the host would resolve absolute
        # symlinks against the host's root, so the write runs inside instead.
        if not path.startswith("/"):
            raise ValueError(f"container path must be absolute: {path!r}")

        self.run(["sh", "-c", WRITE_SCRIPT, "sh", path, f"{mode:o}"], input=text)

    def journal(self, unit: str) -> str:
        """Return the message text of every journal entry of `unit`, one per line."""
        result = self.run(["journalctl", "--no-pager", "--quiet", "--output=cat", f"--unit={unit}"])
        return result.stdout

    def unit_properties(self, unit: str, *names: str) -> dict[str, str]:
        """Return the named properties of `unit` (e.g. ActiveState, MainPID, NRestarts) as strings."""
        result = self.run(["systemctl", "show", f"--property={','.join(names)}", "--", unit])
        properties: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, _, value = line.partition("=")
            properties[key] = value

        return properties

    def stop(self) -> None:
        """Power the container off, kill what is left of it, and remove its scratch directory.

        Raises SandboxError, and keeps the scratch directory, when a process of the
        container or a mount under the scratch directory is still there afterwards.
        """
        if self._process is None:
            return

        started = time.monotonic()
        if not self._power_off():
            self._kill_nspawn()
        self._reap_wrapper()
        self.shutdown_seconds = time.monotonic() - started
        log.info("stopped container %s in %.1f s", self.name, self.shutdown_seconds)

        self._check_nothing_left()
        self._remove_scratch_dir()

    def remaining_processes(self) -> list[int]:
        """Return the host PIDs of processes still in the container's PID namespaces."""
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and _pid_namespace(int(entry.name)) in self._namespaces:
                pids.append(int(entry.name))

        return pids

    def _wrapper_command(self, base: Path) -> list[str]:
        nspawn_args = [
            "--boot",
            "--private-network",
            # The host runs neither systemd nor systemd-machined, so nspawn must not
            # register the machine or ask for a scope unit.
            "--register=no",
            "--keep-unit",
            # The container shares the host's machine ID, so it must not link journals.
            "--link-journal=no",
            f"--machine={self.name}",
            "--console=read-only",
        ]
        nspawn_args += [f"--bind={path}" for path in self.binds]

        namespace = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation=private"]
        script = ["sh", "-c", BOOT_SCRIPT, "messagehub-boot", str(base), self.tmpfs_size]
        return ["timeout", f"--kill-after={KILL_AFTER}", f"{self.lifetime}s", *namespace, *script, *nspawn_args]

    def _find_processes(self, deadline: float) -> None:
        # Process tree: timeout -> unshare -> systemd-nspawn -> systemd (the container's PID 1).
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SandboxError(f"container {self.name} exited during boot with status {self._process.returncode}\n{self._log_tail()}")

            nspawn = _find_descendant(self._process.pid, "systemd-nspawn")
            leader = _find_leader(nspawn) if nspawn is not None else None
            if nspawn is not None and leader is not None:
                self._adopt(nspawn, leader)
                return

            time.sleep(0.05)

        raise SandboxError(f"container {self.name} timed out: no systemd started within {self.boot_timeout} s\n{self._log_tail()}")

    def _adopt(self, nspawn: int, leader: int) -> None:
        # A pidfd keeps referring to this process even if its PID is reused later.
        self._nspawn_fd = os.pidfd_open(nspawn)
        self._leader_fd = os.pidfd_open(leader)
        self.nspawn_pid = nspawn
        self.leader_pid = leader
        self._namespaces = {ns for ns in (_pid_namespace(nspawn), _pid_namespace(leader)) if ns}

    def _check_nspawn_alive(self) -> None:
        if self._nspawn_fd is not None and _wait_for_exit(self._nspawn_fd, 0):
            raise SandboxError(f"container {self.name} exited during boot\n{self._log_tail()}")

    def _power_off(self) -> bool:
        if self._nspawn_fd is None:
            return False

        # Already ended, for example at its lifetime limit.
        if _wait_for_exit(self._nspawn_fd, 0):
            return True

        try:
            self.run(["systemctl", "poweroff"], check=False, timeout=self.shutdown_timeout)
        except (subprocess.TimeoutExpired, SandboxError) as error:
            log.warning("error asking container %s to power off: %s", self.name, error)
            return False

        if _wait_for_exit(self._nspawn_fd, self.shutdown_timeout):
            return True

        log.warning("container %s did not power off within %s s, killing it", self.name, self.shutdown_timeout)
        return False

    def _kill_nspawn(self) -> None:
        # Because nspawn is PID 1 of the wrapper's PID namespace, the kernel kills
        # every process of the container when nspawn dies.
        if self._nspawn_fd is not None:
            _send_signal(self._nspawn_fd, signal.SIGKILL)
            _wait_for_exit(self._nspawn_fd, REAP_TIMEOUT)

    def _reap_wrapper(self) -> None:
        process = self._process
        assert process is not None
        try:
            process.wait(timeout=REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Killing unshare makes the kernel kill nspawn too (unshare --kill-child).
            log.warning("wrapper of container %s still running, killing its process group %d", self.name, process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=REAP_TIMEOUT)

        for pidfd in (self._nspawn_fd, self._leader_fd):
            if pidfd is not None:
                os.close(pidfd)
        self._nspawn_fd = None
        self._leader_fd = None
        self._process = None

    def _check_nothing_left(self) -> None:
        assert self.scratch_dir is not None
        leftovers = self.remaining_processes()
        mounts = _host_mounts_under(self.scratch_dir)
        if leftovers or mounts:
            raise SandboxError(
                f"container {self.name} left processes {leftovers} and host mounts {mounts}. "
                f"Its scratch directory {self.scratch_dir} was kept for inspection."
            )

    def _remove_scratch_dir(self) -> None:
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir)
        self.scratch_dir = None

    def _log_tail(self, lines: int = 30) -> str:
        if self._log_file is None or not self._log_file.exists():
            return "(no nspawn output)"

        text = self._log_file.read_text(errors="replace")
        return "nspawn output:\n" + "\n".join(text.splitlines()[-lines:])


def _checked_bind(path: str | os.PathLike[str]) -> str:
    absolute = os.path.abspath(path)
    if not os.path.isdir(absolute):
        raise ValueError(f"bind path is not a directory: {absolute}")

    # nspawn reads ':' in --bind as the separator of source, destination and options.
    if ":" in absolute:
        raise ValueError(f"bind path must not contain ':': {absolute}")

    return absolute


def _check_overlay_path(directory: Path) -> None:
    # The overlay's mount options are a comma-separated list with ':' between lower layers.
    if any(char in str(directory) for char in ",: \\"):
        raise SandboxError(f"invalid temporary directory {directory}: overlay mount options cannot contain ',', ':', ' ' or '\\'. Set TMPDIR to a plain path.")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []

    return [int(child) for child in text.split()]


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _find_descendant(root: int, comm: str) -> int | None:
    pending = _children(root)
    while pending:
        pid = pending.pop(0)
        if _comm(pid) == comm:
            return pid

        pending += _children(pid)

    return None


def _find_leader(nspawn: int) -> int | None:
    # Until the child calls exec it is still a copy of nspawn, and afterwards its comm is "systemd".
    for pid in _children(nspawn):
        if _comm(pid) == "systemd":
            return pid

    return None


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        # Reading needs ptrace access. Root with CAP_SYS_PTRACE has it to every
        # process the container starts, so an unreadable process is not one of them.
        return None


def _wait_for_exit(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def _send_signal(pidfd: int, signum: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass  # The process has already exited, which is what the caller wants.


def _host_mounts_under(directory: Path) -> list[str]:
    prefix = str(directory)
    mounts = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            mount_point = _unescape_mountinfo(line.split()[4])
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                mounts.append(mount_point)

    return mounts


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as three-digit octal escapes.
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)

    return field
