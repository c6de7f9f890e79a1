"""A real, test-local Slurm cluster: munged, slurmctld and two simulated nodes ``n1`` and ``n2``.

Both nodes are ``slurmd -N <name>`` daemons on this machine (``NodeAddr=127.0.0.1``, one port each),
so a ``--nodes=2`` job gets a genuine two-node allocation: two batch-step environments, ``srun``
fanning out one task per node, ``SLURM_NODEID`` 0 and 1, ``scontrol show hostnames`` -> n1, n2.
Configuration, spool, state and logs live in one temporary folder; nothing system-wide is edited
except what the Debian packages install and the ``/run/munge`` socket folder munged needs.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sma.train.env import free_port

NODES = ("n1", "n2")
PACKAGES = ("slurm-wlm", "munge")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
# Jobs end in one of these; anything else is still on its way (PENDING, RUNNING, REQUEUED, ...).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or started here; the message says why (used as the skip reason)."""


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def ensure_installed() -> None:
    """Install Debian's slurm-wlm and munge when their daemons are missing (needs root and apt-get)."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm is not installed and installing it needs root (CI runs as root)")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and there is no apt-get to install slurm-wlm/munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed:\n{(done.stdout + done.stderr)[-2000:]}")


@dataclass
class SlurmCluster:
    """Daemons of one test cluster. ``start()`` brings every node to ``idle``; ``stop()`` ends them."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _logs: dict[int, Path] = field(default_factory=dict)  # pid -> its stdout/stderr file

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def write_conf(self) -> None:
        host = socket.gethostname()
        for sub in ("state", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=smatest",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            # As on many production sites: an extern step holds each node for the job's lifetime.
            "PrologFlags=Contain",
            # Short KillWait so a cancelled or requeued job frees its nodes quickly.
            "KillWait=5",
            # A requeued job waits cred_expire seconds (default 120) before it may start again, and
            # then for the next scheduling pass (every 60 s by default).
            "AuthInfo=cred_expire=5",
            "SchedulerParameters=sched_interval=1,bf_interval=1",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}/%n",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run'}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log'}/slurmd-%n.log",
        ]
        cpus = os.cpu_count() or 1
        for name in NODES:
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
                f"CPUs={cpus} RealMemory=1000 State=UNKNOWN"
            )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _spawn(self, cmd: list[str], log: str, **kwargs) -> None:
        with open(self.root / "log" / log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        self._procs.append(proc)
        self._logs[proc.pid] = self.root / "log" / log

    def _start_munge(self) -> None:
        """munged must run as the munge user; reuse one that is already serving the socket."""
        if MUNGE_SOCKET.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return
        MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
        self._spawn(["munged", "-F", "--force"], "munged.log", user="munge", group="munge")
        self._wait_for(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0,
                       "munged to answer", "munged.log")

    def start(self, timeout: float = 60.0) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting munged and slurmd needs root (CI runs as root)")
        self.write_conf()
        self._start_munge()
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out", env=self.env)
        for name in NODES:
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
            self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", name], f"slurmd-{name}.out", env=self.env)
        self._wait_for(lambda: self.node_states() == {"idle"}, "both nodes to be idle", "slurmctld.log", timeout)

    def _wait_for(self, ready: Callable[[], bool], what: str, log: str, timeout: float = 60.0) -> None:
        """Poll ``ready`` until it holds; on a daemon's exit or the timeout, stop all and say why."""
        deadline = time.monotonic() + timeout
        dead: list[subprocess.Popen] = []
        while not dead and time.monotonic() < deadline:
            if ready():
                return
            dead = [p for p in self._procs if p.poll() is not None]
            time.sleep(0.3)
        logs = [self._logs[p.pid] for p in dead] or [self.root / "log" / log]
        details = "\n".join(f"--- {path}:\n{_tail(path)}" for path in logs)
        self.stop()
        reason = f"{[' '.join(p.args) for p in dead]} exited" if dead else f"not within {timeout:.0f} s"
        raise SlurmUnavailable(f"waiting for {what}: {reason}\n{details}")

    def stop(self) -> None:
        """Cancel what is still queued or running, then end the daemons this cluster started."""
        if self._procs and self.conf.exists():
            # slurmstepd and the job's processes outlive slurmd by design: cancel the jobs first.
            self.run("scancel", f"--user={getpass.getuser()}", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", "-o", "%i", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.3)
        for p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self._procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()

    def run(self, *cmd: str, check: bool = True) -> str:
        """Run a Slurm client command against this cluster and return its stdout."""
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def node_states(self) -> set[str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return {s.strip().rstrip("*") for s in out.split()} or {"none"}

    def submit(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """``sbatch --parsable ARGS``; returns the job id."""
        done = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})},
                              cwd=cwd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, NodeList, ExitCode, StdOut, ...)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, timeout: float) -> dict[str, str]:
        """Poll until the job reaches a final state (faster than ``sbatch --wait``); returns its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            time.sleep(0.5)
        self.run("scancel", str(job_id), check=False)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f}s: {info}")
