// spade.js: helper layer for JavaScript operators (the role the Rust SDK `spade-sdk` plays).
//
// It owns the glue between the component imports/exports componentize-js binds from
// wit/ (world `guest`) and operators written as plain functions:
//
//   import * as spade from './spade.js';
//   const plugin = spade.plugin({ name: 'spade-hello-js', version: '0.1.0',
//     operators: { hello_js: (req) => { spade.output.print(`hello ${req.command}`); return spade.done(); } } });
//   export const describe = () => plugin.describe();
//   export const run = (request) => plugin.run(request);
//
// Values that are JSON trees in Digdag (command, params, state, stored params) arrive and
// leave as plain JS values: this module does the JSON text conversion the WIT contract
// asks for. Throw `new spade.Failure(msg)` for errors a user can cause; any other
// exception also fails the task, with its message, instead of trapping.

import { write as logWrite } from 'spade:operator/log@0.3.0';
import { print as outputPrint } from 'spade:operator/output@0.3.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

// The spade:operator contract version wit/world.wit is written against.
export const WIT_VERSION = '0.3.0';

export class Failure extends Error {
  constructor(message, { retryable = false } = {}) {
    super(String(message));
    this.retryable = Boolean(retryable);
  }
}

// Success: `store` reaches every following task, `exports` only generated subtasks.
export function done({ store = {}, exports = {}, reset = [], subtasks } = {}) {
  return {
    tag: 'done',
    val: {
      storeParams: JSON.stringify(store),
      resetStoreParams: reset.map(String),
      exportParams: JSON.stringify(exports),
      subtasks: subtasks === undefined ? undefined : JSON.stringify(subtasks),
    },
  };
}

// Not finished: spade calls again after `afterSeconds` with `req.state` = `state`.
export function poll(afterSeconds, state) {
  return { tag: 'poll', val: { afterSeconds: afterSeconds >>> 0, state: JSON.stringify(state ?? null) } };
}

export function error(message, retryable = false) {
  return { tag: 'error', val: { message: String(message), retryable: Boolean(retryable) } };
}

// Capability: the task log (always granted).
export const log = Object.fromEntries(
  ['trace', 'debug', 'info', 'warn', 'error'].map((level) => [level, (msg) => logWrite(level, String(msg))]),
);

// Capability: user-facing output, what `echo>` prints (always granted).
export const output = { print: (line) => outputPrint(String(line)) };

// A workspace file as text. StarlingMonkey has no file API, so this goes through the
// standard wasi:filesystem, whose only preopen is the task's workspace (mounted at `/`).
export function readText(path) {
  const dirs = getDirectories();
  const entry = dirs.find(([, name]) => name === '/') ?? dirs[0];
  if (!entry) throw new Failure(`cannot read ${path}: this call has no workspace`);
  const rel = String(path).replace(/^\/+/, '') || '.';
  let fd;
  try {
    fd = entry[0].openAt({ symlinkFollow: true }, rel, {}, { read: true });
    const chunks = [];
    let offset = 0n;
    for (;;) {
      const [bytes, eof] = fd.read(65536n, offset);
      chunks.push(bytes);
      offset += BigInt(bytes.length);
      if (eof || bytes.length === 0) break;
    }
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) { all.set(c, at); at += c.length; }
    return new TextDecoder().decode(all);
  } catch (e) {
    if (e instanceof Failure) throw e;
    // wasi:filesystem errors arrive as the error-code name (e.g. `no-entry`).
    throw new Failure(`cannot read ${path}: ${e?.payload ?? e?.message ?? e}`);
  } finally {
    fd?.[Symbol.dispose]?.();
  }
}

function parse(field, text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Failure(`the host sent a malformed ${field} (${e.message}); this is a bug in spade or a plugin/host version mismatch`);
  }
}

// One task call: the WIT task-request with its JSON fields parsed.
export class Request {
  constructor(r) {
    Object.assign(this, {
      operator: r.operator, taskName: r.taskName, projectName: r.projectName,
      workflowName: r.workflowName, attemptId: Number(r.attemptId), sessionId: Number(r.sessionId),
      sessionUuid: r.sessionUuid, sessionTime: r.sessionTime, timezone: r.timezone,
      retryAttemptName: r.retryAttemptName ?? null, retryCount: r.retryCount,
    });
    this.command = parse('command', r.command);
    this.params = parse('params', r.params);
    this.localParams = parse('local-params', r.localParams);
    this.raw = parse('raw', r.raw);
    this.state = r.state == null ? null : parse('state', r.state);
  }

  // The operator argument (`op>: value`) as a string, or a Failure naming the task.
  commandStr() {
    if (typeof this.command === 'string') return this.command;
    if (typeof this.command === 'number') return String(this.command);
    throw new Failure(`task ${this.taskName} (${this.operator}>): expected a string argument, got ${JSON.stringify(this.command)}`);
  }
}

// `operators` maps operator names (without `>`) to `(req: Request) => outcome`.
export function plugin({ name, version, operators }) {
  const names = Object.keys(operators);
  return {
    describe: () => ({ name, version, operators: names, witVersion: WIT_VERSION }),
    run(request) {
      try {
        const req = new Request(request);
        const f = operators[req.operator];
        if (!f) {
          throw new Failure(`plugin ${name} does not provide operator '${req.operator}>' (it provides ${names.map((n) => n + '>').join(', ')})`);
        }
        return f(req) ?? done();
      } catch (e) {
        if (e instanceof Failure) return error(e.message, e.retryable);
        logWrite('error', String(e?.stack ?? e));
        return error(`plugin ${name}: ${e?.name ?? 'Error'}: ${e?.message ?? e}`);
      }
    },
  };
}
