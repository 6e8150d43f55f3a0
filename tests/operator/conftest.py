"""Fixtures over the kmock harness (see harness.py for what is emulated and what is not)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from .harness import Cluster, OperatorProcess, cluster


@pytest_asyncio.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Cluster]:
    """An emulated cluster (kmock) with the tuneloop resources declared."""
    async with cluster(tmp_path) as kc:
        yield kc


@pytest_asyncio.fixture
async def operator_proc(kube: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[OperatorProcess]:
    """The real operator (`tuneloop-operator --all-namespaces`) running against `kube`."""
    op = OperatorProcess(kube.kubeconfig, tmp_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(op.tail())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
