"""An unmodified MCP client from the official Python SDK, in one session: lists the tools,
then (argv[2] = "calls") calls each tool named after the URL in turn, listing again after
every call. Prints what it saw as JSON: each listing, and each call's text or error."""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


async def main(url, calls):
    out = {"lists": [], "calls": []}
    async with streamablehttp_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()

            async def listing():
                tools = await session.list_tools()
                out["lists"].append({t.name: t.description for t in tools.tools})

            await listing()
            for name in calls:
                args = {"query": "refunds"} if name != "word_count" else {"text": "a b c"}
                try:
                    res = await session.call_tool(name, args)
                    out["calls"].append(
                        {
                            "tool": name,
                            "text": [c.text for c in res.content],
                            "structured": res.structuredContent,
                            "isError": res.isError,
                        }
                    )
                except McpError as e:
                    out["calls"].append(
                        {"tool": name, "error": e.error.message, "code": e.error.code}
                    )
                await listing()
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2:]))
