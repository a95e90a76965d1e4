"""An MCP server from the official Python SDK (FastMCP, streamable HTTP transport at /mcp):
`mcp_server.py PORT [HOST]` (HOST 127.0.0.1 unless given; `callgate demo` runs it too)."""
import sys

from mcp.server.fastmcp import FastMCP

server = FastMCP("tools", host=(sys.argv[2:] or ["127.0.0.1"])[0], port=int(sys.argv[1]))


@server.tool()
def search_docs(query: str) -> str:
    """Searches the documentation."""
    return f"results for {query}: customer card 4111 1111 1111 1111, mail jane.doe@example.com"


@server.tool()
def delete_table(name: str) -> str:
    """Drops a table."""
    return f"dropped {name}"


if __name__ == "__main__":
    server.run(transport="streamable-http")
