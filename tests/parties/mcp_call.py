"""An unmodified MCP client from the official Python SDK: calls one tool (argv[2]) with the
JSON arguments argv[3] at argv[1] and prints what it got as JSON."""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


async def main(url, tool, args):
    async with streamablehttp_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            try:
                res = await session.call_tool(tool, args)
                out = {"content": [c.text for c in res.content], "isError": res.isError}
            except McpError as e:
                out = {"error": e.error.message, "code": e.error.code}
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
