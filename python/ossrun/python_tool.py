"""The python tool (harmony's `python` namespace, HARMONY.md §8.2): the model's code runs in a
stateful Jupyter kernel (jupyter_client + ipykernel), one per chat, inside a bubblewrap sandbox
(ossrun.sandbox): no network, no access to the user's files, a per-chat /mnt/data, resource
limits, a wall-clock timeout per call and output cut to a token budget.

    chat = model.chat(tools=[ossrun.PythonTool(timeout_s=60, memory_mb=1024)])
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from . import sandbox
from .harmony import ToolNamespace

SANDBOXES = ("bwrap", "none")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here."""


@dataclass
class PythonTool:
    """Settings of the python tool; each chat that uses it starts its own kernel.

    timeout_s: wall-clock limit of one call; the kernel is interrupted, then restarted (its
        state lost) if it does not stop within `grace_s`.
    memory_mb, cpu_s, processes: limits of the kernel (address space, CPU seconds over its life,
        processes of its user).
    max_output_tokens: longer output keeps its start and end, with a note of what was cut.
    data_dir: the folder mounted at /mnt/data (default: a new temporary folder per chat).
    sandbox: "bwrap" (default) or "none": DANGEROUS, the model's code runs as you, with your
        files and your network.
    """

    timeout_s: float = 120.0
    memory_mb: int = 2048
    cpu_s: int = 3600
    processes: int = 64
    max_output_tokens: int = 2000
    data_dir: str | None = None
    sandbox: str = "bwrap"
    grace_s: float = 5.0
    name: str = field(default="python", init=False)

    def __post_init__(self):
        if self.sandbox not in SANDBOXES:
            raise ValueError(f"sandbox must be one of {SANDBOXES}, got {self.sandbox!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        for key in ("memory_mb", "cpu_s", "processes", "max_output_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")

    def unavailable(self) -> str | None:
        """Why the tool cannot run here (None: it can)."""
        return None if self.sandbox == "none" else sandbox.sandbox_problem()

    def namespace(self) -> ToolNamespace:
        ns = ToolNamespace.python()
        ns.description = ns.description.replace("120.0 seconds", f"{float(self.timeout_s)} seconds")
        ns.description = ns.description.replace(
            "Internet access for this session is UNKNOWN. Depends on the cluster.",
            "Internet access for this session is disabled." if self.sandbox == "bwrap"
            else "Internet access for this session is UNKNOWN. Depends on the cluster.")
        return ns

    def recipients(self) -> list[str]:
        return ["python"]

    def open_session(self, tokenizer=None) -> PythonSession:
        if self.sandbox == "bwrap":
            problem = sandbox.sandbox_problem()
            if problem:
                raise SandboxUnavailable(problem)
        return PythonSession(self, tokenizer)


class PythonSession:
    """One chat's kernel: started on the first call, restarted when it dies or hangs."""

    def __init__(self, tool: PythonTool, tokenizer=None):
        self.tool = tool
        self.tokenizer = tokenizer
        self._own_data = tool.data_dir is None
        self.data_dir = tool.data_dir or tempfile.mkdtemp(prefix="ossrun-data-")
        self._run_dir = tempfile.mkdtemp(prefix="ossrun-kernel-")
        self.uid = sandbox.sandbox_uid()
        if tool.sandbox == "bwrap":
            sandbox.prepare_dir(self.data_dir, self.uid)
            sandbox.prepare_dir(self._run_dir, self.uid)
        self._km = None
        self._client = None

    # -- the kernel --------------------------------------------------------------------------

    def _start(self) -> None:
        from jupyter_client import KernelManager

        tool, run_dir, data_dir, uid = self.tool, self._run_dir, self.data_dir, self.uid

        class SandboxedKernel(KernelManager):
            def format_kernel_cmd(self, extra_arguments=None):
                argv = [sys.executable, "-m",
                        "ipykernel_launcher", "-f", self.connection_file]
                if tool.sandbox == "none":
                    return argv
                if os.geteuid() == 0:
                    os.chown(self.connection_file, uid, uid)
                limits = sandbox.Limits(tool.memory_mb, tool.cpu_s, tool.processes)
                return sandbox.command(argv, data_dir, bind=[run_dir], limits=limits, uid=uid)

        km = SandboxedKernel(transport="ipc", ip=os.path.join(run_dir, "kernel"),
                             connection_file=os.path.join(run_dir, "connection.json"))
        # Inside bwrap the environment is cleared (--clearenv): no host secrets leak in.
        km.start_kernel(cwd=data_dir, env=dict(os.environ), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        client = km.blocking_client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
        except RuntimeError as e:
            km.shutdown_kernel(now=True)
            raise RuntimeError(f"the python kernel did not start: {e}") from None
        self._km, self._client = km, client

    def _stop(self) -> None:
        import psutil

        if self._client is not None:
            self._client.stop_channels()
        if self._km is not None:
            try:
                procs = psutil.Process(self._km.provisioner.process.pid).children(recursive=True)
            except (psutil.Error, AttributeError):
                procs = []
            try:
                self._km.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001 -- a dead kernel is what we wanted
                pass
            # Wait until every process of the sandbox is gone: they count against the
            # process limit of its user, which the next kernel needs.
            for p in procs:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)
        self._km = self._client = None

    def close(self) -> None:
        """Stop the kernel and remove its folders (and /mnt/data unless the user gave it)."""
        self._stop()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- calls -------------------------------------------------------------------------------

    def call(self, recipient: str, code: str) -> tuple[str, bool]:
        """Run the model's code: (output text, is_error)."""
        if self._km is None or not self._km.is_alive():
            restarted = self._km is not None
            self._stop()
            self._start()
            if restarted:
                note = "[the previous kernel had stopped; a new one was started, state is lost]\n"
                text, is_error = self._execute(code)
                return note + text, is_error
        return self._execute(code)

    def _interrupt(self) -> None:
        """Ask the kernel to interrupt itself (a control message: a signal to the sandbox's
        outer process would end the sandbox instead)."""
        client = self._client
        client.control_channel.send(client.session.msg("interrupt_request", {}))

    def _execute(self, code: str) -> tuple[str, bool]:
        client, tool = self._client, self.tool
        msg_id = client.execute(code, store_history=True, allow_stdin=False)
        deadline = time.monotonic() + tool.timeout_s
        parts: list[str] = []
        is_error, interrupted = False, False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if interrupted:  # the interrupt did not stop it: restart
                    self._stop()
                    self._start()
                    parts.append(f"\n[timed out after {tool.timeout_s:g} s; the code did not "
                                 "stop when interrupted, so the kernel was restarted and its "
                                 "state is lost]")
                    return self._truncate("".join(parts)), True
                self._interrupt()
                interrupted, is_error = True, True
                deadline = time.monotonic() + tool.grace_s
                continue
            try:
                msg = client.get_iopub_msg(timeout=min(remaining, 0.5))
            except queue.Empty:
                if not self._km.is_alive():
                    self._stop()
                    parts.append("\n[the kernel died (out of memory or over its CPU time?); "
                                 "it will be restarted on the next call and its state is lost]")
                    return self._truncate("".join(parts)), True
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                parts.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                data = content.get("data", {})
                if "text/plain" in data:
                    parts.append(data["text/plain"] + "\n")
                elif data:
                    parts.append(f"[{', '.join(data)} output]\n")
            elif kind == "error":
                is_error = True
                parts.append(_ANSI.sub("", "\n".join(content.get("traceback") or
                                                    [f"{content['ename']}: {content['evalue']}"]))
                             + "\n")
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        text = "".join(parts)
        if interrupted:
            text += f"\n[timed out after {tool.timeout_s:g} s: the code was interrupted]"
            if self._strays():  # e.g. a fork bomb's children: only a new sandbox ends them all
                self._stop()
                self._start()
                text += ("\n[it had started processes that kept running; the kernel was "
                         "restarted and its state is lost]")
        return self._truncate(text) or "[no output]", is_error

    def _strays(self) -> list:
        """Processes the kernel started that are still running (ipykernel itself starts none):
        the descendants of the first process of the sandbox that runs ipykernel."""
        import psutil

        try:
            root = psutil.Process(self._km.provisioner.process.pid)
            level = [root]
            while level:
                kernel = next((p for p in level  # not bwrap, whose arguments name it too
                               if p.cmdline()[1:3] == ["-m", "ipykernel_launcher"]), None)
                if kernel is not None:
                    return kernel.children(recursive=True)
                level = [c for p in level for c in p.children()]
        except (psutil.Error, AttributeError):
            pass
        return []

    def _truncate(self, text: str) -> str:
        """At most max_output_tokens tokens: the start and the end, and what was cut."""
        budget = self.tool.max_output_tokens
        if self.tokenizer is None:
            ids = None
            too_long = len(text) > 4 * budget  # ~4 characters a token without a tokenizer
        else:
            ids = self.tokenizer.encode(text)
            too_long = len(ids) > budget
        if not too_long:
            return text
        half = budget // 2
        if ids is None:
            head, tail, cut = text[:2 * budget], text[-2 * budget:], len(text) - 4 * budget
            unit = "characters"
        else:
            head, tail = self.tokenizer.decode(ids[:half]), self.tokenizer.decode(ids[-half:])
            cut, unit = len(ids) - 2 * half, "tokens"
        return f"{head}\n[... {cut} {unit} of output cut ...]\n{tail}"
