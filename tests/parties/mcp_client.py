"""An unmodified MCP client from the official Python SDK: lists tools, calls an allowed and a
denied one, and prints what it saw as JSON."""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


async def main(url):
    out = {}
    async with streamablehttp_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            res = await session.call_tool("search_docs", {"query": "refund of 4111111111111111"})
            out["search"] = [c.text for c in res.content]
            try:
                res = await session.call_tool("delete_table", {"name": "users"})
                out["delete"] = {"content": [c.text for c in res.content], "isError": res.isError}
            except McpError as e:
                out["delete"] = {"error": e.error.message, "code": e.error.code}
    print(json.dumps(out))


asyncio.run(main(sys.argv[1]))
