"""The L7 filter in front of SuperLink: a complete nginx.conf, rendered as a pure function.

SuperLink serves Fleet, Runtime and Control on ONE port, and the open-source
Control API has no authentication. The server pod therefore runs nginx as a
sidecar with three TLS listeners, one per audience, each forwarding only its
own API prefix to SuperLink on loopback. Kubernetes Services then expose each
listener to exactly the peers that may use it (see `server.py`).

The same text runs in the pod and in the local-federation tests, so it must
work unprivileged with a read-only root filesystem: every path nginx writes to
lives under `runtime_dir`, logs go to stdout/stderr, and it stays in the
foreground (`nginx -e stderr -c <this file>`).
"""

from __future__ import annotations

# Flower's HTTP transport streams protobuf frames of up to 2 GiB - 1 byte
# (flwr.supercore.constant.MAX_PROTOBUF_STREAM_MESSAGE_LENGTH); FABs are at most
# 10 MB. Let SuperLink enforce its own limits instead of a smaller one here.
_MAX_BODY = "2g"
# Streaming responses (pull-object, stream-logs) have no read timeout on the
# client side; an idle SuperNode long-polls. One hour covers a slow round.
_STREAM_TIMEOUT = "3600s"
# Every Flower route is `/health` or `/v1/<api>/<kebab-case-name>` without a
# query string (checked against the installed SuperLink's OpenAPI). Requests
# whose raw target is anything else (dot segments, escapes, queries) are
# refused before routing, so nginx's normalised view and SuperLink's view of a
# path can never disagree.
_PLAIN_TARGET = "~^/[a-z0-9/-]*$"
_ROUTE_NAME = "[a-z0-9-]+"


def nginx_conf(
    *,
    superlink_port: int,
    fleet_port: int,
    runtime_port: int,
    control_port: int,
    cert_file: str,
    key_file: str,
    ca_file: str,
    superlink_server_name: str,
    runtime_dir: str,
) -> str:
    """Render the sidecar's nginx.conf.

    `fleet_port` forwards only `/v1/fleet/*` and `/health`, `runtime_port` only
    `/v1/runtime/*`, `control_port` only `/v1/control/*`; everything else is
    404. Each listener terminates TLS with `cert_file`/`key_file`; the upstream
    hop to SuperLink on 127.0.0.1:`superlink_port` is TLS too, verified against
    `ca_file` for the name `superlink_server_name`.
    """
    ports = {"superlink_port": superlink_port, "fleet_port": fleet_port,
             "runtime_port": runtime_port, "control_port": control_port}
    for field, port in ports.items():
        if not 1 <= port <= 65535:
            raise ValueError(f"{field}: {port} is not a TCP port (1-65535)")
    listeners = [fleet_port, runtime_port, control_port]
    if len(set(listeners + [superlink_port])) != 4:
        raise ValueError(f"ports must be distinct, got {ports}")
    run = runtime_dir.rstrip("/") or "/"
    servers = "\n".join([
        _listener("fleet", fleet_port, "fleet", with_health=True),
        _listener("runtime", runtime_port, "runtime", with_health=False),
        _listener("control", control_port, "control", with_health=False),
    ])
    return f"""\
# Rendered by flowerbed components/fleet_filter.py; do not edit by hand.
worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log stderr notice;

events {{
    # Each proxied request holds two connections (client and upstream); SuperNodes poll every few seconds.
    worker_connections 4096;
}}

http {{
    access_log /dev/stdout;
    server_tokens off;

    # Unprivileged, read-only root filesystem: all scratch space under runtime_dir.
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;

    ssl_certificate {cert_file};
    ssl_certificate_key {key_file};
    ssl_protocols TLSv1.2 TLSv1.3;

    client_max_body_size {_MAX_BODY};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto https;
    # Stream both ways: model updates and streamed responses are never spooled to disk.
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout {_STREAM_TIMEOUT};
    proxy_send_timeout {_STREAM_TIMEOUT};

    proxy_ssl_verify on;
    proxy_ssl_trusted_certificate {ca_file};
    proxy_ssl_name {superlink_server_name};
    proxy_ssl_server_name on;
    proxy_ssl_verify_depth 2;

    map $request_uri $flowerbed_plain_target {{
        "{_PLAIN_TARGET}" 1;
        default 0;
    }}

    upstream superlink {{
        server 127.0.0.1:{superlink_port};
        keepalive 16;
    }}

{servers}
}}
"""


def _listener(audience: str, port: int, api: str, *, with_health: bool) -> str:
    health = (
        "        location = /health {\n"
        "            proxy_pass https://superlink;\n"
        "        }\n"
        if with_health
        else ""
    )
    return f"""\
    # {audience} listener: only /v1/{api}/*.
    server {{
        listen {port} ssl;
        if ($flowerbed_plain_target = 0) {{
            return 400;
        }}
        location ~ ^/v1/{api}/{_ROUTE_NAME}$ {{
            proxy_pass https://superlink;
        }}
{health}        location / {{
            return 404;
        }}
    }}
"""
