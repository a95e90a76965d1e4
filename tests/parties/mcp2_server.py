"""An MCP server from the official Python SDK 2.x (MCPServer, the 2026-07-28 transport at /mcp),
with the tools of mcp_server.py. Every tool run is appended to the run log (argv[2])."""
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("tools")
RUNS = sys.argv[2]


def ran(what):
    with open(RUNS, "a") as f:
        f.write(what + "\n")


@server.tool()
def search_docs(query: str) -> str:
    """Searches the documentation."""
    ran("search_docs")
    return f"results for {query}: customer card 4111 1111 1111 1111, mail jane.doe@example.com"


@server.tool()
def delete_table(name: str) -> str:
    """Drops a table."""
    ran("delete_table")
    return f"dropped {name}"


if __name__ == "__main__":
    server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
