"""deploy/nginx.conf run by a real nginx as an ordinary process: its whole configuration, pid, logs
and temporary files in a test's directory (nothing written under /etc or /var), its listen port and
its upstream servers moved to free loopback ports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Mapping

from benchmarks.launcher import http_status
from tests.helpers import REPO, free_port

SITE = REPO / "deploy" / "nginx.conf"
# Debian puts nginx in /usr/sbin, which an ordinary user's PATH may lack.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def local_site(site: str, listen_port: int, upstreams: Mapping[str, int]) -> str:
    """`site` listening on 127.0.0.1:listen_port, each upstream `server NAME:PORT` sent to 127.0.0.1 and
    the port given for NAME. Each line must be there exactly once: a changed file fails here, loudly."""
    site, count = re.subn(r"^(\s*)listen\s+\d+;", rf"\g<1>listen 127.0.0.1:{listen_port};", site, flags=re.MULTILINE)
    assert count == 1, "deploy/nginx.conf should have one `listen PORT;`"
    for name, port in upstreams.items():
        site, count = re.subn(rf"^(\s*)server\s+{re.escape(name)}:\d+", rf"\g<1>server 127.0.0.1:{port}", site, flags=re.MULTILINE)
        assert count == 1, f"deploy/nginx.conf should name the upstream {name} once"
    return site


def write_config(directory: Path, site: str) -> Path:
    """A whole nginx.conf around `site` (which goes in the http block, as conf.d/default.conf does)."""
    for name in TEMP_PATHS:
        (directory / name).mkdir(exist_ok=True)
    temp = "\n".join(f"    {name}_temp_path {directory / name};" for name in TEMP_PATHS)
    # Started by root, nginx's workers would switch to `nobody`, who cannot enter a private temporary directory.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    config = directory / "nginx.conf"
    config.write_text(
        f"{user}daemon off;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} info;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n    log_format upstream '$request_method $request_uri $status $upstream_addr';\n"
        f"    access_log {directory / 'access.log'} upstream;\n{temp}\n{site}\n}}\n"
    )
    return config


def nginx_command(directory: Path, config: Path, *args: str) -> list[str]:
    # -e: the error log before the configuration is read (else the compiled-in /var/log/nginx/error.log).
    assert NGINX is not None, "nginx is not installed (make test installs it)"
    return [NGINX, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(config), *args]


class NginxServer:
    """deploy/nginx.conf in front of the given upstreams (name -> loopback port), on a free port."""

    def __init__(self, directory: Path, upstreams: Mapping[str, int]) -> None:
        self.directory = directory
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config = write_config(directory, local_site(SITE.read_text(), self.port, upstreams))
        self.process: subprocess.Popen[bytes] | None = None

    def upstreams(self) -> list[str]:
        """For each request answered so far, in order: the upstream address (127.0.0.1:PORT) that answered it."""
        return [line.split()[-1] for line in (self.directory / "access.log").read_text().splitlines()]

    def log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""

    def __enter__(self) -> NginxServer:
        self.process = subprocess.Popen(nginx_command(self.directory, self.config), stderr=subprocess.STDOUT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while http_status(f"{self.base_url}/healthz") is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"nginx did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown
            self.process.wait(10)
            self.process = None
