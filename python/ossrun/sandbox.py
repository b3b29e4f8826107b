"""The bubblewrap sandbox of the python tool: the command line that runs a process with no network,
a read-only view of the Python installation it needs (and nothing else of the host's files, the
user's home included), a writable /mnt/data, and resource limits set inside before it starts.

As root, bwrap runs without a user namespace and the process drops to an unused uid of its own
inside (one per sandbox, so that the process limit, RLIMIT_NPROC, which root ignores and which
counts every process of a uid, holds for each sandbox alone); as another user, bwrap makes an
unprivileged user namespace and the limits apply to that user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from functools import cache

NOBODY = 65534
SANDBOX_UIDS = range(0x7A000000, 0x7B000000)  # far above any real user's uid


def sandbox_uid() -> int:
    """A uid for one sandbox (when we are root), unlikely to be shared with another."""
    import secrets

    return SANDBOX_UIDS.start + secrets.randbelow(len(SANDBOX_UIDS))
INSTALL_HINT = ("the python tool runs code inside bubblewrap, which is not installed: "
                "`apt-get install bubblewrap` (Debian/Ubuntu), `dnf install bubblewrap` (Fedora)")

# Runs inside the sandbox: limits, then (as root) nobody, then the command. Kept in a string so
# that no file of the host needs to be visible inside.
_LAUNCHER = """\
import os, resource, sys
mem, cpu, nproc, fsize, uid = (int(v) for v in sys.argv[1:6])
for limit, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                     (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_FSIZE, fsize),
                     (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
if os.getuid() == 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.execv(sys.argv[6], sys.argv[6:])
"""


@dataclass
class Limits:
    """Per-process limits inside the sandbox."""

    memory_mb: int = 2048  # address space (RLIMIT_AS): allocations beyond fail with MemoryError
    cpu_s: int = 3600  # CPU seconds of the kernel's whole life (RLIMIT_CPU)
    processes: int = 64  # processes of the sandbox's user (RLIMIT_NPROC): stops fork bombs
    file_mb: int = 1024  # largest file written (RLIMIT_FSIZE)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@cache
def sandbox_problem() -> str | None:
    """None when bwrap can make a sandbox here, else why not (for messages and test skips)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return INSTALL_HINT
    try:
        r = subprocess.run(command(["/bin/true"], data_dir=None, bind=()), capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap does not run here: {e}"
    if r.returncode != 0:
        return ("bubblewrap cannot create its namespaces here (unprivileged user namespaces may "
                f"be disabled): {r.stderr.strip() or r.returncode}")
    return None


def python_dirs() -> list[str]:
    """The folders the Python interpreter and its packages live in (read-only inside)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(sysconfig.get_paths()[key])
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    out = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
    # Drop folders inside another one already bound.
    return [p for p in out if not any(p != q and p.startswith(q + os.sep) for q in out)]


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", "/etc/ssl/certs")


def command(argv: list[str], data_dir: str | None, bind=(), limits: Limits | None = None,
            env: dict[str, str] | None = None, uid: int = NOBODY) -> list[str]:
    """The bwrap command line that runs `argv` sandboxed; `data_dir` is mounted writable at
    /mnt/data, `bind` folders writable at their own paths (the kernel's sockets)."""
    limits = limits or Limits()
    root = os.geteuid() == 0
    cmd = [bwrap_path() or "bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid",
           "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if not root:
        cmd.append("--unshare-user")
    for path in _SYSTEM:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    for path in _ETC:
        if os.path.exists(path):
            cmd += ["--ro-bind", path, path]
    made: set[str] = set()
    for path in python_dirs():
        if not path.startswith(_SYSTEM):
            cmd += _parents(path, made) + ["--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    if data_dir is not None:
        cmd += _parents("/mnt/data", made) + ["--bind", data_dir, "/mnt/data",
                                              "--chdir", "/mnt/data"]
    for path in bind:
        cmd += _parents(path, made) + ["--bind", path, path]
    cmd += ["--clearenv"]
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
                "IPYTHONDIR": "/tmp/.ipython", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    for key, value in {**base_env, **(env or {})}.items():
        cmd += ["--setenv", key, value]
    mb = 1024 * 1024
    return cmd + ["--", sys.executable, "-c", _LAUNCHER, str(limits.memory_mb * mb),
                  str(limits.cpu_s), str(limits.processes), str(limits.file_mb * mb), str(uid),
                  *argv]


def _parents(path: str, made: set[str]) -> list[str]:
    """Create the folders above a mount point traversable (bwrap would make them 0700, which
    the unprivileged user inside could not enter)."""
    out = []
    parts = path.strip(os.sep).split(os.sep)[:-1]
    for i in range(1, len(parts) + 1):
        parent = os.sep + os.sep.join(parts[:i])
        if parent not in made and parent not in ("/tmp",):
            made.add(parent)
            out += ["--perms", "0755", "--dir", parent]
    return out


def prepare_dir(path: str, uid: int = NOBODY) -> None:
    """Make a host folder writable by the sandbox's user (`uid`, when we are root)."""
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    os.chmod(path, 0o700)
