"""An MCP server from the official Python SDK (FastMCP, streamable HTTP at /mcp) whose tool
takes typed arguments: pydantic coerces them ("yes", "on", "1" and 1 are True to a bool), as
real tools do. Every call that runs appends one JSON line to argv[2]."""
import json
import sys

from mcp.server.fastmcp import FastMCP

server = FastMCP("typed", host="127.0.0.1", port=int(sys.argv[1]))


@server.tool()
def transfer(amount: int, live: bool) -> str:
    """Moves money; a dry run unless live."""
    with open(sys.argv[2], "a") as log:
        log.write(json.dumps({"ran": "transfer", "amount": amount, "live": live}) + "\n")
    return f"transferred {amount} live={live}"


@server.tool()
def run_query(sql: str, options: dict) -> str:
    """Runs a query; writes only when options say so. FastMCP parses `options` given as JSON
    text into the dict its type asks for (`pre_parse_json`)."""
    with open(sys.argv[2], "a") as log:
        log.write(json.dumps({"ran": "run_query", "sql": sql, "options": options}) + "\n")
    return f"ran {sql} with {options}"


if __name__ == "__main__":
    server.run(transport="streamable-http")
