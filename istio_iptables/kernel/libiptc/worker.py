"""One address family per process: each backend call runs in a forked worker.

libxtables 1.8 registers a family-specific extension (REDIRECT, TPROXY, multiport,
...) only for the family that was current when its shared object was first loaded,
so after IPv4 work the IPv6 variants are never found; when python-iptables then
re-runs the extension's init, libxtables may call ``exit(1)`` ("target ... already
registered").  python-iptables' author advises one address family per process.  By
default every call therefore runs in a forked child that loads python-iptables for
its family and sends its answer back; the calling process never loads libxtables.
``isolate=False`` works in this process, and is refused for a second family.

The answer travels as ``marshal`` data over a pipe and the child's stderr (libxtables
warnings) in a memfd: neither json nor tempfile is imported on the init path.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
from collections.abc import Callable
from typing import Any

from istio_iptables.kernel.libiptc.common import LibiptcError, check_family, lib_message
from istio_iptables.kernel.spawn import write_all

#: The family this process has used python-iptables for in-process (isolate=False).
_inprocess_family: int | None = None


def dispatch(family: int, isolate: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a forked worker process (``isolate``) or in this process."""
    global _inprocess_family
    check_family(family)
    if _inprocess_family is not None and _inprocess_family != family:
        raise LibiptcError(
            f"python-iptables was already used in this process for IPv{_inprocess_family} "
            f"(isolate=False); libxtables cannot serve IPv{family} in the same process"
        )
    if not isolate:
        _inprocess_family = family
        return fn(*args)
    return _in_child(fn, *args)


def _child(fn: Callable[..., Any], args: tuple[Any, ...], write_fd: int, err_fd: int) -> None:
    """The worker's whole life: run, answer, leave without the interpreter's teardown."""
    import gc

    gc.disable()  # a short-lived process that ends with os._exit: collecting cycles is wasted work
    code = 0
    try:
        os.dup2(err_fd, 2)
        try:
            answer: dict[str, Any] = {"result": fn(*args)}
        except LibiptcError as exc:
            answer = {"error": str(exc), "table": exc.table, "chain": exc.chain, "rule": exc.rule}
        except BaseException as exc:
            answer = {"error": f"{type(exc).__name__}: {lib_message(exc)}"}
        write_all(write_fd, marshal.dumps(answer))
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a forked child; its result (marshal-able) or LibiptcError comes back."""
    from istio_iptables import logs

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    err_fd = os.memfd_create("libiptc-worker-stderr", os.MFD_CLOEXEC)
    try:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            _child(fn, args, write_fd, err_fd)
        os.close(write_fd)
        chunks = []
        try:
            while chunk := os.read(read_fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        os.lseek(err_fd, 0, os.SEEK_SET)
        stderr = os.read(err_fd, 1 << 20).decode(errors="replace").strip()
    finally:
        os.close(err_fd)
    raw = b"".join(chunks)
    if not raw:
        how = (f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited with status {os.waitstatus_to_exitcode(status)}")
        detail = f": {stderr}" if stderr else ""
        raise LibiptcError(f"the libiptc worker process {how} without an answer{detail}")
    for line in stderr.splitlines():
        logs.warning("libxtables: %s", line)  # passed on, one log line each
    reply: dict[str, Any] = marshal.loads(raw)
    if "error" in reply:
        raise LibiptcError(reply["error"], table=reply.get("table"), chain=reply.get("chain"),
                           rule=reply.get("rule"))
    return reply["result"]
