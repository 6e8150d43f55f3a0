"""Issue 25, finding 5 (and 11's terminal escapes): every read of tenant-controlled bytes in the shared operator
is bounded — rank 0's /metrics (the job's image answers it), the evaluation pod's log (limitBytes) — and the CLI
prints pod-controlled text without control characters or escape sequences."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tuneloop.cli import report_cmd
from tuneloop.cli.status_cmd import render
from tuneloop.contract.text import clean, strip_controls
from tuneloop.operator.finetunejob import progress
from tuneloop.operator.kube import Connection, KubeClient

pytestmark = pytest.mark.unit

METRICS = 'tuneloop_trainer_step{job="x",namespace="ns"} 5\ntuneloop_trainer_total_steps{job="x",namespace="ns"} 10\n'


class FakePods:
    def __init__(self, port: int):
        self.port = port

    async def list(self, res, ns, labels=None):
        return [{"metadata": {"name": "x-train-0", "labels": {"batch.kubernetes.io/job-completion-index": "0"}},
                 "status": {"phase": "Running", "podIP": "127.0.0.1"}}]


async def _metrics(req: web.Request) -> web.Response:
    return web.Response(text=METRICS)


async def _serve(handler) -> TestServer:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    app.router.add_get("/elsewhere", _metrics)
    srv = TestServer(app)
    await srv.start_server()
    return srv


async def test_rank0_metrics_over_the_cap_are_ignored_not_read_whole():
    served = {"bytes": 0}

    async def huge(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(req)
        try:
            for _ in range(256):  # 16 MiB if read to the end
                await resp.write(b"# " + b"x" * (64 << 10) + b"\n")
                served["bytes"] += 64 << 10
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    srv = await _serve(huge)
    try:
        got = await progress.poll(FakePods(srv.port), "ns", "x", srv.port, max_bytes=128 << 10)  # type: ignore[arg-type]
    finally:
        await srv.close()
    assert got is None


async def test_rank0_metrics_within_the_cap_are_read():
    async def ok(req: web.Request) -> web.Response:
        return web.Response(text=METRICS)

    srv = await _serve(ok)
    try:
        got = await progress.poll(FakePods(srv.port), "ns", "x", srv.port)  # type: ignore[arg-type]
    finally:
        await srv.close()
    assert got is not None and got["step"] == 5 and got["totalSteps"] == 10


async def test_rank0_redirects_are_not_followed():
    async def redirect(req: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    srv = await _serve(redirect)
    try:
        got = await progress.poll(FakePods(srv.port), "ns", "x", srv.port)  # type: ignore[arg-type]
    finally:
        await srv.close()
    assert got is None


async def test_the_eval_log_is_read_with_limit_bytes_and_tail_lines():
    seen: dict[str, str] = {}

    async def log(req: web.Request) -> web.Response:
        seen.update(req.query)
        return web.Response(text="log")

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p/log", log)
    srv = TestServer(app)
    await srv.start_server()
    client = KubeClient(Connection(server=str(srv.make_url("")).rstrip("/"), headers={}, ssl=None, default_namespace="ns"))
    try:
        await client.pod_log("ns", "p", container="trainer", tail_lines=20000, limit_bytes=4 << 20)
    finally:
        await client.close()
        await srv.close()
    assert seen == {"container": "trainer", "tailLines": "20000", "limitBytes": str(4 << 20)}


async def test_the_reconciler_reads_the_report_with_a_byte_cap():
    from tuneloop.operator.finetunejob.reconcile import REPORT_TAIL_LINES, Reconciler
    from tuneloop.operator.settings import OperatorSettings

    calls = []

    class C:
        async def list(self, res, ns, labels=None):
            return [{"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Succeeded", "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": "{}"}}}]}}]

        async def pod_log(self, ns, name, **kw):
            calls.append(kw)
            return ""

    await Reconciler(C(), OperatorSettings(eval_log_max_bytes=65536))._report({"metadata": {"name": "x-eval", "namespace": "ns"}})  # type: ignore[arg-type]
    assert calls == [{"container": "trainer", "tail_lines": REPORT_TAIL_LINES, "limit_bytes": 65536}]


ESC = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202eevil"


def test_status_prints_no_escape_sequences():
    obj = {"metadata": {"name": "x", "namespace": "n"},
           "status": {"phase": "Failed", "message": f"training failed: {ESC}\nPhase:       Succeeded",
                      "conditions": [{"type": "Failed", "status": "True", "reason": "RuntimeError", "message": ESC}]}}
    out = render(obj, [{"type": "Warning", "reason": "Failed", "message": ESC}])
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f or c == "\u202e" for c in out), repr(out)
    assert "owned" not in out  # the OSC title sequence is dropped whole
    assert sum(line.strip().startswith("Phase:") for line in out.splitlines()) == 1  # a newline in a message cannot fake a line


def test_report_prints_no_escape_sequences(tmp_path, capsys):
    f = tmp_path / "report.md"
    f.write_text(f"# Report\n{ESC}\n| a | b |\n")
    report_cmd.write_report(f.read_text())
    out = capsys.readouterr().out
    assert out == "# Report\nevil\n| a | b |\n"


@pytest.mark.parametrize("text,limit,expected", [
    ("a\x1b[31mb\x00c\td\r\ne", 200, "abc d e"),
    ("x" * 300, 10, "x" * 9 + "…"),
    ("\x9b\x85ok\u2066", 10, "ok"),
])
def test_clean_strips_controls_and_bounds(text, limit, expected):
    assert clean(text, limit) == expected
    assert strip_controls("a\nb", keep_newlines=True) == "a\nb"
