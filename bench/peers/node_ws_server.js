#!/usr/bin/env node
// A line-broadcast server on Node.js and the `ws` package: the WebSocket peer on Node.
//
// The rat protocol over WebSocket (SPEC.md, "Web"): a message is input like a
// TCP line (a message without a final newline gets one; several newlines make
// several lines); each line goes to every *other* client as one message
// without the newline (text when it is UTF-8, binary otherwise).
//
// Idiomatic `ws`: one WebSocketServer on path /ws, a 'message' handler, and
// client.send() to every other open client.  The relay only, not rat's limits.
// Needs `npm install` in bench/peers (bench/compare.py does it when missing).
//
//     node bench/peers/node_ws_server.js [--host 127.0.0.1] [--port 8081]
'use strict';

const { parseArgs } = require('./args');
const { WebSocketServer, WebSocket } = require('ws');

function main() {
  const { host, port } = parseArgs(process.argv.slice(2), 'node_ws_server.js', 8081);
  const wss = new WebSocketServer({ host, port, path: '/ws', perMessageDeflate: false, maxPayload: 0 });
  wss.on('connection', (socket) => {
    socket.on('message', (data, isBinary) => {
      let buf = Buffer.isBuffer(data) ? data : Buffer.concat(data);
      if (buf.length && buf[buf.length - 1] === 10) buf = buf.subarray(0, buf.length - 1);
      let start = 0;
      for (;;) {
        const nl = buf.indexOf(10, start);
        const line = buf.subarray(start, nl < 0 ? buf.length : nl);
        for (const client of wss.clients) {
          if (client !== socket && client.readyState === WebSocket.OPEN) {
            client.send(line, { binary: isBinary });
          }
        }
        if (nl < 0) break;
        start = nl + 1;
      }
    });
    socket.on('error', () => {});
  });
  wss.on('error', (err) => {
    console.error(`cannot listen on ${host}:${port}: ${err.message}`);
    process.exit(1);
  });
  wss.on('listening', () => console.error(`listening on ${host}:${wss.address().port}`));
  const stop = () => {
    for (const client of wss.clients) client.terminate();
    wss.close();
    setTimeout(() => process.exit(0), 300).unref();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main();
