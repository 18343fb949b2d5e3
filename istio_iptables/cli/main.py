"""The `istio-iptables` and `istio-clean-iptables` commands.

The apply layer (and with it python-iptables, for --backend libiptc) is imported only when rules
are applied; a dry run imports the model only.  Exit statuses: 0 done, 1 the kernel
refused (namespace as before), 2 bad input (one line on stderr, nothing touched),
126 validation failed.
"""

import os
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import click

from istio_iptables.cli.flags import (
    Settings,
    add_options,
    build_settings,
    help_option,
    named_options,
    normalize_argv,
    wants_json_logs,
    with_pod_flags,
)
from istio_iptables.model.config import ConfigError

PROG = "istio-iptables"
EXIT_USAGE = 2
# `istio-iptables WORD ...`: debugging tools that take the same capture flags.
SUBCOMMANDS = {
    "explain": "istio_iptables.cli.explain",
    "pod": "istio_iptables.cli.pod",
    "verify": "istio_iptables.cli.verify",
}


def _run(settings: Settings) -> int:
    from istio_iptables.logs import setup_logging

    setup_logging(settings.run.log_format)
    if settings.run.dry_run:
        return _dry_run(settings)
    from istio_iptables.apply.run import run_apply

    return run_apply(settings.capture, settings.run)


def _dry_run(settings: Settings) -> int:
    from istio_iptables.model import hostfacts
    from istio_iptables.model.iptables_plan import build_plan
    from istio_iptables.model.iptables_render import RENDERERS

    run = settings.run
    facts = hostfacts.gather(run.ipv6, settings.capture.dual_stack, settings.capture.needs_nameservers,
                             run.resolv_conf)
    if run.output == "nft" or (run.native_nftables and run.output == "restore"):
        from istio_iptables.model.nft_plan import render_nft

        sys.stdout.write(render_nft(settings.capture, facts))
        return 0
    plan = build_plan(settings.capture, facts)
    sys.stdout.write(RENDERERS[run.output](plan))
    return 0



def make_command(name: str, cleanup: bool, env: Mapping[str, str] | None = None,
                 only: Collection[str] | None = None) -> click.Command:
    """The command, with every Istio flag or `only` those (flags.named_options)."""

    def command(action: str | None, **given: Any) -> None:
        """Write Istio's sidecar traffic-capture rules (istio-init) into this network
        namespace: inbound TCP to the capture port, outbound TCP to the proxy port,
        except the proxy's own uid/gid and the excluded ports and CIDRs.

        The positional `clean` (Istio 1.3) removes everything, like --cleanup-only.
        Flags beat environment variables. Bad input exits 2 and touches nothing.
        Istio's injector arguments work as they are: the leading `istio-iptables`
        word is ignored, `--log_as_json` selects JSON logs, and the agent's other
        `--log_*` flags are accepted and ignored."""
        if action not in (None, "clean"):
            raise ConfigError("the positional argument", action, "only 'clean' is accepted")
        settings = build_settings(given, os.environ if env is None else env, cleanup=cleanup or action == "clean")
        raise SystemExit(_run(settings))

    decorated = add_options(help_option(command), only=only)
    decorated = click.argument("action", required=False, metavar="[clean]")(decorated)
    return click.command(name=name, add_help_option=False, context_settings={"max_content_width": 110})(decorated)


def _main(name: str, cleanup: bool, argv: Sequence[str] | None) -> int:
    from istio_iptables.model.hostfacts import HostFactsError

    given = list(sys.argv[1:] if argv is None else argv)
    if not cleanup and given and given[0] in SUBCOMMANDS:
        # Tools over the same core, each its own module: none of them is imported on
        # the init path.  Each module's main(argv) -> exit status.
        import importlib

        return int(importlib.import_module(SUBCOMMANDS[given[0]]).main(given[1:]))
    as_json = wants_json_logs(given, os.environ)
    try:
        given, env = with_pod_flags(given, os.environ)
        args = normalize_argv(given)
        make_command(name, cleanup, env, named_options(args)).main(args=args, prog_name=name, standalone_mode=False)
    except SystemExit as done:
        return int(done.code or 0)
    except (ConfigError, HostFactsError) as err:
        _usage_error(name, str(err), as_json)
        return EXIT_USAGE
    except click.exceptions.NoSuchOption as err:
        _usage_error(name, f"unknown flag {err.option_name!r}", as_json)
        return EXIT_USAGE
    except click.UsageError as err:
        _usage_error(name, err.format_message(), as_json)
        return EXIT_USAGE
    except click.exceptions.Abort:
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _usage_error(name: str, message: str, as_json: bool) -> None:
    """One line on stderr; under JSON logging one JSON object, like every other line."""
    text = f"{name}: error: {' '.join(message.split())}"
    if as_json:
        import time

        from istio_iptables.logs import format_line

        text = format_line("error", text, time.time(), "json")
    sys.stderr.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `istio-iptables`."""
    return _main(PROG, False, argv)


def clean_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `istio-clean-iptables`: the same flags, cleanup only."""
    return _main("istio-clean-iptables", True, argv)


def _exit_now(status: int) -> None:
    """Flush and leave without the interpreter's teardown (freeing every module and
    object costs a few ms of CPU that an init container gains nothing from)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        status = status or 1
    os._exit(status)


def entry() -> None:
    _exit_now(main())


def clean_entry() -> None:
    _exit_now(clean_main())
