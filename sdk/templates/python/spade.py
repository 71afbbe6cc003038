"""spade helper layer for Python operators (the role the Rust SDK `spade-sdk` plays).

It owns the glue between the generated bindings (`wit_world`, made by componentize-py from
wit/) and an operator written as a plain function:

    import spade

    @spade.operator("hello_py")
    def hello(req: spade.Request) -> spade.Outcome:
        spade.output.print(f"hello {req.command}")
        return spade.done(store={"greeted": req.command})

    WitWorld = spade.plugin(name="spade-hello-py", version="0.1.0")

Values that are JSON trees in Digdag (command, params, state, stored params) arrive and
leave as Python dicts/lists/strings: this module does the JSON text conversion the WIT
contract asks for. Raise `spade.Failure("message")` for errors a user can cause; any other
exception also fails the task, with its type and message, instead of trapping.
"""

import json
import traceback

from wit_world.imports import log as _log
from wit_world.imports import output as _output
from wit_world.imports import types as _t

# The spade:operator contract version wit/world.wit is written against.
WIT_VERSION = "0.3.0"

__all__ = [
    "Request", "Failure", "Outcome", "done", "poll", "error",
    "operator", "plugin", "log", "output", "secrets", "WIT_VERSION",
]


class Failure(Exception):
    """The task failed with `message`; `retryable=True` lets `_retry` run it again."""

    def __init__(self, message, retryable=False):
        super().__init__(message)
        self.message = str(message)
        self.retryable = bool(retryable)


class Request:
    """One task call: the WIT task-request with its JSON fields already parsed."""

    def __init__(self, r):
        self.operator = r.operator
        self.task_name = r.task_name
        self.project_name = r.project_name
        self.workflow_name = r.workflow_name
        self.attempt_id = r.attempt_id
        self.session_id = r.session_id
        self.session_uuid = r.session_uuid
        self.session_time = r.session_time
        self.timezone = r.timezone
        self.retry_attempt_name = r.retry_attempt_name
        self.retry_count = r.retry_count
        self.command = _parse("command", r.command)
        self.params = _parse("params", r.params)
        self.local_params = _parse("local-params", r.local_params)
        self.raw = _parse("raw", r.raw)
        self.state = None if r.state is None else _parse("state", r.state)

    def _where(self):
        return f"task {self.task_name} ({self.operator}>)"

    def command_str(self):
        """The operator argument (`op>: value`) as a string, or a Failure naming the task."""
        if isinstance(self.command, str):
            return self.command
        if isinstance(self.command, (int, float)) and not isinstance(self.command, bool):
            return str(self.command)
        raise Failure(f"{self._where()}: expected a string argument (`{self.operator}>: ...`), "
                      f"got {json.dumps(self.command)}")

    def param(self, key, default=None):
        """A param the task sees (inherited or its own); `default` when unset."""
        return self.params.get(key, default)

    def local(self, key, default=None):
        """Only the task's own key (not inherited from parents)."""
        return self.local_params.get(key, default)


class Outcome:
    """What one call produced; build it with `done`, `poll` or `error`."""

    def __init__(self, wit):
        self.wit = wit


def done(store=None, export=None, reset=(), subtasks=None):
    """Success. `store` reaches every following task, `export` only generated subtasks."""
    return Outcome(_t.Outcome_Done(_t.Done(
        store_params=json.dumps(store or {}),
        reset_store_params=list(reset),
        export_params=json.dumps(export or {}),
        subtasks=None if subtasks is None else json.dumps(subtasks),
    )))


def poll(after_seconds, state):
    """Not finished: spade calls again after `after_seconds` with `req.state == state`."""
    return Outcome(_t.Outcome_Poll(_t.Poll(after_seconds=int(after_seconds), state=json.dumps(state))))


def error(message, retryable=False):
    return Outcome(_t.Outcome_Error(_t.Failure(message=str(message), retryable=bool(retryable))))


class log:
    """Capability: the task log (always granted)."""

    @staticmethod
    def trace(msg): _log.write(_log.Level.TRACE, str(msg))
    @staticmethod
    def debug(msg): _log.write(_log.Level.DEBUG, str(msg))
    @staticmethod
    def info(msg): _log.write(_log.Level.INFO, str(msg))
    @staticmethod
    def warn(msg): _log.write(_log.Level.WARN, str(msg))
    @staticmethod
    def error(msg): _log.write(_log.Level.ERROR, str(msg))


class output:
    """Capability: user-facing output, what `echo>` prints (always granted)."""

    @staticmethod
    def print(line): _output.print(str(line))


class secrets:
    """Capability: secrets. Needs `import secrets;` in wit/world.wit and a grant."""

    @staticmethod
    def get(key):
        try:
            from wit_world.imports import secrets as _secrets
        except ImportError:
            raise Failure("this plugin was built without the secrets capability: add "
                          "`import secrets;` to the world in wit/world.wit and rebuild") from None
        return _secrets.get(key)


_operators = {}


def operator(name):
    """Register the decorated function `f(req: Request) -> Outcome` as operator `name>`."""

    def register(f):
        _operators[name] = f
        return f

    return register


def plugin(name, version):
    """The class componentize-py exports (bind it to `WitWorld` in the app module)."""
    if not _operators:
        raise RuntimeError("spade.plugin: no operator registered (use @spade.operator)")

    class WitWorld:
        def describe(self):
            return _t.PluginInfo(name=name, version=version,
                                 operators=list(_operators), wit_version=WIT_VERSION)

        def run(self, request):
            try:
                req = Request(request)
                f = _operators.get(req.operator)
                if f is None:
                    served = ", ".join(f"{o}>" for o in _operators)
                    raise Failure(f"plugin {name} does not provide operator "
                                  f"'{req.operator}>' (it provides {served})")
                out = f(req)
                if out is None:
                    out = done()
                if not isinstance(out, Outcome):
                    raise Failure(f"plugin {name}: operator {req.operator}> returned "
                                  f"{type(out).__name__}, not a spade.Outcome (use spade.done())")
                return out.wit
            except Failure as e:
                return error(e.message, e.retryable).wit
            except Exception as e:  # a bug in the operator: fail the task, keep the trace
                _log.write(_log.Level.ERROR, traceback.format_exc())
                return error(f"plugin {name}: {type(e).__name__}: {e}").wit

    return WitWorld


def _parse(field, text):
    try:
        return json.loads(text)
    except ValueError as e:
        raise Failure(f"the host sent a malformed {field} ({e}); this is a bug in spade "
                      "or a plugin/host version mismatch") from None
