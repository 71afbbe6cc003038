// `hello_js>: FILE`: count the lines of FILE in the task's workspace, store the count as
// `js.lines`, log a line and print a greeting.
import * as spade from './spade.js';

function hello(req) {
  const path = req.commandStr();
  const text = spade.readText(path);
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop(); // a trailing newline ends the last line
  spade.log.info(`read ${lines.length} lines from ${path}`);
  spade.output.print(`hello from js: ${path} has ${lines.length} lines, first: ${lines[0] ?? ''}`);
  return spade.done({ store: { js: { lines: lines.length } } });
}

const plugin = spade.plugin({ name: 'spade-hello-js', version: '0.1.0', operators: { hello_js: hello } });

// The component's exports (world `guest` in wit/world.wit).
export function describe() {
  return plugin.describe();
}
export function run(request) {
  return plugin.run(request);
}
