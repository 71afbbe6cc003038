// Date in the workflow's time zone, whatever the process TZ is.
//
// QuickJS derives local time from the process TZ; Digdag's engine runs JS in the workflow's
// `timezone:`. Dates stay native Date objects (instanceof, [[DateValue]], UTC methods and
// toISOString are untouched); every local-time method is replaced by one that works on
// `t + offset(t)` with the native UTC methods, and local wall times are turned into instants
// by the host (chrono-tz). Called once per evaluator with the three host functions; defines
// nothing else globally.
(function (global, offsetAt, localToUtc, abbreviationAt) {
  'use strict';
  var NativeDate = global.Date;
  var proto = NativeDate.prototype;
  var nativeParse = NativeDate.parse;
  var nativeUTC = NativeDate.UTC;
  var nativeNow = NativeDate.now;

  // Whether an evaluation read the clock or drew a random number: its result could differ
  // if evaluated again, so the engine must keep (freeze) it before using it.
  var volatile = false;
  function now() {
    volatile = true;
    return nativeNow();
  }
  var nativeRandom = Math.random;
  Object.defineProperty(Math, 'random', {
    value: function random() { volatile = true; return nativeRandom(); },
    writable: true, configurable: true, enumerable: false
  });
  Object.defineProperty(global, '__spade_take_volatile', {
    value: function () { var v = volatile; volatile = false; return v; },
    writable: false, configurable: false, enumerable: false
  });
  var getTime = proto.getTime;
  var setTime = proto.setTime;
  var scratch = new NativeDate(0);
  var DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  var MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

  // moment's format() asks for several fields of the same instant in a row.
  var lastT = NaN, lastOffset = 0;
  function offset(t) {
    if (t !== lastT) {
      lastOffset = offsetAt(t);
      lastT = t;
    }
    return lastOffset;
  }

  function timeOf(date) {
    return getTime.call(date); // throws TypeError for non-Date receivers, like the natives
  }

  // A native Date holding the local wall time of `t` as if it were UTC.
  function wall(t) {
    setTime.call(scratch, t + offset(t));
    return scratch;
  }

  function define(name, fn) {
    Object.defineProperty(proto, name, { value: fn, writable: true, configurable: true, enumerable: false });
  }

  ['FullYear', 'Month', 'Date', 'Day', 'Hours', 'Minutes', 'Seconds', 'Milliseconds'].forEach(function (field) {
    var utcGetter = proto['getUTC' + field];
    define('get' + field, function () {
      var t = timeOf(this);
      if (t !== t) return NaN;
      return utcGetter.call(wall(t));
    });
    if (field === 'Day') return;
    var utcSetter = proto['setUTC' + field];
    define('set' + field, function () {
      var t = timeOf(this);
      var local;
      if (t !== t) {
        // setFullYear starts from +0 on an invalid date; the others stay invalid.
        if (field !== 'FullYear') return NaN;
        local = 0;
      } else {
        local = t + offset(t);
      }
      setTime.call(scratch, local);
      var changed = utcSetter.apply(scratch, arguments);
      return setTime.call(this, changed !== changed ? NaN : localToUtc(changed));
    });
  });

  define('getTimezoneOffset', function () {
    var t = timeOf(this);
    if (t !== t) return NaN;
    return -offset(t) / 60000;
  });

  define('getYear', function () {
    var y = this.getFullYear();
    return y !== y ? NaN : y - 1900;
  });

  define('setYear', function (year) {
    var y = +year;
    if (y !== y) return setTime.call(this, NaN);
    y = y < 0 ? Math.ceil(y) : Math.floor(y);
    if (y >= 0 && y <= 99) y += 1900;
    return this.setFullYear(y);
  });

  function pad(n, width) {
    var s = String(Math.abs(n));
    while (s.length < width) s = '0' + s;
    return (n < 0 ? '-' : '') + s;
  }

  function datePart(w) {
    return DAYS[w.getUTCDay()] + ' ' + MONTHS[w.getUTCMonth()] + ' ' + pad(w.getUTCDate(), 2) + ' ' +
      pad(w.getUTCFullYear(), 4);
  }

  function timePart(w, t) {
    var minutes = offset(t) / 60000;
    var sign = minutes < 0 ? '-' : '+';
    minutes = Math.abs(minutes);
    var abbreviation = abbreviationAt(t);
    return pad(w.getUTCHours(), 2) + ':' + pad(w.getUTCMinutes(), 2) + ':' + pad(w.getUTCSeconds(), 2) +
      ' GMT' + sign + pad(Math.floor(minutes / 60), 2) + pad(Math.floor(minutes % 60), 2) +
      (abbreviation ? ' (' + abbreviation + ')' : '');
  }

  function localeDatePart(w) {
    return pad(w.getUTCMonth() + 1, 2) + '/' + pad(w.getUTCDate(), 2) + '/' + pad(w.getUTCFullYear(), 4);
  }

  function localeTimePart(w) {
    var h = w.getUTCHours();
    return pad((h + 11) % 12 + 1, 2) + ':' + pad(w.getUTCMinutes(), 2) + ':' + pad(w.getUTCSeconds(), 2) +
      (h < 12 ? ' AM' : ' PM');
  }

  function formatter(render) {
    return function () {
      var t = timeOf(this);
      if (t !== t) return 'Invalid Date';
      return render(wall(t), t);
    };
  }

  define('toString', formatter(function (w, t) { return datePart(w) + ' ' + timePart(w, t); }));
  define('toDateString', formatter(function (w) { return datePart(w); }));
  define('toTimeString', formatter(function (w, t) { return timePart(w, t); }));
  define('toLocaleString', formatter(function (w) { return localeDatePart(w) + ', ' + localeTimePart(w); }));
  define('toLocaleDateString', formatter(function (w) { return localeDatePart(w); }));
  define('toLocaleTimeString', formatter(function (w) { return localeTimePart(w); }));

  // ISO 8601 as ECMAScript defines it: date-only forms are UTC, date-time forms without an
  // offset are local time.
  var ISO = /^(?:[+-]\d{6}|\d{4})(?:-\d\d(?:-\d\d)?)?(T\d\d:\d\d(?::\d\d(?:\.\d+)?)?)?(Z|[+-]\d\d:?\d\d)?$/;
  // Zone markers QuickJS's free-form parser understands: a numeric offset after a time, or
  // one of its abbreviations.
  var FREEFORM_ZONE = /\d:\d\d(?::\d\d(?:\.\d+)?)?[^+-]*[+-]\d|(?:^|[^A-Za-z])(?:GMT|UTC|UT|Z|[ECMP][SD]T|WES?T|CES?T|EES?T)(?![A-Za-z])/i;

  var nativeFullYear = proto.getFullYear, nativeMonth = proto.getMonth, nativeDateOf = proto.getDate,
    nativeHours = proto.getHours, nativeMinutes = proto.getMinutes, nativeSeconds = proto.getSeconds,
    nativeMs = proto.getMilliseconds;

  function parseDateString(text) {
    var t = nativeParse(text);
    if (t !== t) return NaN;
    var iso = ISO.exec(text);
    var local = iso ? (iso[1] !== undefined && iso[2] === undefined) : !FREEFORM_ZONE.test(text);
    if (!local) return t;
    // Read the same wall time as UTC, then place it in the workflow zone.
    var asUtc = nativeParse(iso ? text + 'Z' : text + ' Z');
    if (asUtc !== asUtc) {
      // The parser refused the suffix: take the fields it read (in the process TZ) instead.
      var d = new NativeDate(t);
      asUtc = nativeUTC(nativeFullYear.call(d), nativeMonth.call(d), nativeDateOf.call(d),
        nativeHours.call(d), nativeMinutes.call(d), nativeSeconds.call(d), nativeMs.call(d));
    }
    return localToUtc(asUtc);
  }

  function toPrimitive(v) {
    if ((typeof v !== 'object' || v === null) && typeof v !== 'function') return v;
    var p = v.valueOf();
    if ((typeof p !== 'object' || p === null) && typeof p !== 'function') return p;
    return String(v);
  }

  var ZonedDate = function Date(year, month, date, hours, minutes, seconds, ms) {
    if (new.target === undefined) {
      return proto.toString.call(new NativeDate(now()));
    }
    var n = arguments.length;
    var t;
    if (n === 0) {
      t = now();
    } else if (n === 1) {
      var v = year;
      var isDate = false;
      if (typeof v === 'object' && v !== null) {
        // Only Date objects have a time value; exceptions are costly, so ask only objects.
        try { t = getTime.call(v); isDate = true; } catch (e) { isDate = false; }
      }
      if (!isDate) {
        v = toPrimitive(v);
        t = typeof v === 'string' ? parseDateString(v) : +v;
      }
    } else {
      t = localToUtc(nativeUTC.apply(null, arguments));
    }
    var d = new NativeDate(t);
    if (new.target !== ZonedDate) Object.setPrototypeOf(d, new.target.prototype);
    return d;
  };
  ZonedDate.prototype = proto;
  ZonedDate.UTC = nativeUTC;
  ZonedDate.now = now;
  ZonedDate.parse = function parse(text) { return parseDateString(String(text)); };
  Object.defineProperty(ZonedDate, 'prototype', { writable: false, enumerable: false, configurable: false });
  define('constructor', ZonedDate);
  Object.defineProperty(global, 'Date', { value: ZonedDate, writable: true, configurable: true, enumerable: false });
})
