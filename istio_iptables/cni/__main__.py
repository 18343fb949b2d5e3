"""`istio-iptables-cni` and `python -m istio_iptables.cni`.

With CNI_COMMAND in the environment it is the plugin (the runtime's call); otherwise
`install` / `uninstall` put it on a node or take it off.  The plugin path imports what
the init path imports, plus json: an ADD runs for every pod creation.
"""

import gc

# Off before anything else is imported, as for the init command (cli/__init__.py): a
# plugin process is short-lived and ends with os._exit; the collector's passes during
# the imports cost ~9 M instructions of every ADD.
gc.disable()

import os  # noqa: E402
import sys  # noqa: E402

USAGE = ("usage: istio-iptables-cni install|uninstall --bin-dir DIR --conf-dir DIR [--network NAME] ...\n"
         "       (as a CNI plugin it is run by the container runtime, with CNI_COMMAND set)\n")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("install", "uninstall"):
        from istio_iptables.cni.install import main as install_main

        return install_main(argv)
    if "CNI_COMMAND" not in os.environ:
        if argv and argv[0] in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        sys.stderr.write(USAGE)
        return 2
    from istio_iptables.cni.plugin import DEFAULT_PATH, run

    os.environ.setdefault("PATH", DEFAULT_PATH)  # runtimes may exec plugins with a bare environment
    out = sys.stdout
    sys.stdout = sys.stderr  # stdout carries the result or the error object, nothing else
    return run(os.environ, sys.stdin.buffer.read(), out)


def entry() -> None:
    """Console script: flush and leave without the interpreter's teardown, as the
    init path does (cli.main)."""
    status = main(sys.argv[1:])
    try:
        for stream in (sys.__stdout__, sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except OSError:
        status = status or 1
    os._exit(status)


if __name__ == "__main__":
    entry()
