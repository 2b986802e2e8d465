"""How ``macro mcp serve`` is reached: stdio (what desktop clients launch) or the SDK's streamable HTTP transport.

Over stdio, stdout carries the protocol and nothing else: the protocol keeps a private copy of it and file
descriptor 1 becomes stderr before anything is built, so a library's print or a tool worker (which inherits the
descriptor) cannot corrupt a message. Over HTTP the server binds 127.0.0.1 unless told otherwise, and on a loopback
address it accepts only loopback Host and Origin headers (the SDK's DNS-rebinding protection).
"""

from __future__ import annotations

import os
import sys
from io import TextIOWrapper
from typing import Callable

import anyio
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_stdio(build: Callable[[], Server]) -> None:
    """Serve the server ``build`` makes over this process's stdin and stdout until the client closes stdin."""
    protocol = TextIOWrapper(os.fdopen(os.dup(sys.stdout.fileno()), "wb"), encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    server = build()

    async def main() -> None:
        async with stdio_server(stdout=anyio.wrap_file(protocol)) as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def serve_http(build: Callable[[], Server], host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve over streamable HTTP at ``http://HOST:PORT/mcp`` until interrupted; ``say`` reports where."""
    import uvicorn
    from mcp.server.fastmcp.server import StreamableHTTPASGIApp
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route

    loopback = host in LOOPBACK
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=loopback,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    manager = StreamableHTTPSessionManager(app=build(), security_settings=security)
    app = Starlette(routes=[Route("/mcp", endpoint=StreamableHTTPASGIApp(manager))], lifespan=lambda _: manager.run())
    if not loopback:
        say(f"warning: serving on {host}: anyone who can reach it can run MACRO's tools on scans under the roots")
    say(f"MACRO MCP server: http://{'[::1]' if host == '::1' else host}:{port}/mcp")
    uvicorn.run(app, host=host, port=port, log_level="warning")
