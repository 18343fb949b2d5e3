"""Istio's flags and environment, in one table, and the one parser every entry point
uses (the init command, explain, pod, verify and the CNI plugin).

Parsing happens in three steps so each failure is one clear line: click collects raw
strings (flag beats environment), `build_settings` validates them into frozen config,
and only then does anything look at the host.  `parse_args` runs all three for a list
of arguments, as the CNI plugin's `"capture"` list and `explain` need.
"""

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import click

from istio_iptables.model import config as c
from istio_iptables.model.config import CaptureConfig, ConfigError, RunOptions
from istio_iptables.model.constants import (
    DNS_AGENT_PORT,
    INBOUND_CAPTURE_PORT,
    INBOUND_TUNNEL_PORT,
    IPV4_LOOPBACK_CIDR,
    PROBE_PORT,
    PROXY_PORT,
    PROXY_UID,
    TPROXY_MARK,
    TPROXY_ROUTE_TABLE,
)
from istio_iptables.model.record import Record


class Option(Record):
    """One Istio flag: its letters, its environment variables, default and help."""

    dest: str
    long: str
    short: str | None
    envs: tuple[str, ...]
    default: str
    help: str
    is_flag: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("envoy_port", "--envoy-port", "-p", ("ENVOY_PORT",), str(PROXY_PORT), "Outbound capture port (Envoy's)."),
    Option("inbound_capture_port", "--inbound-capture-port", "-z", ("INBOUND_CAPTURE_PORT",), str(INBOUND_CAPTURE_PORT),
           "Port that inbound TCP is redirected to."),
    Option("inbound_tunnel_port", "--inbound-tunnel-port", "-e", ("INBOUND_TUNNEL_PORT",), str(INBOUND_TUNNEL_PORT),
           "HBONE tunnel port: not captured inbound in REDIRECT mode (TPROXY with -b '*' captures it, as Istio)."),
    Option("proxy_uid", "--proxy-uid", "-u", ("PROXY_UID",), "",
           f"Comma list of proxy uids exempt from capture (default: uid of $ENVOY_USER, else {PROXY_UID})."),
    Option("proxy_gid", "--proxy-gid", "-g", ("PROXY_GID",), "", "Comma list of proxy gids (default: as -u)."),
    Option("mode", "--istio-inbound-interception-mode", "-m",
           ("ISTIO_INBOUND_INTERCEPTION_MODE", "INBOUND_INTERCEPTION_MODE"), "", "REDIRECT (default) or TPROXY."),
    Option("tproxy_mark", "--istio-inbound-tproxy-mark", "-t",
           ("ISTIO_INBOUND_TPROXY_MARK", "INBOUND_TPROXY_MARK"), str(TPROXY_MARK),
           "TPROXY fwmark. Note: in Istio 1.3's script -t meant 'unit test'; today's meaning wins."),
    Option("tproxy_route_table", "--istio-inbound-tproxy-route-table", "-r",
           ("ISTIO_INBOUND_TPROXY_ROUTE_TABLE",), str(TPROXY_ROUTE_TABLE), "Routing table used for TPROXY."),
    Option("inbound_ports", "--istio-inbound-ports", "-b", ("ISTIO_INBOUND_PORTS",), "",
           "Inbound ports to capture: '*' for all, a comma list, or empty for none."),
    Option("inbound_exclude_ports", "--istio-local-exclude-ports", "-d", ("ISTIO_LOCAL_EXCLUDE_PORTS",), "",
           "Inbound ports never captured (only with -b '*')."),
    Option("exclude_interfaces", "--istio-exclude-interfaces", "-c", ("ISTIO_EXCLUDE_INTERFACES",), "",
           "Interfaces whose traffic is never captured."),
    Option("outbound_cidrs", "--istio-service-cidr", "-i", ("ISTIO_SERVICE_CIDR",), "",
           "Outbound CIDRs to capture: '*' for all, a comma list, or empty for none."),
    Option("outbound_exclude_cidrs", "--istio-service-exclude-cidr", "-x", ("ISTIO_SERVICE_EXCLUDE_CIDR",), "",
           "Outbound CIDRs never captured ('*' is an error)."),
    Option("outbound_ports", "--istio-outbound-ports", "-q", ("ISTIO_OUTBOUND_PORTS",), "",
           "Outbound ports always captured."),
    Option("outbound_exclude_ports", "--istio-local-outbound-ports-exclude", "-o",
           ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",), "", "Outbound ports never captured."),
    Option("kube_virt_interfaces", "--kube-virt-interfaces", "-k", ("KUBE_VIRT_INTERFACES",), "",
           "Interfaces whose inbound traffic is treated as outbound."),
    Option("dry_run", "--dry-run", "-n", ("DRY_RUN",), "false",
           "Print the plan; touch nothing, need no privileges.", is_flag=True),
    Option("redirect_dns", "--redirect-dns", None, ("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"), "false",
           f"Capture DNS to the agent on {DNS_AGENT_PORT}.", is_flag=True),
    Option("capture_all_dns", "--capture-all-dns", None, ("CAPTURE_ALL_DNS",), "false",
           "Capture all port-53 traffic, not only to resolv.conf's servers.", is_flag=True),
    Option("drop_invalid", "--drop-invalid", None, ("DROP_INVALID", "INVALID_DROP"), "false",
           "Drop conntrack INVALID packets (mangle).", is_flag=True),
    Option("dual_stack", "--dual-stack", None, ("DUAL_STACK", "ISTIO_DUAL_STACK"), "false",
           "Write IPv6 rules when the pod has any IPv6 address.", is_flag=True),
    Option("network_namespace", "--network-namespace", None, ("NETWORK_NAMESPACE",), "",
           "Apply inside this network namespace (a path like /proc/PID/ns/net, or a name in /var/run/netns)."),
    Option("run_validation", "--run-validation", None, ("RUN_VALIDATION",), "false",
           "Probe that capture works after applying; exit 126 if not.", is_flag=True),
    Option("probe_port", "--iptables-probe-port", None, ("IPTABLES_PROBE_PORT",), str(PROBE_PORT),
           "Port the validation probe dials."),
    Option("probe_timeout", "--probe-timeout", None, ("PROBE_TIMEOUT",), "5s", "Validation timeout (e.g. 5s)."),
    Option("skip_rule_apply", "--skip-rule-apply", None, ("SKIP_RULE_APPLY",), "false",
           "Do not write rules (with --run-validation: only validate).", is_flag=True),
    Option("reconcile", "--reconcile", None, ("RECONCILE",), "false",
           "Replace our rules when they differ from the plan, instead of failing.", is_flag=True),
    Option("cleanup_only", "--cleanup-only", None, ("CLEANUP_ONLY",), "false",
           "Remove every chain, jump, rule, route and address we add; apply nothing.", is_flag=True),
    Option("force_apply", "--force-apply", None, ("FORCE_APPLY",), "false",
           "Apply even when the rules already appear to be in place.", is_flag=True),
    Option("native_nftables", "--native-nftables", None, ("NATIVE_NFTABLES",), "false",
           "Istio's native nftables mode: inet istio-proxy-* tables written with `nft -f`.", is_flag=True),
    Option("force_iptables_binary", "--force-iptables-binary", None, ("FORCE_IPTABLES_BINARY",), "",
           "Use iptables-legacy ('legacy') or iptables-nft ('nft') instead of detecting."),
    Option("cni_mode", "--cni-mode", None, ("CNI_MODE",), "false", "Accepted for compatibility; ignored.",
           is_flag=True),
    Option("ipv6", "--ipv6", None, ("ISTIO_IPTABLES_IPV6",), "auto",
           "IPv6 rules: auto (Istio's rule, from the pod's addresses), on, or off."),
    Option("resolv_conf", "--resolv-conf", None, ("ISTIO_IPTABLES_RESOLV_CONF",), "/etc/resolv.conf",
           "Where the nameservers for DNS capture are read."),
    Option("output", "--output", None, ("ISTIO_IPTABLES_OUTPUT",), "restore",
           "Dry-run format: restore, commands, json, or nft (Istio's native nftables ruleset)."),
    Option("backend", "--backend", None, ("ISTIO_IPTABLES_BACKEND",), "restore",
           "restore (iptables-restore, legacy or nft as detected) or libiptc (python-iptables, legacy only)."),
    Option("log_format", "--log-format", None, ("ISTIO_IPTABLES_LOG_FORMAT",), "text", "text or json."),
    Option("from_pod", "--from-pod", None, (), "",
           "Capture as Istio's injector would for this manifest's one pod template (FILE, or - for stdin): "
           "its istio-init flags and env first, explicit flags and env win. See `istio-iptables pod`."),
)
# Env-only settings Istio reads.
ENV_ONLY = {
    "owner_groups_include": ("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
    "owner_groups_exclude": ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
    "ipv4_loopback_cidr": ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", IPV4_LOOPBACK_CIDR),
}


class Settings(Record):
    capture: CaptureConfig
    run: RunOptions


class _Raw:
    """Raw string values by dest, remembering where each came from for error messages."""

    def __init__(self, given: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.values: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        for opt in OPTIONS:
            label = f"{opt.short}/{opt.long}" if opt.short else opt.long
            value = given.get(opt.dest)
            if value is not None:  # False: a Go-style --flag=false, given explicitly: it beats the env
                self.values[opt.dest] = "true" if value is True else "false" if value is False else str(value)
                self.sources[opt.dest] = label
                continue
            env_name = next((e for e in opt.envs if e in env), None)
            if env_name is not None:
                self.values[opt.dest] = env[env_name]
                self.sources[opt.dest] = f"{label} (from ${env_name})"
            else:
                self.values[opt.dest] = opt.default
                self.sources[opt.dest] = label
        for dest, (env_name, default) in ENV_ONLY.items():
            self.values[dest] = env.get(env_name, default)
            self.sources[dest] = f"${env_name}"

    def flag(self, dest: str) -> str:
        return self.sources[dest]

    def __getitem__(self, dest: str) -> str:
        return self.values[dest]

    def boolean(self, dest: str) -> bool:
        return c.parse_bool(self.flag(dest), self[dest])

    def port(self, dest: str) -> int:
        return c.parse_port(self.flag(dest), self[dest])

    def choice(self, dest: str, choices: Sequence[str]) -> str:
        value = self[dest].strip().lower()
        if value not in choices:
            raise ConfigError(self.flag(dest), self[dest], "expected one of " + ", ".join(choices))
        return value


def build_capture(raw: _Raw, default_uid: str) -> CaptureConfig:
    """Validate every rule-shaping value into a CaptureConfig."""
    f = raw.flag
    owners = {}
    for dest in ("proxy_uid", "proxy_gid"):
        owners[dest] = c.parse_owner_list(f(dest), raw[dest])
        if not owners[dest] and raw[dest].strip():  # "," alone: a list of nothing, not the default
            raise ConfigError(f(dest), raw[dest], "expected at least one uid/gid or name")
    uids = owners["proxy_uid"] or (default_uid,)
    gids = owners["proxy_gid"] or uids
    inbound_all, inbound_ports = c.parse_port_list(f("inbound_ports"), raw["inbound_ports"], allow_wildcard=True)
    cfg = CaptureConfig(
        proxy_port=raw.port("envoy_port"),
        inbound_capture_port=raw.port("inbound_capture_port"),
        inbound_tunnel_port=raw.port("inbound_tunnel_port"),
        proxy_uids=uids,
        proxy_gids=gids,
        mode=c.parse_mode(f("mode"), raw["mode"]),
        tproxy_mark=c.parse_uint(f("tproxy_mark"), raw["tproxy_mark"], low=1, high=0xFFFFFFFF),
        tproxy_route_table=c.parse_route_table(f("tproxy_route_table"), raw["tproxy_route_table"]),
        inbound_ports_all=inbound_all,
        inbound_ports=inbound_ports,
        inbound_exclude_ports=c.parse_port_list(f("inbound_exclude_ports"), raw["inbound_exclude_ports"])[1],
        exclude_interfaces=c.parse_interfaces(f("exclude_interfaces"), raw["exclude_interfaces"]),
        outbound_cidrs=c.parse_cidrs(f("outbound_cidrs"), raw["outbound_cidrs"], allow_wildcard=True),
        outbound_exclude_cidrs=c.parse_cidrs(f("outbound_exclude_cidrs"), raw["outbound_exclude_cidrs"],
                                             allow_wildcard=False),
        outbound_ports=c.parse_port_list(f("outbound_ports"), raw["outbound_ports"])[1],
        outbound_exclude_ports=c.parse_port_list(f("outbound_exclude_ports"), raw["outbound_exclude_ports"])[1],
        kube_virt_interfaces=c.parse_interfaces(f("kube_virt_interfaces"), raw["kube_virt_interfaces"]),
        redirect_dns=raw.boolean("redirect_dns"),
        capture_all_dns=raw.boolean("capture_all_dns"),
        drop_invalid=raw.boolean("drop_invalid"),
        dual_stack=raw.boolean("dual_stack"),
        owner_groups=c.parse_owner_groups(f("owner_groups_include"), raw["owner_groups_include"],
                                          f("owner_groups_exclude"), raw["owner_groups_exclude"]),
        ipv4_loopback_cidr=c.parse_loopback_cidr(f("ipv4_loopback_cidr"), raw["ipv4_loopback_cidr"]),
    )
    c.require_distinct_ports([(f("envoy_port"), cfg.proxy_port),
                              (f("inbound_capture_port"), cfg.inbound_capture_port),
                              (f("inbound_tunnel_port"), cfg.inbound_tunnel_port)])
    return cfg


def build_run_options(raw: _Raw, cleanup: bool) -> RunOptions:
    binary = raw["force_iptables_binary"].strip()
    if binary not in ("", "legacy", "nft"):
        raise ConfigError(raw.flag("force_iptables_binary"), binary, "expected legacy or nft")
    netns = raw["network_namespace"].strip()
    if netns and ("\x00" in netns or (not netns.startswith("/") and "/" in netns)):
        raise ConfigError(raw.flag("network_namespace"), netns, "expected a path or a name in /var/run/netns")
    native = raw.boolean("native_nftables")
    if native and raw["backend"].strip().lower() == "libiptc":
        raise ConfigError(raw.flag("backend"), raw["backend"], "--native-nftables writes nft, not libiptc")
    return RunOptions(
        dry_run=raw.boolean("dry_run"),
        cleanup_only=cleanup or raw.boolean("cleanup_only"),
        reconcile=raw.boolean("reconcile"),
        force_apply=raw.boolean("force_apply"),
        skip_rule_apply=raw.boolean("skip_rule_apply"),
        run_validation=raw.boolean("run_validation"),
        probe_port=raw.port("probe_port"),
        probe_timeout=c.parse_duration(raw.flag("probe_timeout"), raw["probe_timeout"]),
        network_namespace=netns,
        force_iptables_binary=binary,
        native_nftables=native,
        backend=raw.choice("backend", ("restore", "libiptc")),
        ipv6=raw.choice("ipv6", ("auto", "on", "off")),
        resolv_conf=raw["resolv_conf"],
        output=raw.choice("output", ("restore", "commands", "json", "nft")),
        log_format=raw.choice("log_format", ("text", "json")),
    )


def build_settings(given: Mapping[str, Any], env: Mapping[str, str], *, cleanup: bool = False) -> Settings:
    """Validate raw flag values (None = not given) and the environment into Settings."""
    from istio_iptables.model.hostfacts import default_proxy_uid

    raw = _Raw(given, env)
    envoy_user = env.get("ENVOY_USER")
    default_uid = "" if raw["proxy_uid"].strip() else default_proxy_uid(envoy_user)
    run = build_run_options(raw, cleanup)
    return Settings(capture=build_capture(raw, default_uid), run=run)


def _show_help(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


def help_option(func: Any) -> Any:
    """Our own -h/--help for every command: click's built-in one asks gettext for its
    help text at every start, which searches the locale directories (~2 ms of CPU per
    pod)."""
    return click.option("-h", "--help", is_flag=True, expose_value=False, is_eager=True, callback=_show_help,
                        help="Show this message and exit.")(func)


def add_options(func: Any, exclude: Sequence[str] = (), only: Collection[str] | None = None) -> Any:
    """Every Istio flag as a click option (`exclude`: dests a subcommand defines itself,
    e.g. explain's own --output; `only`: just these dests, see `named_options`)."""
    for opt in reversed(OPTIONS):
        if opt.dest in exclude or (only is not None and opt.dest not in only):
            continue
        decls = [opt.long] + ([opt.short] if opt.short else [])
        env_note = " [env: " + ", ".join(opt.envs) + "]" if opt.envs else ""
        if opt.is_flag:
            # --no-X is where normalize_argv puts a Go-style --X=false: an explicit false
            # must beat the environment, as in Istio.
            decls[0] = f"{opt.long}/{_negated(opt.long)}"
            func = click.option(*decls, opt.dest, is_flag=True, default=None, help=opt.help + env_note)(func)
        else:
            default_note = f" [default: {opt.default}]" if opt.default else ""
            func = click.option(*decls, opt.dest, default=None, metavar="VALUE",
                                help=opt.help + default_note + env_note)(func)
    return func


def _negated(long: str) -> str:
    return "--no-" + long[2:]


def named_options(argv: Sequence[str]) -> frozenset[str] | None:
    """The dests of the options that normalized `argv` may name; None when it asks for
    help, which lists them all.  click builds and parses only these: an init container
    names 8 of the 41, and each option click builds and fills in costs ~0.14 M
    instructions at every start (4.7 M for the 33 never given).  Not declaring an option
    changes nothing for the command: `build_settings` reads an option click did not
    return as not given (its environment variable, then its default), and an unknown
    flag is an error either way.  Generous by design (every letter of `-abc`, every
    `--name` before `=`), since an option left out that is given would be refused."""
    dests = {}
    for opt in OPTIONS:
        dests[opt.long] = opt.dest
        if opt.is_flag:
            dests[_negated(opt.long)] = opt.dest
        if opt.short:
            dests[opt.short[1]] = opt.dest
    named = set()
    for arg in argv:
        if arg.startswith("--"):
            name = arg.partition("=")[0]
            if name == "--help":
                return None
            if name in dests:
                named.add(dests[name])
        elif arg.startswith("-"):
            if "h" in arg:
                return None
            named.update(dests[letter] for letter in arg[1:] if letter in dests)
    return frozenset(named)


# Logging flags of Istio's agent, which Istio's injector passes to istio-init.
ISTIO_LOG_FLAGS_WITH_VALUE = frozenset({"--log_output_level", "--log_caller", "--log_stacktrace_level",
                                        "--log_target", "--log_rotate", "--log_rotate_max_age",
                                        "--log_rotate_max_size", "--log_rotate_max_backups"})
# The injector's first argument: the subcommand of Istio's agent binary.
AGENT_SUBCOMMAND = "istio-iptables"
_TAKES_VALUE = frozenset(name for o in OPTIONS if not o.is_flag for name in (o.long, o.short) if name)


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Accept what Istio's injector and pflag users pass: Go-style `--flag=true|false`
    for booleans, the agent's logging flags (`--log_as_json` selects JSON logs, the
    others are ignored), and the leading `istio-iptables` subcommand word."""
    flags = {o.long for o in OPTIONS if o.is_flag}
    # Short letters become long names: click first tries a bare "-p" as a long option,
    # and its failed lookup imports difflib and gettext (~3 ms at every pod start).
    long_of = {o.short: o.long for o in OPTIONS if o.short}
    out: list[str] = []
    skip_value = False
    # The agent word may also follow our own flags, as when `istio-iptables pod` output
    # is pasted after `istio-iptables --dry-run`: the first positional argument only.
    word_allowed = True
    value_next = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        if value_next:  # an option's value, never the agent word
            value_next = False
            out.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if not arg.startswith("-") or arg == "-":
            if word_allowed and arg == AGENT_SUBCOMMAND:
                word_allowed = False
                continue
            word_allowed = False
        elif not eq and arg in _TAKES_VALUE:
            value_next = True
        if name in ISTIO_LOG_FLAGS_WITH_VALUE:
            skip_value = not eq
            continue
        if name == "--log_as_json":
            if not eq or c.parse_bool(name, value):
                out += ["--log-format", "json"]
            continue
        if eq and name in flags:
            out.append(name if c.parse_bool(name, value) else _negated(name))
            continue
        out.append(long_of.get(arg, arg))
    return out


def wants_from_pod(argv: Sequence[str]) -> bool:
    """`--from-pod FILE` given: the caller expands it (inject.frompod) before parsing."""
    return any(arg == "--from-pod" or arg.startswith("--from-pod=") for arg in argv)


def with_pod_flags(argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], Mapping[str, str]]:
    """`--from-pod FILE` replaced by the flags of the manifest's pod template (first, so
    explicit flags win) and its env under `env`; unchanged without it.  Raises
    ConfigError for a manifest that does not give one pod template."""
    if not wants_from_pod(argv):
        return list(argv), env
    from istio_iptables.inject.frompod import expand_from_pod

    return expand_from_pod(argv, env)


def wants_json_logs(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether these arguments ask for JSON logs, read leniently (it must not fail: the
    answer decides how a usage error about the very same arguments is printed)."""
    fmt = env.get("ISTIO_IPTABLES_LOG_FORMAT", "text").strip().lower()
    for index, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name == "--log-format":
            nxt = argv[index + 1] if index + 1 < len(argv) else ""
            fmt = (value if eq else nxt).strip().lower()
        elif name == "--log_as_json":
            if not eq or value.strip() in c.TRUE_WORDS:
                fmt = "json"
            elif value.strip() in c.FALSE_WORDS or not value.strip():
                fmt = "text"  # (a value that is neither leaves the format as it was)
    return fmt == "json"


def parse_args(argv: Sequence[str], env: Mapping[str, str], *, cleanup: bool = False) -> Settings:
    """Istio's flags as a list (as the CNI plugin's `"capture"` key and `explain` take
    them) into Settings, through the same table and validation as the command line.
    Raises ConfigError naming the flag and value."""
    argv, env = with_pod_flags(argv, env)
    given: dict[str, Any] = {}
    args = normalize_argv(argv)

    def collect(**values: Any) -> None:
        given.update(values)

    command = click.command(add_help_option=False)(add_options(collect, only=named_options(args)))
    try:
        command.main(args=args, standalone_mode=False)
    except click.exceptions.NoSuchOption as err:
        raise ConfigError("the flags", err.option_name, "unknown flag") from None
    except click.UsageError as err:
        raise ConfigError("the flags", " ".join(argv), " ".join(err.format_message().split())) from None
    return build_settings(given, env, cleanup=cleanup)
