"""A throw-away single-node SLURM cluster on this machine, for the tests of ``hydra/launcher=slurm``.

:class:`SlurmCluster` writes a ``slurm.conf`` (this host as the only node, with the CPUs and memory
``slurmd -C`` reports, and one partition) into a temporary directory, and starts there:

- ``munged`` with a freshly generated key (slurm's authentication between the daemons and the commands),
- ``mariadbd`` with an empty database and ``slurmdbd`` on top of it: the accounting storage behind
  ``sacct``. Slurm 22.05 (Debian 12) has no file-based accounting any more (``accounting_storage/filetxt``
  was removed; ``jobcomp/filetxt`` only feeds ``sacct --completion``), and submitit follows its jobs with
  plain ``sacct``: without a database it sees every job as UNKNOWN and only notices the ones that wrote a
  result file,
- ``slurmctld`` and ``slurmd`` (as root: the tests run as root and so do their jobs).

Every daemon listens on a free port of 127.0.0.1 picked at start-up, and every file (state, spool,
logs, sockets, database) lives under the temporary directory, so nothing of the machine's own
configuration (``/etc/slurm``, ``/run/munge``) is read or changed. The commands find the cluster
through ``SLURM_CONF``, which :meth:`SlurmCluster.start` sets in ``os.environ`` (the jobs inherit it:
sbatch exports the environment by default). :meth:`SlurmCluster.stop` cancels what is left, stops the
daemons and removes the directory.

Install the daemons with (Debian/Ubuntu, as root)::

    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        slurm-wlm slurmdbd munge mariadb-server
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

#: The programs the cluster needs (servers and the client commands the tests and submitit call).
REQUIRED_PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd", "mariadb-install-db",
                     "sbatch", "srun", "sinfo", "squeue", "sacct", "scontrol", "scancel")

INSTALL_HINT = ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                "slurm-wlm slurmdbd munge mariadb-server")

#: The partition every test job runs in.
PARTITION = "cpu"


def missing_programs() -> list[str]:
    """The :data:`REQUIRED_PROGRAMS` not found on ``PATH`` (or in ``/usr/sbin``, often off a user's PATH)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in REQUIRED_PROGRAMS if shutil.which(name, path=search) is None]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that nothing listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_line() -> str:
    """This host's ``NodeName=... CPUs=... RealMemory=...`` line, as slurmd itself measures it.

    Declaring more CPUs or memory than slurmd finds would leave the node drained ("Low RealMemory").
    """
    output = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in output.splitlines() if line.startswith("NodeName="))


