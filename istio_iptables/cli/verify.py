"""`istio-iptables verify`: prove the capture with real traffic before shipping it.

Builds a scratch pod and peer namespace (lab/netlab.py), applies the capture there
with the real command, sends a matrix of connections derived from the flags
(lab/matrix.py) and shows, per connection, what the flags say, what `explain`
predicts from the plan and from the installed rules, and what the kernel did.
Exit 0 only when every row agrees.  Root only; never on the init path.
"""


import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from istio_iptables.cli.explain import usage_error
from istio_iptables.cli.flags import (
    OPTIONS,
    Settings,
    add_options,
    build_settings,
    help_option,
    normalize_argv,
    with_pod_flags,
)
from istio_iptables.model.config import ConfigError

PROG = "istio-iptables verify"
EXIT_DISAGREE = 1
EXIT_LAB = 3
# Run options verify decides itself: never passed to the apply in the scratch pod.
NOT_APPLIED = frozenset({"dry_run", "output", "network_namespace", "cleanup_only", "skip_rule_apply",
                         "run_validation", "resolv_conf", "reconcile", "force_apply", "log_format"})


def capture_argv(given: Mapping[str, Any]) -> list[str]:
    """The flags given, as arguments for the real command (long names)."""
    argv: list[str] = []
    for opt in OPTIONS:
        value = given.get(opt.dest)
        if opt.dest in NOT_APPLIED or value is None or value is False:
            continue
        argv += [opt.long] if opt.is_flag else [opt.long, str(value)]
    return argv


def apply_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for the apply, without the run-only variables verify decides."""
    drop = {name for opt in OPTIONS if opt.dest in NOT_APPLIED for name in opt.envs}
    return {k: v for k, v in env.items() if k not in drop}


def _capture_flags(func: Any) -> Any:
    return add_options(func, exclude=("output",))



def make_command(result: dict[str, Any]) -> click.Command:
    @click.command(name=PROG, add_help_option=False, context_settings={"max_content_width": 110})
    @click.option("--output", "verify_output", type=click.Choice(["text", "json"]), default="text",
                  help="text (a table) or json.")
    @help_option
    @_capture_flags
    def command(**values: Any) -> None:
        """Prove the capture with real traffic (root): build a scratch pod and peer
        namespace joined by veth (IPv6 too with --dual-stack or --ipv6 on), apply
        the capture flags there with istio-iptables itself, send real TCP/UDP
        connections derived from the flags (app and proxy outbound, each -i/-x CIDR
        and -q/-o port, inbound on captured, excluded and tunnel ports, loopback,
        the pod itself, DNS when enabled) and print, for each, what the flags say,
        what `explain` predicts (from the plan and from the installed rules) and
        where the kernel really delivered it.

        Exit 0 when every connection agrees; 1 when any disagrees; 2 bad input;
        3 when the lab could not be built or the capture not applied.  Everything
        created is removed, also on Ctrl-C.  Resolvers for DNS capture are the lab's
        (198.51.100.53, 2001:db8:2::53), not --resolv-conf.

        \b
        Example:
          sudo istio-iptables verify -i '*' -x 10.96.0.0/12 -b '*' -d 15090,15021,15020 --redirect-dns"""
        result.update(values)

    return command


def parse(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Settings, list[str], str] | int:
    values: dict[str, Any] = {}
    try:
        argv, env = with_pod_flags(argv, env)
        make_command(values).main(args=normalize_argv(argv), prog_name=PROG, standalone_mode=False)
        if not values:
            return 0
        output = values.pop("verify_output")
        return build_settings(values, env), capture_argv(values), output
    except ConfigError as err:
        return usage_error(str(err), PROG)
    except click.exceptions.NoSuchOption as err:
        return usage_error(f"unknown flag {err.option_name!r}", PROG)
    except click.UsageError as err:
        return usage_error(err.format_message(), PROG)


def _cell(landing: tuple[int | None, bool | None]) -> str:
    port, local = landing
    if port is None:
        return "nothing"
    return f"{'pod' if local else 'peer'}:{port}"


def render_table(rows: Sequence[Any]) -> str:
    header = ("connection", "flags say", "plan", "live rules", "kernel", "")
    table = [header]
    for row in rows:
        expected = (row.probe.expect_port, row.probe.expect_local)
        kernel = _cell(row.kernel_landing) if row.kernel_port is not None else f"nothing ({row.kernel_error})"
        table.append((row.probe.label, _cell(expected), _cell(row.plan_landing), _cell(row.live_landing),
                      kernel, "ok" if row.agree else "DIFFERS"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in table]
    for row in rows:
        if not row.agree:
            lines.append(f"  {row.probe.label}: flags say {row.probe.why}; explain: {row.plan.reason}")
    lines += routing_lines(rows)
    return "\n".join(lines) + "\n"


def routing_lines(rows: Sequence[Any]) -> list[str]:
    """TPROXY delivers only through policy routing: what the live rules' check found,
    once per family, and every problem."""
    seen: dict[str, None] = {}
    for row in rows:
        check = row.live.routing
        if check is not None:
            seen[f"  TPROXY routing IPv{check.family}: {check.installed or 'missing'}"] = None
            if check.problem:
                seen[f"  {row.probe.label}: {check.problem}"] = None
    return list(seen)


def render_json(result: Any) -> str:
    import json

    rows = [{
        "connection": r.probe.label, "family": r.probe.family, "proto": r.probe.proto,
        "inbound": r.probe.inbound, "dst": r.probe.dst, "dport": r.probe.dport, "uid": r.probe.uid,
        "src": r.probe.src,
        "flags_say": {"port": r.probe.expect_port, "in_pod": r.probe.expect_local, "why": r.probe.why},
        "plan": {**dict(zip(("port", "in_pod"), r.plan_landing, strict=True)), "reason": r.plan.reason,
                 "uncertain": r.plan.uncertain},
        "live": {**dict(zip(("port", "in_pod"), r.live_landing, strict=True)), "reason": r.live.reason,
                 "uncertain": r.live.uncertain,
                 **({"routing": r.live.routing.as_dict()} if r.live.routing is not None else {})},
        "kernel": {"port": r.kernel_port, "in_pod": r.kernel_local, "error": r.kernel_error},
        "agree": r.agree,
    } for r in result.rows]  # fmt: skip
    return json.dumps({"ok": all(r.agree for r in result.rows), "families": list(result.lab_families),
                       "connections": rows}, indent=2) + "\n"


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str]) -> int:
    parsed = parse(argv, os.environ)
    if isinstance(parsed, int):
        return parsed
    settings, args, output = parsed
    from istio_iptables.lab.netlab import NetLabError, netns_available

    available, why = netns_available()
    if not available:
        sys.stderr.write(f"{PROG}: error: needs root and network namespaces: {why}\n")
        return EXIT_LAB
    from istio_iptables.lab.verify_run import VerifyError, run_verify

    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        def progress(line: str) -> None:
            if output == "text":
                sys.stderr.write(f"{PROG}: {line}\n")

        result = run_verify(settings, args, apply_env(os.environ), progress)
    except (VerifyError, NetLabError) as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return EXIT_LAB
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; the scratch namespaces were removed\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if output == "json":
        sys.stdout.write(render_json(result))
    else:
        sys.stdout.write(render_table(result.rows))
        bad = sum(not r.agree for r in result.rows)
        sys.stdout.write(f"{len(result.rows) - bad}/{len(result.rows)} connections agree"
                         f"{'' if not bad else f'; {bad} differ'}\n")
    return 0 if all(r.agree for r in result.rows) else EXIT_DISAGREE
