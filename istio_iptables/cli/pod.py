"""`istio-iptables pod FILE`: the init container Istio's sidecar injector would add to
each pod template of a manifest, computed from its annotations, the injector's Helm
values and the mesh config (see istio_iptables.inject for the rules and their sources).

Exit statuses: 0 printed, 2 bad input (an annotation the injector refuses, a file that
is not the YAML we need): one line on stderr naming it.
"""

import json
import shlex
import sys
from collections.abc import Sequence

import click

PROG = "istio-iptables pod"
EXIT_USAGE = 2


@click.command(name="pod", context_settings={"max_content_width": 110, "help_option_names": ["-h", "--help"]})
@click.argument("manifest", metavar="FILE")
@click.option("--values", "values_path", metavar="FILE",
              help="The injector's Helm values: the istio-sidecar-injector ConfigMap's data.values (JSON), that "
                   "ConfigMap, an IstioOperator, or istiod chart values. Default: Istio's chart defaults.")
@click.option("--mesh-config", "mesh_path", metavar="FILE",
              help="The mesh config (the `istio` ConfigMap's data.mesh, or that ConfigMap): listener ports, "
                   "defaultConfig.interceptionMode and proxyMetadata. Default: the values' meshConfig, "
                   "else Istio's defaults.")
@click.option("--output", type=click.Choice(["args", "json"]), default="args", show_default=True,
              help="args: one shell-quoted command line per pod template, ready to paste after "
                   "`istio-iptables --dry-run` (or a # comment saying why nothing is injected); "
                   "json: a list with one entry per pod template, null or {name, args, env}.")
def command(manifest: str, values_path: str | None, mesh_path: str | None, output: str) -> None:
    """Show the istio-init (or, with Istio CNI, istio-validation) container Istio's
    sidecar injector would add to each pod template in FILE (`-` for stdin): a Pod,
    Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, a List, or several
    YAML documents, in document order.

    Nothing is injected for hostNetwork pods, sidecar.istio.io/inject "false" (label
    or annotation), or interception mode NONE. An annotation the injector refuses
    exits 2 with one line naming it. The init container's env (the proxy config's
    proxyMetadata, e.g. ISTIO_META_DNS_CAPTURE) is shown as a trailing comment in args
    output; `istio-iptables --from-pod FILE` applies flags and env together."""
    from istio_iptables.inject.inputs import injections

    found = injections(manifest, values_path, mesh_path)
    if output == "json":
        entries = [inj.container.as_json() if inj.container else None for _, inj in found]
        click.echo(json.dumps(entries, indent=2))
        return
    for template, inj in found:
        if inj.container is None:
            click.echo(f"# {template.where}: nothing injected: {inj.reason}")
            continue
        line = shlex.join(inj.container.args)
        if inj.container.env:
            line += "  # env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in inj.container.env)
        click.echo(line)


def main(argv: Sequence[str]) -> int:
    """`istio-iptables pod ...` → exit status."""
    from istio_iptables.model.config import ConfigError

    try:
        command.main(args=list(argv), prog_name=PROG, standalone_mode=False)
    except SystemExit as done:
        return int(done.code or 0)
    except ConfigError as err:  # ManifestError is one too
        _error(str(err))
        return EXIT_USAGE
    except click.UsageError as err:
        _error(err.format_message())
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
