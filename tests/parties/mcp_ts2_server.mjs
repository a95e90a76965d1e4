// An MCP server from the official TypeScript SDK's 2.x packages (`@modelcontextprotocol/server`:
// McpServer served by `createMcpHandler`, which speaks the 2026-07-28 revision and, for older
// clients, the 2025 one statelessly), behind Node's own HTTP server at /mcp, with the tools of
// mcp_server.py. Every tool run is appended to the run log (argv[3]).
//
// node mcp_ts2_server.mjs PORT RUNS
import { appendFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { McpServer, createMcpHandler } from '@modelcontextprotocol/server';
import { z } from 'zod';

const [port, runs] = [Number(process.argv[2]), process.argv[3]];
const ran = (what) => appendFileSync(runs, `${what}\n`);

function factory() {
  const server = new McpServer({ name: 'tools-ts2', version: '1.0.0' });
  server.registerTool(
    'search_docs',
    { description: 'Searches the documentation.', inputSchema: z.object({ query: z.string() }) },
    async ({ query }) => {
      ran('search_docs');
      return { content: [{ type: 'text', text: `results for ${query}: customer card 4111 1111 1111 1111, mail jane.doe@example.com` }] };
    },
  );
  server.registerTool(
    'delete_table',
    { description: 'Drops a table.', inputSchema: z.object({ name: z.string() }) },
    async ({ name }) => {
      ran('delete_table');
      return { content: [{ type: 'text', text: `dropped ${name}` }] };
    },
  );
  return server;
}

const handler = createMcpHandler(factory);

createServer(async (req, res) => {
  try {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) {
      if (Array.isArray(v)) v.forEach((x) => headers.append(k, x));
      else if (v !== undefined) headers.set(k, v);
    }
    const request = new Request(`http://${req.headers.host}${req.url}`, {
      method: req.method,
      headers,
      body: ['GET', 'HEAD'].includes(req.method) ? undefined : body,
    });
    const response = await handler.fetch(request);
    res.writeHead(response.status, Object.fromEntries(response.headers));
    if (response.body) {
      for await (const chunk of response.body) res.write(chunk);
    }
    res.end();
  } catch (e) {
    console.error(e);
    if (!res.headersSent) res.writeHead(500);
    res.end();
  }
}).listen(port, '127.0.0.1', () => console.log(`listening on ${port}`));
