"""--kubeconfig / --namespace for the kubectl plugin commands that talk to a cluster (status, report, promote, abort)."""

from __future__ import annotations

import argparse

from . import KubeClient, discover


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's, else default)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")


def connect(args: argparse.Namespace) -> tuple[KubeClient, str]:
    conn = discover(args.kubeconfig)
    return KubeClient(conn), args.namespace or conn.default_namespace or "default"
