/* `hello_c>: FILE`: count the lines of FILE in the task's workspace, store the count as
 * `c.lines`, log a line and print a greeting. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spade.h"

SPADE_PLUGIN("spade-hello-c", "0.1.0", "hello_c");

spade_outcome spade_run(const spade_request *req) {
    char *path = spade_json_string(req->command);
    if (!path)
        return spade_error(false, "task %s: expected a file name (`hello_c>: input.txt`), got %s",
                           req->task_name, req->command);
    /* The workspace is the guest's `/` and cwd: relative paths stay inside it. */
    FILE *f = fopen(path, "r");
    if (!f) return spade_error(false, "task %s: cannot read %s: %s", req->task_name, path, strerror(errno));
    long lines = 0;
    int c, last = '\n';
    char first[128] = {0};
    size_t n = 0;
    while ((c = fgetc(f)) != EOF) {
        if (lines == 0 && c != '\n' && n + 1 < sizeof first) first[n++] = (char)c;
        if (c == '\n') lines++;
        last = c;
    }
    if (last != '\n') lines++; /* a last line without a newline still counts */
    fclose(f);

    spade_log(SPADE_INFO, "read %ld lines from %s", lines, path);
    spade_print("hello from c: %s has %ld lines, first: %s", path, lines, first);
    char *store = spade_format("{\"c\": {\"lines\": %ld}}", lines);
    spade_outcome out = spade_done(store, NULL);
    free(store);
    free(path);
    return out;
}
