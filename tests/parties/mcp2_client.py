"""An unmodified MCP client from the official Python SDK 2.x (`mcp.Client`, which discovers the
server and speaks the 2026-07-28 transport, routing headers included): lists tools, calls an
allowed and a denied one, and prints what it saw as JSON."""
import asyncio
import json
import sys

from mcp import Client


async def main(url):
    out = {}
    async with Client(url, raise_exceptions=True) as client:
        out["protocol"] = client.protocol_version
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        res = await client.call_tool("search_docs", {"query": "refund of 4111111111111111"})
        out["search"] = [c.text for c in res.content]
        try:
            res = await client.call_tool("delete_table", {"name": "users"})
            out["delete"] = {"content": [c.text for c in res.content], "isError": res.is_error}
        except Exception as e:  # the SDK's error type for a JSON-RPC error
            err = getattr(e, "error", None)
            out["delete"] = {
                "error": getattr(err, "message", str(e)),
                "code": getattr(err, "code", None),
            }
    print(json.dumps(out))


asyncio.run(main(sys.argv[1]))
