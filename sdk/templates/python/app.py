"""`hello_py>: FILE`: count the lines of FILE in the task's workspace, store the count
as `python.lines`, log a line and print a greeting."""

import spade


@spade.operator("hello_py")
def hello(req: spade.Request) -> spade.Outcome:
    path = req.command_str()
    try:
        # The workspace is the guest's `/` and cwd: relative paths stay inside it.
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise spade.Failure(f"task {req.task_name}: cannot read {path}: {e.strerror}")
    spade.log.info(f"read {len(lines)} lines from {path}")
    first = lines[0] if lines else ""
    spade.output.print(f"hello from python: {path} has {len(lines)} lines, first: {first}")
    return spade.done(store={"python": {"lines": len(lines)}})


# componentize-py exports the class bound to `WitWorld`.
WitWorld = spade.plugin(name="spade-hello-py", version="0.1.0")
