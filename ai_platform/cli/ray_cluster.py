"""A local Ray head for level 2 (and for tests): started in its own session, stopped by its PIDs.

``ray stop`` would end every Ray process of this user on the machine; ending only the
processes of the session we started leaves anyone else's cluster alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ai_platform.core.ports import free_port
from ai_platform.core.procs import session_members

# Ray replaces 127.0.0.1 (and "localhost") by the machine's network address, but keeps any other loopback address
# as given: a head on this one keeps the cluster, and all its traffic, on loopback.
LOOPBACK_HEAD = "127.0.0.3"


@dataclass
class RayHead:
    session_id: int
    gcs_address: str
    dashboard_url: str
    temp_dir: str

    def pids(self) -> list[int]:
        return session_members(self.session_id)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM every process of the head's session, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + timeout / 2
            while self.pids() and time.time() < deadline:
                time.sleep(0.2)
            if not self.pids():
                return


def start_local_head(num_cpus: int, temp_dir: str, timeout: float = 90,
                     resources: dict[str, float] | None = None, node_ip: str = LOOPBACK_HEAD) -> RayHead:
    """``ray start --head`` on free loopback ports; returns once the Jobs API answers.

    ``resources`` are custom resources the head offers (a kind of node that tasks can ask for). Other nodes on
    this machine join it from other loopback addresses (``127.0.0.2``)."""
    ray = Path(sys.executable).with_name("ray")
    ray_cmd = str(ray) if ray.exists() else shutil.which("ray") or "ray"
    gcs_port, dashboard_port = free_port(), free_port()
    args = [
        ray_cmd, "start", "--head", f"--num-cpus={num_cpus}", f"--port={gcs_port}", f"--node-ip-address={node_ip}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
        "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
        *([f"--resources={json.dumps(resources)}"] if resources else []),
    ]
    # A loopback head: token authentication stays off unless asked for (RAY_AUTH_MODE=token), also when a token
    # from another cluster sits in ~/.ray, which Ray would otherwise turn on by itself.
    env = {"RAY_AUTH_MODE": "disabled", **os.environ}
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    head = RayHead(proc.pid, f"{node_ip}:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", temp_dir)
    output, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        head.stop()
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{output[-3000:]}")
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2) as response:
                if response.status == 200:
                    return head
        except OSError:
            time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"Ray dashboard at {head.dashboard_url} did not answer within {timeout}s")
