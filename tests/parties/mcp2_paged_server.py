"""An MCP server from the official Python SDK 2.x (MCPServer, the 2026-07-28 transport at /mcp)
whose tool list comes in pages of two (`nextCursor`) marked cacheable by everyone for an hour
(`ttlMs: 3600000`, `cacheScope: "public"`), and whose `transfer` tool asks the client to confirm
the amount first: a multi-round-trip request, answered with an `InputRequiredResult` and run
when the client retries with the confirmation. Every tool run is appended to the run log
(argv[2])."""
import sys
from typing import Annotated

from pydantic import BaseModel

from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Elicit, MCPServer, Resolve
from mcp_types import ListToolsResult

RUNS = sys.argv[2]
PAGE = 2


def ran(what):
    with open(RUNS, "a") as f:
        f.write(what + "\n")


class Paged(MCPServer):
    async def _handle_list_tools(self, ctx, params):
        tools = await self.list_tools()
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + PAGE
        return ListToolsResult(
            tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None
        )


server = Paged("paged", cache_hints={"tools/list": CacheHint(ttl_ms=3_600_000, scope="public")})


class Confirm(BaseModel):
    ok: bool


def confirm_amount(amount: int) -> Elicit[Confirm]:
    return Elicit(f"Transfer {amount} EUR?", Confirm)


@server.tool()
def search_docs(query: str) -> str:
    """Searches the documentation."""
    ran("search_docs")
    return f"results for {query}"


@server.tool()
def delete_table(name: str) -> str:
    """Drops a table."""
    ran("delete_table")
    return f"dropped {name}"


@server.tool()
def word_count(text: str) -> int:
    """Counts the words of a text."""
    ran("word_count")
    return len(text.split())


@server.tool()
def drop_users() -> str:
    """Drops every user."""
    ran("drop_users")
    return "dropped"


@server.tool()
def transfer(amount: int, confirm: Annotated[Confirm, Resolve(confirm_amount)]) -> str:
    """Transfers money, once the user confirms."""
    ran(f"transfer {amount} {confirm.ok}")
    return f"transferred {amount}" if confirm.ok else "not confirmed"


if __name__ == "__main__":
    server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
