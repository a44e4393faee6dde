"""Start a server as a child process on a free port, as a user would, and stop it with SIGTERM.

Shared by the benchmarks (the service, and the bare aiohttp server it is compared with) and by the
tests (tests/helpers.py), so both start the service the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 5) -> int | None:
    """Status of a GET, or None when nothing answers (not listening yet, connection reset)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class ServerProcess:
    """`python -m MODULE --host 127.0.0.1 --port PORT ARGS...`, its output in a log file."""

    def __init__(
        self,
        module: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
        ready_path: str = "/readyz",
        command: Sequence[str] | None = None,
    ) -> None:
        self.module = module
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = Path(full_env.get("TMPDIR", "/tmp")) / f"{module}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            # `command` runs the module some other way (the container's entrypoint script, say).
            [*(command or (sys.executable, "-m", module)), "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=cwd,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180, poll: float = 0.1) -> float:
        """Wait until the ready path answers 200; returns the seconds since the process was started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log()}")
            if http_status(self.base_url + self.ready_path) == 200:
                return time.monotonic() - self.started
            time.sleep(poll)
        raise TimeoutError(f"{self.module} not ready after {timeout} s:\n{self.log()}")

    def peak_rss_bytes(self) -> int | None:
        """The process's peak resident memory so far (Linux VmHWM); None where unknown or exited."""
        return self.memory_bytes().get("VmHWM")

    def memory_bytes(self) -> dict[str, int]:
        """Resident memory now, by kind (Linux): VmHWM (peak), VmRSS, RssAnon (the process's own) and
        RssFile (mapped files, such as OpenVINO's weights: clean pages the kernel can reclaim)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return {}
        fields = ("VmHWM:", "VmRSS:", "RssAnon:", "RssFile:")
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith(fields)}

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait (SIGKILL after `timeout`); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ServiceProcess(ServerProcess):
    """`python -m service` (or a `command` that runs it) on a free port."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO, command: Sequence[str] | None = None
    ) -> None:
        super().__init__("service", args, env, cwd, ready_path="/readyz", command=command)


@contextlib.contextmanager
def running_service(args: list[str], ready_timeout: float = 180, **kwargs: Any) -> Iterator[ServiceProcess]:
    """`python -m service ARGS`, ready to serve, for a block; stopped with SIGTERM after it, which must exit 0."""
    service = ServiceProcess(args, **kwargs)
    try:
        service.wait_ready(ready_timeout)
        yield service
    finally:
        code = service.stop()
    if code != 0:  # reached only when the block itself did not raise
        raise RuntimeError(f"the service did not exit cleanly ({code}):\n{service.log()[-3000:]}")
