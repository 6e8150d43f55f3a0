"""`kubectl tuneloop promote|abort ROLLOUT`: act on a Rollout's candidate by hand.

promote: the candidate becomes stable now, skipping the remaining steps (also ends a pause).
abort:   all traffic back to stable, the canary scaled down, the candidate marked RolledBack.
Both set a one-shot flag in the spec (spec.promote / spec.abort) that the operator clears once done.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from tuneloop.operator.kube import KubeClient
from tuneloop.operator.kube import resources as r
from tuneloop.operator.kube.cliargs import add_cluster_arguments, run_connected

ACTIVE = ("Progressing", "Paused", "Degraded")
DONE = {"promote": "Promoted", "abort": "Aborted"}


def add_arguments_for(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("rollout", help="Rollout name")
    add_cluster_arguments(p)
    p.add_argument("--wait", action="store_true", help=f"wait until the Rollout is {DONE.get(name, 'done')}")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)")
    p.set_defaults(action=name)


def refusal(action: str, obj: dict[str, Any]) -> str | None:
    """Why `action` cannot apply to this Rollout now, or None (pure; tested)."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    who = f"Rollout {meta.get('namespace')}/{meta['name']}"
    phase = status.get("phase")
    cand = (spec.get("candidate") or {}).get("name")
    if not cand:
        return f"{who} has no candidate (spec.candidate is empty); nothing to {action}"
    if cand == status.get("stableModelVersion"):
        return f"{who}: {cand} is already stable"
    if status.get("candidateModelVersion") == cand and phase not in ACTIVE:
        return f"{who}: the rollout of {cand} is over (phase {phase}); set a new spec.candidate to roll out again"
    if spec.get(action):
        return f"{who}: {action} was already requested and is waiting for the operator"
    return None


def describe(obj: dict[str, Any]) -> str:
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    steps = len(spec.get("steps") or [])
    i = st.get("currentStepIndex")
    where = f"step {i + 1}/{steps}" if i is not None and i < steps else "no step yet"
    return (
        f"candidate {(spec.get('candidate') or {}).get('name')} ({where}, canary weight {st.get('canaryWeight', 0)}%), "
        f"stable {st.get('stableModelVersion') or (spec.get('stable') or {}).get('name')}"
    )


async def _act(args: argparse.Namespace, client: KubeClient, ns: str) -> int:
    obj = await client.get(r.ROLLOUTS, ns, args.rollout)
    if obj is None:
        print(f"kubectl tuneloop {args.action}: Rollout {ns}/{args.rollout} not found", file=sys.stderr)
        return 1
    why = refusal(args.action, obj)
    if why:
        print(f"kubectl tuneloop {args.action}: {why}", file=sys.stderr)
        return 1
    await client.patch(r.ROLLOUTS, ns, args.rollout, {"spec": {args.action: True}})
    print(f"{args.action} requested for Rollout {ns}/{args.rollout}: {describe(obj)}")
    if not args.wait:
        return 0
    want = DONE[args.action]
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        obj = await client.get(r.ROLLOUTS, ns, args.rollout) or {}
        st = obj.get("status") or {}
        if st.get("phase") == want:
            print(f"Rollout {ns}/{args.rollout} is {want}: {st.get('message', '')}")
            return 0
        await asyncio.sleep(0.5)
    print(f"kubectl tuneloop {args.action}: Rollout {ns}/{args.rollout} not {want} after {args.timeout:g}s "
          f"(phase {(obj.get('status') or {}).get('phase')}); is the operator running?", file=sys.stderr)  # fmt: skip
    return 1


def run(args: argparse.Namespace) -> int:
    return run_connected(args, args.action, lambda client, ns: _act(args, client, ns))
