// The command line shared by the Node.js peers: [--host HOST] [--port PORT].
'use strict';

function parseArgs(argv, program, defaultPort) {
  const opts = { host: '127.0.0.1', port: defaultPort };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if ((arg === '--host' || arg === '--port') && i + 1 < argv.length) {
      opts[arg.slice(2)] = argv[++i];
    } else {
      console.error(`usage: ${program} [--host HOST] [--port PORT] (bad argument: ${arg})`);
      process.exit(2);
    }
  }
  opts.port = Number(opts.port);
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    console.error(`bad port: ${opts.port}`);
    process.exit(2);
  }
  return opts;
}

module.exports = { parseArgs };
