"""--kubeconfig / --namespace for the kubectl plugin commands that talk to a cluster (status, report, promote, abort)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from . import ApiError, KubeClient, discover


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig context's, else default)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")


def connect(args: argparse.Namespace) -> tuple[KubeClient, str]:
    conn = discover(args.kubeconfig)
    return KubeClient(conn), args.namespace or conn.default_namespace or "default"


def run_connected(args: argparse.Namespace, command: str, body: Callable[[KubeClient, str], Awaitable[int]]) -> int:
    """`body(client, namespace)` on a client from the command line's cluster arguments, closed afterwards; an API
    error is `kubectl tuneloop <command>: <error>` on stderr and exit status 1."""

    async def go() -> int:
        client, ns = connect(args)
        try:
            return await body(client, ns)
        except ApiError as exc:
            print(f"kubectl tuneloop {command}: {exc}", file=sys.stderr)
            return 1
        finally:
            await client.close()

    return asyncio.run(go())
