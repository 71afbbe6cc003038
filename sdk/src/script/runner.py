# spade's py> runner: calls `module.function`, `module.Class.method` or `module.Class`
# (then its `run` method) with arguments taken from the task's params by name, and writes
# what the function stored, exported and generated to the output file. It speaks Digdag's
# runner protocol: argv is COMMAND INPUT_JSON OUTPUT_JSON, the input is {"params": {...}},
# the output {"store_params", "export_params", "subtask_config", "error"?}.
#
# Works on Python 3 (3.5 and later). It imports as little as it can (no `inspect`, which
# alone costs more than the rest of a trivial task): a task's start-up time is its overhead.
import json
import os
import sys
import types
from collections import OrderedDict

command, input_path, output_path = sys.argv[1], sys.argv[2], sys.argv[3]

with open(input_path) as f:
    params = json.load(f, object_pairs_hook=OrderedDict)["params"]


class Env(object):
    """What a task's Python code sees as `digdag.env`."""

    def __init__(self, params):
        self.params = params
        self.subtask_config = OrderedDict()
        self.export_params = {}
        self.store_params = {}
        self.state_params = {}
        self._subtasks = 0

    def store(self, params={}, **more):
        self.store_params.update(params)
        self.store_params.update(more)

    def export(self, params={}, **more):
        self.export_params.update(params)
        self.export_params.update(more)

    def set_state(self, params={}, **more):
        self.state_params.update(params)
        self.state_params.update(more)

    def add_subtask(self, function=None, **params):
        if isinstance(function, dict):
            config = dict(function)
            config.update(params)
        elif function is not None:
            config = dict(params)
            config["py>"] = "%s.%s" % (function.__module__, function.__qualname__)
        else:
            config = dict(params)
        try:
            json.dumps(config)
        except (TypeError, ValueError) as e:
            raise TypeError("Parameters must be serializable using JSON: %s" % e)
        self.subtask_config["+subtask%d" % self._subtasks] = config
        self._subtasks += 1


env = Env(params)

# `import digdag` (and the older `digdag_env`) give the task's environment.
digdag = types.ModuleType("digdag")
digdag.env = env
sys.modules["digdag"] = digdag
digdag_env = types.ModuleType("digdag_env")
digdag_env.params = env.params
digdag_env.subtask_config = env.subtask_config
digdag_env.export_params = env.export_params
digdag_env.store_params = env.store_params
digdag_env.state_params = env.state_params
sys.modules["digdag_env"] = digdag_env

# The task's modules live in the workspace (the working directory).
sys.path.append(os.path.abspath(os.getcwd()))


def resolve(command):
    """(callable, method name or None) for `command`."""
    parts = command.split(".")
    if len(parts) < 2:
        raise ValueError("py>: %r must be `module.function`, `module.Class.method` or `module.Class`" % command)
    name = parts[-1]
    module_name = ".".join(parts[:-1])
    try:
        module = __import__(module_name, fromlist=[name])
    except ImportError as first:
        # `module.Class.method`: import the module without its last two parts.
        if len(parts) < 3:
            raise
        class_name = parts[-2]
        try:
            module = __import__(".".join(parts[:-2]), fromlist=[class_name])
        except ImportError:
            raise first
        if not hasattr(module, class_name):
            raise AttributeError("Module '%s' has no attribute '%s'" % (".".join(parts[:-2]), class_name))
        return getattr(module, class_name), name
    if not hasattr(module, name):
        raise AttributeError("Module '%s' has no attribute '%s'" % (module_name, name))
    target = getattr(module, name)
    if isinstance(target, type):
        return target, "run"
    return target, None


def backtrace():
    import traceback

    return traceback.format_exc().splitlines()


CO_VARKEYWORDS = 0x08


def arguments(function, skip_self, params):
    """The keyword arguments for `function` taken from params by name: its positional and
    keyword-only parameters (an error for a required one that no param gives), or every
    param when it takes `**kwargs`."""
    function = getattr(function, "__func__", function)  # a bound method's function
    code = getattr(function, "__code__", None)
    if code is None:
        # A builtin such as object.__init__: it takes nothing from params.
        return {}
    names = code.co_varnames[: code.co_argcount]
    kwonly = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    defaults = function.__defaults__ or ()
    kwdefaults = function.__kwdefaults__ or {}
    required = len(names) - len(defaults)
    qualname = getattr(function, "__qualname__", str(function))
    args = {}
    for index, name in enumerate(names):
        if skip_self and index == 0:
            continue
        if name in params:
            args[name] = params[name]
        elif index < required:
            raise TypeError("Method '%s' requires parameter '%s' but not set" % (qualname, name))
    for name in kwonly:
        if name in params:
            args[name] = params[name]
        elif name not in kwdefaults:
            raise TypeError("Method '%s' requires parameter '%s' but not set" % (qualname, name))
    if code.co_flags & CO_VARKEYWORDS:
        return dict(params)
    return args


error = None
try:
    target, method = resolve(command)
    if method is None:
        target(**arguments(target, False, params))
    else:
        instance = target(**arguments(target.__init__, True, params))
        bound = getattr(instance, method)
        bound(**arguments(bound, True, params))
except SystemExit as e:
    error = (
        "SystemExit",
        "Failed to call python command with code:%s; possible cause: the module or function has the name of a "
        "standard library module" % (e.code,),
        backtrace(),
    )
except BaseException as e:
    error = (e.__class__.__name__, str(e), backtrace())

out = {
    "subtask_config": env.subtask_config,
    "export_params": env.export_params,
    "store_params": env.store_params,
}
if error is not None:
    out["error"] = {"class": error[0], "message": error[1], "backtrace": error[2]}

with open(output_path, "w") as f:
    json.dump(out, f)

if error is not None:
    sys.stderr.write("\n".join(error[2]) + "\n")
    sys.exit(1)
