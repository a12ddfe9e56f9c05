#!/usr/bin/env node
// A line-broadcast server on Node's `net` module: a peer rat is compared with.
//
// The rat protocol (SPEC.md): every complete line a client sends is relayed
// byte for byte to every *other* connected client; bytes after the last
// newline wait for the rest of their line; a client that closes with a partial
// line has it relayed with a newline appended; a half-closed client keeps
// receiving.
//
// Idiomatic Node: one 'data' handler, one socket.write() per receiver for all
// the complete lines of a chunk (so lines stay whole), Buffers never decoded.
// The relay only, not rat's limits.
//
//     node bench/peers/node_server.js [--host 127.0.0.1] [--port 8080]
'use strict';

const { parseArgs } = require('./args');
const net = require('net');

const NEWLINE = Buffer.from('\n');
const clients = new Set();

function broadcast(from, lines) {
  for (const client of clients) {
    if (client !== from && !client.destroyed) client.write(lines);
  }
}

function onConnection(socket) {
  clients.add(socket);
  let partial = null; // bytes after the last newline, waiting for the rest

  socket.on('data', (chunk) => {
    const end = chunk.lastIndexOf(10) + 1;
    if (end === 0) {
      partial = partial ? Buffer.concat([partial, chunk]) : chunk;
      return;
    }
    let lines = end === chunk.length ? chunk : chunk.subarray(0, end);
    if (partial) {
      lines = Buffer.concat([partial, lines]);
      partial = null;
    }
    if (end < chunk.length) partial = Buffer.from(chunk.subarray(end));
    broadcast(socket, lines);
  });
  socket.on('end', () => {
    // allowHalfOpen: the client only shut its sending side; it keeps receiving.
    if (partial) {
      broadcast(socket, Buffer.concat([partial, NEWLINE]));
      partial = null;
    }
  });
  socket.on('error', () => {}); // a reset or broken pipe: 'close' follows
  socket.on('close', () => clients.delete(socket));
}

function main() {
  const { host, port } = parseArgs(process.argv.slice(2), 'node_server.js', 8080);
  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, onConnection);
  server.on('error', (err) => {
    console.error(`cannot listen on ${host}:${port}: ${err.message}`);
    process.exit(1);
  });
  server.listen({ host, port, backlog: 1024 }, () => {
    console.error(`listening on ${host}:${server.address().port}`);
  });
  const stop = () => {
    server.close();
    for (const client of clients) client.end();
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main();