def _program(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        raise FileNotFoundError(f"{name} not found; install it with: {INSTALL_HINT}")
    return found


class SlurmClusterError(RuntimeError):
    """The cluster did not come up; the message carries the daemons' logs."""


class SlurmCluster:
    """One node, one partition, accounting through slurmdbd; see the module docstring.

    Args:
        startup_timeout_s: How long :meth:`start` waits for each daemon, and for the node to be idle.
        kill_wait_s: slurm.conf ``KillWait``: seconds between SIGTERM and SIGKILL when a job is
            cancelled or requeued. submitit's jobs ignore SIGTERM (they checkpoint on SIGUSR2), so
            this is how long a requeued job lingers; the default of 30 s would only slow the tests.
        cred_expire_s: ``AuthInfo=cred_expire``: how long a job step's credential lives, and so the
            earliest a requeued job starts again (SLURM's default: 120 s).
    """

    def __init__(self, startup_timeout_s: float = 60.0, kill_wait_s: int = 3, cred_expire_s: int = 10) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.kill_wait_s = kill_wait_s
        self.cred_expire_s = cred_expire_s
        self.root: Path | None = None
        self.partition = PARTITION
        self.node = socket.gethostname().split(".")[0]
        self._processes: dict[str, subprocess.Popen] = {}
        self._previous_slurm_conf: str | None = None

    # ----------------------------------------------------------------------------------------
    # Paths

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    # ----------------------------------------------------------------------------------------
    # Start and stop

    def start(self) -> "SlurmCluster":
        """Write the configuration, start the daemons and wait until the node is idle.

        Raises:
            SlurmClusterError: a daemon exited or the node did not become idle in time (with the logs).
        """
        # A short path under /tmp: unix socket paths are limited to 108 bytes, and pytest's
        # basetemp can be long.
        self._previous_slurm_conf = os.environ.get("SLURM_CONF")
        self.root = Path(tempfile.mkdtemp(prefix="mer-slurm-"))
        for sub in ("etc", "log", "munge", "state", "spool", "db"):
            (self.root / sub).mkdir()
        (self.root / "munge").chmod(0o700)  # munged refuses a key directory others can write to
        ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)
        try:
            self._start_munge()
            self._start_database(db_port)
            self._write_configs(ctld_port, slurmd_port, dbd_port, db_port)
            os.environ["SLURM_CONF"] = str(self.conf)
            self._spawn("slurmdbd", [_program("slurmdbd"), "-D"])
            self._wait_for(lambda: self._port_open(dbd_port), "slurmdbd to listen on port %d" % dbd_port)
            # -c: start from an empty job state (the state directory is new anyway).
            self._spawn("slurmctld", [_program("slurmctld"), "-D", "-c", "-f", str(self.conf)])
            self._wait_for(lambda: self._port_open(ctld_port), "slurmctld to listen on port %d" % ctld_port)
            self._spawn("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf)])
            self._wait_for(self._node_idle, f"node {self.node} to be idle in sinfo")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel every job, stop the daemons (SIGTERM, then SIGKILL) and remove the directory."""
        if self.root is None:
            return
        if "slurmctld" in self._processes and self._processes["slurmctld"].poll() is None:
            # Cancel first, while slurmd still runs, so that it ends the jobs' processes too.
            subprocess.run(["scancel", "--partition", self.partition], capture_output=True, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.squeue():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            process = self._processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        if self._previous_slurm_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._previous_slurm_conf
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # Daemons

    def _spawn(self, name: str, command: list[str]) -> None:
        """Start a daemon in the foreground (so that we hold its pid), its output in log/NAME.out."""
        out = open(self.logs / f"{name}.out", "w")
        self._processes[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, cwd=self.root)
        out.close()

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn("munged", [
            _program("munged"), "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            f"--log-file={self.logs / 'munged.log'}",
        ])
        self._wait_for(self.munge_socket.exists, "munged to create its socket")

    def _start_database(self, port: int) -> None:
        datadir = self.root / "db"
        subprocess.run([_program("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       stdout=open(self.logs / "mariadb-install-db.out", "w"), stderr=subprocess.STDOUT, check=True)
        # --no-defaults: none of the machine's my.cnf; a small buffer pool, this database holds a few rows.
        self._spawn("mariadbd", [
            _program("mariadbd"), "--no-defaults", f"--datadir={datadir}", "--user=root", f"--port={port}",
            "--bind-address=127.0.0.1", f"--socket={self.root / 'mariadb.sock'}", "--skip-name-resolve",
            f"--pid-file={self.root / 'mariadb.pid'}", f"--log-error={self.logs / 'mariadb.log'}",
            "--innodb-buffer-pool-size=32M",
        ])
        self._wait_for(lambda: self._port_open(port), "mariadbd to listen on port %d" % port)

    def _write_configs(self, ctld_port: int, slurmd_port: int, dbd_port: int, db_port: int) -> None:
        root = self.root
        node = _node_line()
        self.node = node.split()[0].split("=", 1)[1]  # slurmd's name for this host (its short hostname)
        lines = [
            "ClusterName=mertest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            # The tests (and so the jobs) run as root.
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job may start again only this long after it was requeued (a
            # step credential lives that long): 120 s by default, which would only slow the tests.
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire_s}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups: the plain process-tree tracker and no task binding work in containers too.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=1024",  # without it a job without --mem would take the whole node's memory
            "SchedulerType=sched/backfill",
            # Look for startable jobs every 2 s (default: 60 s for the main loop, 30 s for backfill), so
            # that a requeued job starts as soon as it is eligible.
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "MpiDefault=none",
            "ReturnToService=2",
            f"KillWait={self.kill_wait_s}",
            "JobRequeue=1",
            "JobAcctGatherType=jobacct_gather/linux",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={dbd_port}",
            # For slurmdbd connections this names the munge socket (AuthInfo covers the others).
            f"AccountingStoragePass={self.munge_socket}",
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        # slurmdbd reads slurmdbd.conf next to SLURM_CONF, and only if no one else may read it.
        dbd = self.conf.with_name("slurmdbd.conf")
        dbd.write_text("\n".join([
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "DbdHost=localhost",
            "DbdAddr=127.0.0.1",
            f"DbdPort={dbd_port}",
            "SlurmUser=root",
            f"LogFile={root / 'log' / 'slurmdbd.log'}",
            f"PidFile={root / 'slurmdbd.pid'}",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={db_port}",
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
        ]) + "\n")
        dbd.chmod(0o600)

    # ----------------------------------------------------------------------------------------
    # Queries

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def _node_idle(self) -> bool:
        result = subprocess.run(["sinfo", "--noheader", "--nodes", self.node, "--format", "%t"],
                                capture_output=True, text=True, timeout=30)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def _wait_for(self, condition, what: str) -> None:
        """Poll ``condition`` until it holds; fail with every daemon's log if a daemon dies or time runs out."""
        deadline = time.monotonic() + self.startup_timeout_s
        while not condition():
            dead = [name for name, process in self._processes.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"timed out after {self.startup_timeout_s:.0f} s"
                raise SlurmClusterError(f"waiting for {what}: {reason}\n{self.logs_text()}")
            time.sleep(0.25)

    def logs_text(self, tail_chars: int = 3000) -> str:
        """The end of every daemon log, for failure messages."""
        if self.root is None or not self.logs.is_dir():
            return ""
        parts = []
        for path in sorted(self.logs.iterdir()):
            text = path.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {path.name}\n{text[-tail_chars:]}")
        return "\n".join(parts)

    def squeue(self) -> list[str]:
        """``JOBID STATE`` of every job still queued or running."""
        result = subprocess.run(["squeue", "--noheader", "--format", "%i %T"], capture_output=True, text=True,
                                timeout=30)
        return result.stdout.splitlines() if result.returncode == 0 and result.stdout.strip() else []

    def sacct(self, *args: str) -> list[dict[str, str]]:
        """Accounting records (``sacct --parsable2``) of this cluster's jobs, one dict per line."""
        fields = "JobID,JobName,Partition,State,ExitCode,Elapsed,NodeList"
        result = subprocess.run(["sacct", "--allusers", "--duplicates", "--parsable2", "--format", fields, *args],
                                capture_output=True, text=True, timeout=30, check=True)
        lines = result.stdout.strip().splitlines()
        names = lines[0].split("|")
        return [dict(zip(names, line.split("|"))) for line in lines[1:]]

    def slurmctld_log(self) -> str:
        return (self.logs / "slurmctld.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running :class:`SlurmCluster` for a test module; stopped and removed after its last test.

    Skips when the daemons are not installed (the message says how to install them), or when not
    root (the cluster runs its daemons and jobs as root); under ``CI`` (any non-empty value) it fails
    instead, so that a CI machine without them cannot pass by skipping.
    """
    problem = None
    if missing := missing_programs():
        problem = f"the SLURM test cluster needs {', '.join(missing)}; install them (as root) with: {INSTALL_HINT}"
    elif os.geteuid() != 0:
        problem = "the SLURM test cluster runs its daemons and jobs as root: run the tests as root"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    with SlurmCluster() as cluster:
        yield cluster
