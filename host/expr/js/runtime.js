// The host's entry points into the JS context: `__spade_begin(paramsJson)` (or
// `__spade_update(changedJson, removedJson)` when the parameters mostly match the previous
// call's) once per eval_config/render call, then `__spade_run(template, depth, fresh,
// deltaJson)` per template.
//
// Digdag evaluates every template in a fresh JS context with the parameters re-parsed from
// JSON, overlaid with the keys already evaluated at the same object level. Re-parsing the
// parameters per template costs more than the rest of an evaluation here, so instead:
// - the parameters are parsed once per call (`begin`);
// - each object level of the config walk (`depth`; `fresh` when the walk enters a new object)
//   keeps the evaluated keys the host has sent so far (`deltaJson`: only keys new since the
//   last template at that level), on top of the parameters;
// - each template gets its own scope object inheriting from that level, and object or array
//   values are deep-copied into the scope on first access, so an expression that mutates a
//   parameter in place (`${list.reverse()}`) never affects another template.
// Visible difference: the parameters are inherited, not own, properties of `this`
// (`Object.keys(this)` lists only what the template assigned or read).
//
// Before a template runs, enumerable globals created by an earlier one (`${x = 1}` without a
// matching param) are deleted and the libraries' own (`moment`) restored. A change to a
// built-in (`Array.prototype.foo = ...`, `moment.fn.x = ...`) is not undone: it lasts until
// the evaluator is dropped (the engine uses one evaluator per attempt).
//
// Called once per evaluator, after moment.js, with the host's template compiler
// (src/template.rs); installs the entry points as read-only globals.
(function (global, compileTemplate) {
  'use strict';
  var parse = JSON.parse;
  var NativeFunction = Function;
  var keys = Object.keys;
  var create = Object.create;
  var defineProperty = Object.defineProperty;
  var isArray = Array.isArray;
  var reflectApply = Reflect.apply;
  var CACHE_LIMIT = 512;

  // moment(text) runs a dozen regular expressions, about 80 µs in QuickJS, and nearly every
  // task parses the same session_time. Parsing is a function of the text, the global locale
  // and the time zone (fixed per evaluator) only, so one-argument string calls are memoized
  // and every call gets its own clone; all other calls go straight through. A Proxy keeps
  // everything else (moment.utc, moment.fn, `moment.defaultFormat = ...`) the library's own.
  var momentLib = global.moment;
  if (typeof momentLib === 'function') {
    var parsed = create(null);
    var parsedCount = 0;
    global.moment = new Proxy(momentLib, {
      apply: function (target, thisArg, args) {
        if (args.length === 1 && typeof args[0] === 'string') {
          var key = target.locale() + '\u0000' + args[0];
          var m = parsed[key];
          if (m === undefined) {
            m = target(args[0]);
            if (parsedCount >= 256) {
              parsed = create(null);
              parsedCount = 0;
            }
            parsed[key] = m;
            parsedCount++;
          }
          return m.clone();
        }
        return reflectApply(target, thisArg, args);
      }
    });
  }

  var baseline = keys(global);
  var baselineValues = baseline.map(function (k) { return global[k]; });
  var known = create(null);
  baseline.forEach(function (k) { known[k] = true; });
  // Set while a template that may have assigned something (or failed midway) was the last.
  var dirty = false;

  function cleanGlobals() {
    var now = keys(global);
    var i;
    for (i = 0; i < now.length; i++) {
      if (!known[now[i]]) delete global[now[i]];
    }
    for (i = 0; i < baseline.length; i++) {
      if (global[baseline[i]] !== baselineValues[i]) global[baseline[i]] = baselineValues[i];
    }
  }

  var stringify = JSON.stringify;
  function format(value) {
    return value == null ? '' : (typeof value === 'string' ? value : stringify(value));
  }

  var cache = create(null);
  var cached = 0;

  function compiled(template) {
    var fn = cache[template];
    if (fn === undefined) {
      fn = new NativeFunction('__f', compileTemplate(template));
      if (cached >= CACHE_LIMIT) {
        cache = create(null);
        cached = 0;
      }
      cache[template] = fn;
      cached++;
    }
    return fn;
  }

  function clone(v) {
    if (v === null || typeof v !== 'object') return v;
    var i;
    if (isArray(v)) {
      var a = new Array(v.length);
      for (i = 0; i < v.length; i++) a[i] = clone(v[i]);
      return a;
    }
    var o = {};
    var names = keys(v);
    for (i = 0; i < names.length; i++) assign(o, names[i], clone(v[names[i]]));
    return o;
  }

  function setOwn(target, k, v) {
    defineProperty(target, k, { value: v, writable: true, enumerable: true, configurable: true });
  }

  // Plain assignment is much faster than defineProperty and equivalent on these objects,
  // except for the key `__proto__`: an inherited accessor installed below defines an own
  // data property on the target from its setter, as defineProperty would.
  function assign(target, k, v) {
    if (k === '__proto__') setOwn(target, k, v);
    else target[k] = v;
  }

  // Objects and arrays are copied into the reading scope on first access; scalars are shared.
  function install(target, k, v) {
    if (v === null || typeof v !== 'object') {
      assign(target, k, v);
      return;
    }
    defineProperty(target, k, {
      get: function () {
        var copy = clone(v);
        setOwn(this, k, copy);
        return copy;
      },
      set: function (value) { setOwn(this, k, value); },
      enumerable: true,
      configurable: true
    });
  }

  var params = create(Object.prototype);
  var levels = [];

  function begin(paramsJson) {
    var p = parse(paramsJson);
    var names = keys(p);
    for (var i = 0; i < names.length; i++) {
      var v = p[names[i]];
      if (v !== null && typeof v === 'object') install(p, names[i], v);
    }
    params = p;
    levels = [];
  }

  // The parameters of the previous call differ from this call's by `changedJson` (changed or
  // added keys) and `removedJson` (an array of keys). `params` itself is never written by a
  // template (reads copy, writes land on the template's own scope), so patching it is exact.
  function update(changedJson, removedJson) {
    var removed = parse(removedJson);
    var i;
    for (i = 0; i < removed.length; i++) delete params[removed[i]];
    var changed = parse(changedJson);
    var names = keys(changed);
    for (i = 0; i < names.length; i++) install(params, names[i], changed[names[i]]);
    levels = [];
  }

  function run(template, depth, fresh, deltaJson) {
    if (dirty) cleanGlobals();
    dirty = true;
    var level = levels[depth];
    if (fresh || level === undefined) {
      level = create(params);
      levels[depth] = level;
    }
    if (deltaJson !== undefined) {
      var delta = parse(deltaJson);
      var names = keys(delta);
      for (var i = 0; i < names.length; i++) install(level, names[i], delta[names[i]]);
    }
    var out = reflectApply(compiled(template), create(level), [format]);
    dirty = template.indexOf('=') >= 0;
    return out;
  }

  defineProperty(global, '__spade_begin', { value: begin, writable: false, enumerable: false, configurable: false });
  defineProperty(global, '__spade_update', { value: update, writable: false, enumerable: false, configurable: false });
  defineProperty(global, '__spade_run', { value: run, writable: false, enumerable: false, configurable: false });
})
