// Express as Node services read request bodies: `express.json()` (body-parser), which decodes
// a body by its Content-Type's charset through iconv-lite — UTF-7 and UTF-16 included. Two
// services on one port, each logging what it ran as a JSON line to the log (argv[3]):
// - /mcp: the official MCP TypeScript SDK's own Express app (`createMcpExpressApp`, stateless
//   Streamable HTTP, JSON answers), tools `search_docs` and `delete_table`;
// - POST /v1/refunds: a REST route reading `amount` from the JSON body;
// - POST /v1/close: tests `force` for its truth and looks `to` up as a property key.
//
// node express_bodies.mjs PORT LOG
import { appendFileSync } from 'node:fs';

import express from 'express';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { z } from 'zod';

const [port, log] = [Number(process.argv[2]), process.argv[3]];
const ran = (what) => appendFileSync(log, JSON.stringify(what) + '\n');

function tools() {
  const s = new McpServer({ name: 'bodies', version: '1.0.0' });
  s.registerTool('search_docs', { description: 'Searches.', inputSchema: { query: z.string() } },
    async ({ query }) => {
      ran({ ran: 'search_docs', query });
      return { content: [{ type: 'text', text: `found ${query}` }] };
    });
  s.registerTool('delete_table', { description: 'Drops a table.', inputSchema: { table: z.string() } },
    async ({ table }) => {
      ran({ ran: 'delete_table', table });
      return { content: [{ type: 'text', text: `deleted ${table}` }] };
    });
  return s;
}

const app = createMcpExpressApp();
app.post('/mcp', async (req, res) => {
  const server = tools();
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: true,
  });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, req.body);
});
app.post('/v1/refunds', express.json(), (req, res) => {
  ran({ ran: 'refund', amount: req.body.amount });
  res.json({ refunded: req.body.amount });
});
// As handlers test a flag and look an account up: `if (force)` and `accounts[to]`.
const accounts = { alice: 0, mallory: 0 };
app.post('/v1/close', express.json(), (req, res) => {
  const { force, to } = req.body;
  if (force) ran({ ran: 'force_close' });
  if (to in accounts) ran({ ran: 'pay', to: `${to}` });
  res.json({ ok: true });
});
app.listen(port, '127.0.0.1', () => console.log('listening', port));
