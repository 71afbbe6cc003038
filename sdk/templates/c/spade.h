/* spade.h: helper layer for C operators (the role the Rust SDK `spade-sdk` plays).
 *
 * It owns the glue between the bindings `wit-bindgen c` generates from wit/ (world `guest`)
 * and an operator written as one function:
 *
 *     #include "spade.h"
 *     SPADE_PLUGIN("spade-hello-c", "0.1.0", "hello_c");
 *     spade_outcome spade_run(const spade_request *req) {
 *         char *name = spade_json_string(req->command);
 *         if (!name) return spade_error(false, "task %s: expected a string", req->task_name);
 *         spade_print("hello %s", name);
 *         return spade_done("{\"greeted\": true}", NULL);
 *     }
 *
 * Values that are JSON trees in Digdag (command, params, state, stored params) cross as
 * JSON text; spade_json_get / spade_json_string / spade_json_quote read and write the
 * little of it an operator usually needs. Strings returned by this API are malloc'd and
 * belong to the caller; each task call runs in a fresh instance, so leaks end with it.
 */
#ifndef SPADE_H
#define SPADE_H

#include <stdbool.h>
#include <stdint.h>

/* The spade:operator contract version wit/world.wit is written against. */
#define SPADE_WIT_VERSION "0.3.0"

/* One task call; every string is NUL-terminated. */
typedef struct spade_request {
    const char *operator_name;
    const char *task_name;
    const char *project_name;
    const char *workflow_name;
    int64_t attempt_id;
    int64_t session_id;
    const char *session_uuid;
    const char *session_time; /* ISO 8601 with offset */
    const char *timezone;
    const char *retry_attempt_name; /* NULL when none */
    const char *command;            /* JSON: the `op>:` argument */
    const char *params;             /* JSON object: every param the task sees */
    const char *local_params;       /* JSON object: only the task's own keys */
    const char *raw;                /* JSON object: unevaluated `_do`-like subtrees */
    const char *state;              /* JSON from the previous poll, NULL on the first call */
    uint32_t retry_count;
} spade_request;

typedef enum { SPADE_DONE, SPADE_POLL, SPADE_ERROR } spade_outcome_kind;

/* Build with spade_done / spade_poll / spade_error. */
typedef struct spade_outcome {
    spade_outcome_kind kind;
    char *store;   /* DONE: JSON object or NULL */
    char *export_; /* DONE: JSON object or NULL */
    char *subtasks; /* DONE: JSON task config or NULL */
    char *state;   /* POLL */
    uint32_t after_seconds;
    char *message; /* ERROR */
    bool retryable;
} spade_outcome;

/* Success: `store_json` reaches every following task, `export_json` only generated
 * subtasks (both JSON objects, NULL for none; copied). */
spade_outcome spade_done(const char *store_json, const char *export_json);
/* Not finished: called again after `after_seconds` with req->state == state_json. */
spade_outcome spade_poll(uint32_t after_seconds, const char *state_json);
/* Failure with a printf-style message a user can act on. */
spade_outcome spade_error(bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Capabilities (log and output are always granted). printf-style. */
typedef enum { SPADE_TRACE, SPADE_DEBUG, SPADE_INFO, SPADE_WARN, SPADE_ERR } spade_level;
void spade_log(spade_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void spade_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#ifdef SPADE_WITH_SECRETS
/* Needs `import secrets;` in wit/world.wit, -DSPADE_WITH_SECRETS and a grant. */
char *spade_secret(const char *key); /* NULL when unset or not granted */
#endif

/* JSON: the raw JSON text of member `key` of the object `object_json` (NULL if absent
 * or not an object); a JSON string value decoded to UTF-8 (NULL if not a string); a
 * string encoded as a JSON string literal with its quotes. All malloc'd. */
char *spade_json_get(const char *object_json, const char *key);
char *spade_json_string(const char *json);
char *spade_json_quote(const char *s);
/* printf into a malloc'd string. */
char *spade_format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* What the operator file provides: SPADE_PLUGIN(name, version, "op1", "op2", ...) and
 * spade_run (called for every operator listed; tell them apart by req->operator_name). */
typedef struct spade_plugin_info {
    const char *name;
    const char *version;
    const char *const *operators; /* NULL-terminated */
} spade_plugin_info;
extern const spade_plugin_info spade_plugin;
spade_outcome spade_run(const spade_request *req);

#define SPADE_PLUGIN(NAME, VERSION, ...)                                        \
    static const char *const spade_operators_[] = {__VA_ARGS__, 0};            \
    const spade_plugin_info spade_plugin = {NAME, VERSION, spade_operators_}

#endif
