"""An MCP server from the official Python SDK (FastMCP, streamable HTTP transport at /mcp)."""
import sys

from mcp.server.fastmcp import FastMCP

server = FastMCP("tools", host="127.0.0.1", port=int(sys.argv[1]))


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
