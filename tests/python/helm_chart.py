"""Helm on the browserfleet chart, through helm-sdkpy (Helm v4's own Go
library, loaded with cffi; installed by scripts/install-helm.sh).

    helm_chart.py lint CHART [--values FILE]
    helm_chart.py render CHART --case NAME[:NAMESPACE/RELEASE][=VALUES_FILE] ... [--kubeconfig K]
    helm_chart.py install CHART --release R --namespace NS [--values FILE] [--wait] [--timeout S] [--kubeconfig K]
    helm_chart.py upgrade CHART --release R --namespace NS [--values FILE] [--wait] [--timeout S] [--kubeconfig K]
    helm_chart.py status --release R --namespace NS [--kubeconfig K]
    helm_chart.py uninstall --release R --namespace NS [--kubeconfig K]

Every command prints one JSON object on stdout and exits 0, or 1 when Helm
refused (the JSON then has "error": Helm's message).

lint needs no cluster. Helm's lint reads only the chart's own values.yaml,
and helm-sdkpy passes no values to it, so --values lints a copy of the chart
whose values.yaml is the chart's values with FILE merged over them (as
`helm lint --values FILE` merges them). helm-sdkpy reports where each finding
is and its severity, not its text (Go errors serialize as {}).

render is `helm template` as helm-sdkpy can do it: helm-sdkpy has no
template or dry-run action, so each case is a real `helm install` (no wait)
of release RELEASE (bf-NAME) into namespace NAMESPACE (bf-chart-NAME) of the
cluster KUBECONFIG names, its manifest and notes read from the release, then an uninstall. The
cases share the chart's CRDs, which Helm installs with the first and leaves
in place. Output: {"cases": {NAME: {"manifest": ..., "notes": ...} or
{"error": ...}}}; exits 0 even when a case was refused (a refusal is what
some cases are for).

install, upgrade, status and uninstall are Helm's; install creates the
namespace. --kubeconfig defaults to $KUBECONFIG.
"""

import argparse
import asyncio
import copy
import json
import os
import shutil
import sys
import tempfile

import yaml

import helm_sdkpy as helm

# Severities of Helm's lint findings (helm.sh/helm/v4/pkg/lint/support).
SEVERITIES = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


def merged(base, override):
    """`override` merged over `base`, maps key by key, as Helm merges values."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = merged(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def read_values(path):
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    return values or {}


def lint(chart, values_file):
    with tempfile.TemporaryDirectory(prefix="bf-helm-lint.") as work:
        path = chart
        if values_file:
            path = os.path.join(work, os.path.basename(os.path.abspath(chart)))
            shutil.copytree(chart, path)
            with open(os.path.join(path, "values.yaml"), encoding="utf-8") as f:
                defaults = yaml.safe_load(f) or {}
            with open(os.path.join(path, "values.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(merged(defaults, read_values(values_file)), f)
        result = asyncio.run(helm.Lint(helm.Configuration()).run(path))
    findings = [
        {"path": m.get("Path"), "severity": SEVERITIES.get(m.get("Severity"), "unknown")}
        for m in result.get("Messages") or []
    ]
    errors = [f for f in findings if f["severity"] == "error"]
    return {"charts": result.get("TotalChartsLinted"), "findings": findings, "errors": errors}, not errors


def summary(release):
    """A release without its chart (every file of it, base64): what it is,
    its values and its manifest."""
    release = release.get("release", release)
    keep = ("name", "namespace", "version", "info", "config", "manifest")
    return {key: release[key] for key in keep if key in release}


def configuration(namespace, kubeconfig):
    return helm.Configuration(namespace=namespace, kubeconfig=kubeconfig or os.environ.get("KUBECONFIG"))


async def install(chart, release, namespace, values, kubeconfig, wait, timeout):
    config = configuration(namespace, kubeconfig)
    installed = await helm.Install(config).run(
        release, chart, values=values, create_namespace=True, wait=wait, timeout=timeout
    )
    return summary(installed)


async def upgrade(chart, release, namespace, values, kubeconfig, wait, timeout):
    config = configuration(namespace, kubeconfig)
    upgraded = await helm.Upgrade(config).run(
        release, chart, values=values, wait=wait, timeout=timeout
    )
    return summary(upgraded)


async def status(release, namespace, kubeconfig):
    return summary(await helm.Status(configuration(namespace, kubeconfig)).run(release))


async def uninstall(release, namespace, kubeconfig):
    uninstalled = await helm.Uninstall(configuration(namespace, kubeconfig)).run(release, wait=False)
    return summary(uninstalled)


async def render(chart, cases, kubeconfig):
    out = {}
    for case in cases:
        spec, _, values_file = case.partition("=")
        name, _, where = spec.partition(":")
        namespace, _, release = where.partition("/")
        release, namespace = release or f"bf-{name}", namespace or f"bf-chart-{name}"
        try:
            values = read_values(values_file)
            installed = await install(chart, release, namespace, values, kubeconfig, False, 120)
        except helm.HelmError as error:
            out[name] = {"error": str(error)}
            continue
        # The release as Helm stored it, not only as install answered.
        stored = await status(release, namespace, kubeconfig)
        out[name] = {
            "manifest": stored.get("manifest", installed.get("manifest")),
            "notes": (stored.get("info") or {}).get("notes", ""),
            "status": (stored.get("info") or {}).get("status"),
        }
        await uninstall(release, namespace, kubeconfig)
    return {"cases": out}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("lint")
    p.add_argument("chart")
    p.add_argument("--values")
    p = commands.add_parser("render")
    p.add_argument("chart")
    p.add_argument("--case", action="append", required=True)
    p.add_argument("--kubeconfig")
    for name in ("install", "upgrade"):
        p = commands.add_parser(name)
        p.add_argument("chart")
        p.add_argument("--values")
        p.add_argument("--wait", action="store_true")
        p.add_argument("--timeout", type=int, default=300)
    for name in ("install", "upgrade", "status", "uninstall"):
        p = commands.choices[name] if name in commands.choices else commands.add_parser(name)
        p.add_argument("--release", required=True)
        p.add_argument("--namespace", required=True)
        p.add_argument("--kubeconfig")
    args = parser.parse_args(argv)

    ok = True
    try:
        if args.command == "lint":
            result, ok = lint(args.chart, args.values)
        elif args.command == "render":
            result = asyncio.run(render(args.chart, args.case, args.kubeconfig))
        elif args.command in ("install", "upgrade"):
            action = install if args.command == "install" else upgrade
            result = asyncio.run(
                action(
                    args.chart,
                    args.release,
                    args.namespace,
                    read_values(args.values),
                    args.kubeconfig,
                    args.wait,
                    args.timeout,
                )
            )
        elif args.command == "status":
            result = asyncio.run(status(args.release, args.namespace, args.kubeconfig))
        else:
            result = asyncio.run(uninstall(args.release, args.namespace, args.kubeconfig))
    except helm.HelmError as error:
        result, ok = {"error": str(error)}, False
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
