"""A real OpenSSH server on 127.0.0.1 for the test session, and the client config that reaches it.

:func:`start` makes a host key and a user key with ``ssh-keygen`` in a folder of its own,
writes ``sshd_config`` (listening on 127.0.0.1 only, at a free port, public-key login for
this user only, no PAM, keys and pid file in the folder), a ``known_hosts`` with the host key
and an ``ssh_config`` for the client::

    Host 127.0.0.1
      Port PORT
      User USER
      IdentityFile FOLDER/user_key
      UserKnownHostsFile FOLDER/known_hosts
      StrictHostKeyChecking yes

then starts ``sshd -D -e -f FOLDER/sshd_config`` as a child of the test process and waits
until ``ssh -F FOLDER/ssh_config 127.0.0.1 true`` works. ``launch/ssh.py --ssh_config=FILE``
passes the config to every ssh it runs (``ssh -F FILE``), as a user's cluster config would be.

Example (what ``tests/conftest.py`` does)::

    server = start(str(tmp_dir))
    subprocess.run(["ssh", "-F", server.ssh_config, "127.0.0.1", "hostname"])
    server.stop()
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import subprocess
import time

from _daemon import free_port, marker_for, missing, sweep_orphans, tail, which
from _daemon import start as start_daemon
from _daemon import stop as stop_daemons

#: What the fixture needs: the server, the client and the key maker.
PROGRAMS = ("sshd", "ssh", "ssh-keygen")

_SSHD_CONFIG = """\
# A test sshd on 127.0.0.1 (tests/_ssh_server.py); nothing here outlives the session.
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowUsers {user}
MaxStartups 64
MaxSessions 64
LogLevel ERROR
"""

_SSH_CONFIG = """\
# The client side of the test sshd (tests/_ssh_server.py).
Host 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {root}/user_key
  IdentitiesOnly yes
  UserKnownHostsFile {root}/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
"""


@dataclasses.dataclass
class SshServer:
    """A running test sshd: its folder, port, the client config file, the daemon."""

    root: str
    port: int
    ssh_config: str
    daemon: subprocess.Popen
    marker: str

    def stop(self) -> list[int]:
        """Stop sshd by pid; returns pids (its sessions) that had to be killed by marker."""
        return stop_daemons([self.daemon], self.marker)


def why_not() -> str | None:
    """Why this machine cannot run the server (a skip reason), or ``None``."""
    gone = missing(PROGRAMS)
    if gone:
        return f"needs OpenSSH ({', '.join(gone)} not found): apt-get install slurm-wlm openssh-server"
    return None


def start(root: str, timeout: float = 30.0) -> SshServer:
    """Make keys and configs in ``root``, start sshd on a free port and wait until a login works."""
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o700)
    for key in ("host_key", "user_key"):
        subprocess.run([which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"distmap-test-{key}",
                        "-f", os.path.join(root, key)], check=True, capture_output=True)
    with open(os.path.join(root, "user_key.pub")) as f, open(os.path.join(root, "authorized_keys"), "w") as out:
        out.write(f.read())
    port, user = free_port(), getpass.getuser()
    with open(os.path.join(root, "host_key.pub")) as f, open(os.path.join(root, "known_hosts"), "w") as out:
        out.write(f"[127.0.0.1]:{port} {f.read()}")
    sshd_config = os.path.join(root, "sshd_config")
    with open(sshd_config, "w") as f:
        f.write(_SSHD_CONFIG.format(root=root, port=port, user=user))
    ssh_config = os.path.join(root, "ssh_config")
    with open(ssh_config, "w") as f:
        f.write(_SSH_CONFIG.format(root=root, port=port, user=user))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder (Debian's path)
    log = os.path.join(root, "sshd.log")
    sweep_orphans()  # what a killed earlier session left
    marker = marker_for(root)
    daemon = start_daemon([which("sshd"), "-D", "-e", "-f", sshd_config], log, marker)
    server = SshServer(root=root, port=port, ssh_config=ssh_config, daemon=daemon, marker=marker)
    end = time.monotonic() + timeout
    probe = None
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise RuntimeError(f"sshd exited at start with {daemon.returncode}:\n{tail(log)}")
        probe = subprocess.run([which("ssh"), "-F", ssh_config, "-o", "ConnectTimeout=5", "127.0.0.1", "true"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if probe.returncode == 0:
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"no ssh login to 127.0.0.1:{port} after {timeout} s: "
                       f"{probe.stderr if probe else ''}\n{tail(log)}")
