"""The command line: Istio's flags and environment, one-line errors, exit status 2."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from istio_iptables.cli.flags import OPTIONS
from istio_iptables.cli.main import main

STANDARD = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
            "-d", "15090,15021,15020"]
SEED = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "", "-d", "15020"]


def dry(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["--dry-run", "--ipv6", "off", *args]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]


def error_of(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["--dry-run", "--ipv6", "off", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_standard_profile_captures_inbound_except_proxy_ports_and_all_outbound(
        capsys: pytest.CaptureFixture[str]) -> None:
    rules = dry(capsys, *STANDARD)
    assert "-A PREROUTING -p tcp -j ISTIO_INBOUND" in rules
    for port in ("15090", "15021", "15020", "15008"):
        assert f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" in rules
    assert rules.index("-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN") < rules.index(
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
    assert rules[-2:] == ["-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "COMMIT"]
    assert "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN" in rules
    assert "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN" in rules
    assert "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN" in rules


def test_seed_arguments_capture_no_inbound(capsys: pytest.CaptureFixture[str]) -> None:
    rules = dry(capsys, *SEED)
    assert not [r for r in rules if r.startswith("-A PREROUTING")]
    assert "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT" not in rules
    assert not [r for r in rules if "--dport 15020" in r]  # -d only matters with -b '*'
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in rules


def test_environment_is_read_and_flags_beat_it(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_INBOUND_PORTS", "7000")
    monkeypatch.setenv("ENVOY_PORT", "16001")
    rules = dry(capsys)
    assert "-A ISTIO_INBOUND -p tcp --dport 7000 -j ISTIO_IN_REDIRECT" in rules
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in rules
    rules = dry(capsys, "-b", "", "--envoy-port", "17001")
    assert not [r for r in rules if "7000" in r]
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 17001" in rules


def test_long_forms_equal_short_forms(capsys: pytest.CaptureFixture[str]) -> None:
    short = dry(capsys, *STANDARD)
    long = dry(capsys, "--envoy-port", "15001", "--inbound-capture-port", "15006", "--proxy-uid", "1337",
               "--istio-inbound-interception-mode", "REDIRECT", "--istio-service-cidr", "*",
               "--istio-service-exclude-cidr", "", "--istio-inbound-ports", "*",
               "--istio-local-exclude-ports", "15090,15021,15020")
    assert short == long


def test_go_style_boolean_values_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert dry(capsys, "--drop-invalid=true") == dry(capsys, "--drop-invalid")
    assert dry(capsys, "--drop-invalid=false") == dry(capsys)


def test_proxy_gid_defaults_to_uid_and_envoy_user_fallback(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rules = dry(capsys, "-u", "1000")
    assert "-A ISTIO_OUTPUT -m owner --gid-owner 1000 -j RETURN" in rules
    monkeypatch.setenv("ENVOY_USER", "root")
    assert "-A ISTIO_OUTPUT -m owner --uid-owner 0 -j RETURN" in dry(capsys)
    monkeypatch.setenv("ENVOY_USER", "no-such-user-here")
    assert "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN" in dry(capsys)


@pytest.mark.parametrize(("args", "flag", "value"), [
    (["-b", "80,abc"], "-b/--istio-inbound-ports", "80,abc"),
    (["-p", "70000"], "-p/--envoy-port", "70000"),
    (["-z", "0"], "-z/--inbound-capture-port", "0"),
    (["-x", "*"], "-x/--istio-service-exclude-cidr", "*"),
    (["-i", "10.0.0.0/33"], "-i/--istio-service-cidr", "10.0.0.0/33"),
    (["-i", "10.0.0.1"], "-i/--istio-service-cidr", "10.0.0.1"),
    (["-m", "MAGIC"], "-m/--istio-inbound-interception-mode", "MAGIC"),
    (["-c", "eth0;reboot"], "-c/--istio-exclude-interfaces", "eth0;reboot"),
    (["-k", "a-very-long-interface-name"], "-k/--kube-virt-interfaces", "a-very-long-interface-name"),
    (["-u", "$(id)"], "-u/--proxy-uid", "$(id)"),
    (["-r", "254"], "-r/--istio-inbound-tproxy-route-table", "254"),
    (["-d", "*"], "-d/--istio-local-exclude-ports", "*"),
    (["--probe-timeout", "soon"], "--probe-timeout", "soon"),
    (["--force-iptables-binary", "magic"], "--force-iptables-binary", "magic"),
    (["-p", "15006"], "-z/--inbound-capture-port", "15006"),
])
def test_bad_values_give_one_line_naming_flag_and_value(capsys: pytest.CaptureFixture[str], args: list[str],
                                                        flag: str, value: str) -> None:
    line = error_of(capsys, *args)
    assert flag in line
    assert repr(value) in line


@pytest.mark.parametrize(("args", "flag", "value"), [
    (["-p", "\u00b2"], "-p/--envoy-port", "\u00b2"),                  # superscript two: int() raised
    (["-p", "\u0663"], "-p/--envoy-port", "\u0663"),                  # Arabic-Indic three: read as 3
    (["-z", "1\u0665006"], "-z/--inbound-capture-port", "1\u0665006"),
    (["-u", "\u0663"], "-u/--proxy-uid", "\u0663"),
    (["-g", "\uff11\uff13\uff13\uff17"], "-g/--proxy-gid", "\uff11\uff13\uff13\uff17"),  # fullwidth 1337
    (["-t", "\u0663"], "-t/--istio-inbound-tproxy-mark", "\u0663"),
    (["-t", "1_337"], "-t/--istio-inbound-tproxy-mark", "1_337"),       # Go's strconv: no underscores
    (["-r", "\u0661\u0663\u0663"], "-r/--istio-inbound-tproxy-route-table", "\u0661\u0663\u0663"),
    (["-b", "8\u0660"], "-b/--istio-inbound-ports", "8\u0660"),
    (["-i", "10.0.0.0/\u0668"], "-i/--istio-service-cidr", "10.0.0.0/\u0668"),
    (["--iptables-probe-port", "\u0663"], "--iptables-probe-port", "\u0663"),
    (["--probe-timeout", "nan"], "--probe-timeout", "nan"),
    (["--probe-timeout", "inf"], "--probe-timeout", "inf"),
    (["--probe-timeout", "\u0665s"], "--probe-timeout", "\u0665s"),
    (["--probe-timeout", "1e3"], "--probe-timeout", "1e3"),
    (["-u", ","], "-u/--proxy-uid", ","),                                # printed `--uid-owner  -j`
    (["-g", " , "], "-g/--proxy-gid", " , "),
])
def test_numbers_are_ascii_digits_and_lists_not_empty(capsys: pytest.CaptureFixture[str], args: list[str],
                                                      flag: str, value: str) -> None:
    line = error_of(capsys, *args)
    assert flag in line
    assert repr(value) in line
    assert "Traceback" not in line


def test_an_explicit_false_flag_beats_the_environment(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROP_INVALID", "true")
    assert any("INVALID" in r for r in dry(capsys))
    assert not any("INVALID" in r for r in dry(capsys, "--drop-invalid=false"))
    monkeypatch.setenv("DROP_INVALID", "false")
    assert any("INVALID" in r for r in dry(capsys, "--drop-invalid=true"))
    monkeypatch.setenv("DUAL_STACK", "true")
    monkeypatch.setenv("REDIRECT_DNS", "1")
    assert dry(capsys, "--dual-stack=false", "--redirect-dns=false", "--capture-all-dns") == \
        dry(capsys, "--capture-all-dns", "--dual-stack=0", "--redirect-dns=F")


@pytest.mark.parametrize("how", [["--log-format", "json"], ["--log-format=json"], ["--log_as_json"],
                                 ["--log_as_json=true"], "env"])
@pytest.mark.parametrize("bad", [["-p", "x"], ["--no-such-flag"], ["-p"], ["-u", ","], ["purge"],
                                 ["--log_as_json=maybe"], ["--log-format", "json", "--log-format", "xml"]])
def test_usage_errors_are_one_json_object_under_json_logging(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             how: list[str] | str, bad: list[str]) -> None:
    if how == "env":
        monkeypatch.setenv("ISTIO_IPTABLES_LOG_FORMAT", "json")
        args = bad
    else:
        assert isinstance(how, list)
        args = [*how, *bad]
    if bad[-2:] == ["--log-format", "xml"]:
        args = bad  # the last --log-format wins: JSON was asked for, then an unknown format
    status = main(["--dry-run", "--ipv6", "off", *args])
    assert status == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    if bad[-2:] != ["--log-format", "xml"]:
        record = json.loads(lines[0])
        assert record["level"] == "error" and "error" in record["msg"]


def test_resolv_conf_lines_that_do_not_decode_are_skipped(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: pytest.TempPathFactory) -> None:
    resolv = tmp_path / "resolv.conf"  # type: ignore[operator]
    resolv.write_bytes(b"nameserver 10.96.0.10\n# \xe9\xff\nnameserver \xff10.0.0.1\nnameserver 10.96.0.11\x00\n"
                       b"nameserver 10.96.0.12\n")
    rules = dry(capsys, *STANDARD, "--redirect-dns", "--resolv-conf", str(resolv))
    dns = [r for r in rules if "--dport 53" in r and " -d " in r]
    assert any("10.96.0.10/32" in r for r in dns) and any("10.96.0.12/32" in r for r in dns)
    assert not any("10.0.0.1/" in r or "10.96.0.11" in r for r in dns)


def test_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.1/32")
    assert "$ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR" in error_of(capsys)
    monkeypatch.delenv("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR")
    monkeypatch.setenv("ISTIO_LOCAL_EXCLUDE_PORTS", "x")
    assert "$ISTIO_LOCAL_EXCLUDE_PORTS" in error_of(capsys, "-b", "*")


def test_unknown_flag_and_missing_value_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--no-such-flag" in error_of(capsys, "--no-such-flag")
    assert "-p" in error_of(capsys, "-p")
    assert "only 'clean'" in error_of(capsys, "purge")


def test_trailing_commas_are_ignored_as_istio_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert dry(capsys, "-b", "80,", "-i", "10.0.0.0/8,") == dry(capsys, "-b", "80", "-i", "10.0.0.0/8")


def test_outputs_commands_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "--ipv6", "on", "--output", "commands", "-m", "TPROXY", "-b", "*"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert "iptables -t nat -N ISTIO_INBOUND" in commands
    assert "ip6tables -t mangle -A ISTIO_DIVERT -j ACCEPT" in commands
    assert "ip -4 rule add fwmark 1337 lookup 133" in commands
    assert "ip -6 route add local default dev lo table 133" in commands
    assert "ip -6 addr add ::6/128 dev lo" in commands
    assert main(["-n", "--ipv6", "off", "--output", "json", "-i", "*"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["ipv4"]["nat"]["rules"][-1] == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"
    assert "ipv6" not in plan


def test_help_mentions_the_t_flag_change_and_console_script_works() -> None:
    done = subprocess.run([sys.executable, "-m", "istio_iptables", "--help"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0
    assert "unit test" in done.stdout and "--istio-inbound-tproxy-mark" in done.stdout
    for option in OPTIONS:
        assert option.long in done.stdout


_VALUE = st.one_of(
    st.text(alphabet=string.printable, max_size=20),
    st.text(max_size=20),  # all of Unicode: other digits, separators, surrogates, NUL
    st.builds(lambda a, b: a + b, st.sampled_from(["1", "15", "10.0.0.0/", "eth", "0x"]),
              st.text(st.characters(categories=["Nd", "No", "Zs", "Cc"]), min_size=1, max_size=3)),
    st.sampled_from(["*", "", ",", "1,2,", "0", "65536", "10.0.0.0/8", "::/0", "fe80::1/64", "eth0", "REDIRECT",
                     "TPROXY", "true", "1337", "x" * 40]),
)
_FLAGS = ["-p", "-z", "-e", "-u", "-g", "-m", "-t", "-r", "-b", "-d", "-c", "-i", "-x", "-q", "-o", "-k",
          "--probe-timeout", "--iptables-probe-port", "--force-iptables-binary", "--output", "--ipv6",
          "--backend", "--log-format", "--resolv-conf", "--network-namespace", "--redirect-dns=",
          "--dual-stack=", "--native-nftables=", "--drop-invalid=", "--log_as_json="]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_FLAGS), _VALUE), max_size=6), st.booleans())
def test_random_flag_values_exit_0_or_2_with_one_line(capsys: pytest.CaptureFixture[str],
                                                      pairs: list[tuple[str, str]], as_json: bool) -> None:
    argv = ["--dry-run", "--ipv6", "on"] + (["--log_as_json"] if as_json else [])
    for flag, value in pairs:
        argv += [flag + value] if flag.endswith("=") else [flag, value]
    json_logs = as_json and not any(flag in ("--log-format", "--log_as_json=") for flag, _ in pairs)
    status = main(argv)
    captured = capsys.readouterr()
    assert status in (0, 2)
    assert "Traceback" not in captured.err
    if status == 2:
        assert len(captured.err.splitlines()) == 1, captured.err
    if json_logs:
        for line in captured.err.splitlines():  # under JSON logging every line is one JSON object
            assert isinstance(json.loads(line), dict), line


def test_istio_injector_arguments_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    injected = ["istio-iptables", *STANDARD, "--log_output_level=default:info", "--log_as_json",
                "--log_caller", "default", "--run-validation=false"]
    assert dry(capsys, *injected[1:]) == dry(capsys, *STANDARD)
    assert main(["istio-iptables", "--dry-run", "--ipv6", "off", *STANDARD, "--log_output_level=default:info"]) == 0
    assert "ISTIO_OUTPUT" in capsys.readouterr().out


def test_native_nftables_dry_run_prints_istio_nft_ruleset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-n", "--ipv6", "off", "--native-nftables", *STANDARD]) == 0
    nft = capsys.readouterr().out.splitlines()
    assert nft[0] == "add table inet istio-proxy-nat"
    assert "add rule inet istio-proxy-nat istio-output counter jump istio-redirect" in nft
    assert main(["-n", "--ipv6", "off", "--output", "nft", *STANDARD]) == 0
    assert capsys.readouterr().out.splitlines() == nft


_NAMES = [name for o in OPTIONS for name in (o.long, o.short, f"--no-{o.long[2:]}" if o.is_flag else None) if name]
_TOKEN = st.one_of(
    st.sampled_from(_NAMES),
    st.builds(lambda name, value: f"{name}={value}", st.sampled_from(_NAMES), st.sampled_from(["1", "", "x", "-p"])),
    st.builds(lambda letters: "-" + "".join(letters),  # clustered and attached short options
              st.lists(st.sampled_from([o.short[1] for o in OPTIONS if o.short] + ["9", "Q"]), min_size=1, max_size=3)),
    st.sampled_from(["15001", "*", "", "-", "--", "clean", "--bogus", "-y", "10.0.0.0/8"]),
)


@given(st.lists(_TOKEN, max_size=8))
@settings(max_examples=400, deadline=None)
def test_click_given_only_the_named_options_reads_any_argv_as_with_all_of_them(argv: list[str]) -> None:
    """click builds only the options an argv names (flags.named_options); whatever the
    argv, the values it returns and the errors it raises must be those of the full
    table (an unknown flag: the same name; other usage errors: the same words)."""
    import click

    from istio_iptables.cli.flags import add_options, named_options, normalize_argv
    from istio_iptables.model.config import ConfigError

    def parse(only: frozenset[str] | None) -> object:
        given: dict[str, object] = {}

        @click.command(add_help_option=False)
        @click.argument("action", required=False)
        def collect(action: str | None, **values: object) -> None:
            given.update({k: v for k, v in values.items() if v is not None}, action=action)

        try:
            add_options(collect, only=only).main(args=args, standalone_mode=False)
        except click.exceptions.NoSuchOption as err:
            return ("unknown", err.option_name)
        except click.UsageError as err:
            return ("usage", err.format_message())
        return given

    try:
        args = normalize_argv(argv)
    except ConfigError:  # a Go-style --flag=value that is not a boolean: refused before click
        return
    assert parse(named_options(args)) == parse(None)


def test_an_init_containers_argv_names_eight_options_and_help_names_all() -> None:
    from istio_iptables.cli.flags import named_options, normalize_argv

    assert named_options(normalize_argv(STANDARD)) == frozenset({
        "envoy_port", "inbound_capture_port", "proxy_uid", "mode", "outbound_cidrs", "outbound_exclude_cidrs",
        "inbound_ports", "inbound_exclude_ports"})
    assert named_options(normalize_argv([*STANDARD, "--help"])) is None
    assert named_options(normalize_argv(["-nh"])) is None


def test_the_image_launcher_runs_the_command_as_python_m_does(tmp_path: Path) -> None:
    """The console scripts the image installs and the benchmark measures (cli.launcher)
    print the same plan and exit with the same one-line error as `python -m`."""
    from istio_iptables.cli import launcher

    script = tmp_path / "istio-iptables"
    script.write_text(launcher(sys.executable, "istio_iptables.cli:entry"))
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ISTIO", "INBOUND", "OUTBOUND", "KUBE"))}
    for args in (["--dry-run", "--ipv6", "off", *STANDARD], ["--dry-run", "--ipv6", "off", "-p", "70000"]):
        by_script = subprocess.run([str(script), *args], capture_output=True, text=True, env=env, check=False)
        by_module = subprocess.run([sys.executable, "-m", "istio_iptables", *args], capture_output=True, text=True,
                                   env=env, check=False)
        assert (by_script.returncode, by_script.stdout) == (by_module.returncode, by_module.stdout)
        assert by_script.stderr == by_module.stderr  # a dry run logs nothing, the error has no time
    assert by_script.returncode == 2 and "70000" in by_script.stderr
