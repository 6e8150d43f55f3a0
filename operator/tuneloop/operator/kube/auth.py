"""Where the API server is and how to authenticate: in-cluster service account or kubeconfig.

Reuses Kopf's minimal login functions so the operator's own client and Kopf agree on credentials.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass, field


@dataclass
class Connection:
    """Everything needed to talk to one API server."""

    server: str
    headers: dict[str, str] = field(default_factory=dict)
    ssl: ssl.SSLContext | bool | None = None
    default_namespace: str | None = None


def _pem(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    if b"-----BEGIN" in raw:
        return raw
    return base64.b64decode(raw)


def _tmpfile(data: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="tuneloop-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def from_connection_info(info) -> Connection:  # kopf.ConnectionInfo
    """Build a Connection from Kopf's ConnectionInfo."""
    headers: dict[str, str] = {}
    if info.token:
        headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
    elif info.username and info.password:
        cred = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
        headers["Authorization"] = f"Basic {cred}"
    ctx: ssl.SSLContext | bool | None = None
    if info.server.startswith("https"):
        if info.insecure:
            ctx = False
        else:
            ctx = ssl.create_default_context()
            if info.ca_path:
                ctx.load_verify_locations(cafile=os.fspath(info.ca_path))
            elif info.ca_data:
                ctx.load_verify_locations(cadata=_pem(info.ca_data).decode())
        cert = info.certificate_path or (info.certificate_data and _tmpfile(_pem(info.certificate_data)))
        key = info.private_key_path or (info.private_key_data and _tmpfile(_pem(info.private_key_data)))
        if cert:
            if not isinstance(ctx, ssl.SSLContext):
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key else None)
    return Connection(server=info.server.rstrip("/"), headers=headers, ssl=ctx, default_namespace=info.default_namespace)


def discover(kubeconfig: str | None = None) -> Connection:
    """In-cluster service account first, then $KUBECONFIG / ~/.kube/config (or the given file)."""
    import kopf

    settings = kopf.OperatorSettings()
    if kubeconfig:
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = kubeconfig
        try:
            info = kopf.login_with_kubeconfig(settings=settings)
        finally:
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old
    else:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise RuntimeError("no Kubernetes credentials: not in a cluster and no kubeconfig ($KUBECONFIG or ~/.kube/config)")
    return from_connection_info(info)
