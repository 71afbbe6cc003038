/* spade.c: implements spade.h on top of the `wit-bindgen c` bindings of world `guest`
 * (gen/guest.h): lifts the WIT task-request into a spade_request, lowers spade_outcome,
 * and wraps the log/output imports. Generated names are reached through WIT()/WIT_CONST(). */
#include "spade.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest.h"

/* wit-bindgen adds the version to the names only when wit/ holds several versions of
 * the package (e.g. a deps/ copy of an older contract); accept both spellings. */
#ifdef SPADE_OPERATOR_0_2_0_TYPES_OUTCOME_DONE
#define WIT(name) spade_operator_0_2_0_##name
#define WIT_CONST(name) SPADE_OPERATOR_0_2_0_##name
#else
#define WIT(name) spade_operator_##name
#define WIT_CONST(name) SPADE_OPERATOR_##name
#endif

/* ------------------------------------------------------------------ strings */

static char *dup_n(const char *s, size_t n) {
    char *out = malloc(n + 1);
    if (!out) abort();
    memcpy(out, s, n);
    out[n] = 0;
    return out;
}

static char *lift(const guest_string_t *s) { return dup_n((const char *)s->ptr, s->len); }

static char *lift_opt(const guest_option_string_t *s) { return s->is_some ? lift(&s->val) : NULL; }

/* Hands a malloc'd C string to the canonical ABI, which frees it after the call. */
static guest_string_t lower_owned(char *s) {
    guest_string_t out = {(uint8_t *)s, s ? strlen(s) : 0};
    return out;
}

static char *vformat(const char *fmt, va_list ap) {
    va_list cp;
    va_copy(cp, ap);
    int n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0) return dup_n("(unformattable message)", 23);
    char *out = malloc((size_t)n + 1);
    if (!out) abort();
    vsnprintf(out, (size_t)n + 1, fmt, ap);
    return out;
}

char *spade_format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

/* ------------------------------------------------------------------ outcomes */

spade_outcome spade_done(const char *store_json, const char *export_json) {
    spade_outcome o = {0};
    o.kind = SPADE_DONE;
    o.store = store_json ? dup_n(store_json, strlen(store_json)) : NULL;
    o.export_ = export_json ? dup_n(export_json, strlen(export_json)) : NULL;
    return o;
}

spade_outcome spade_poll(uint32_t after_seconds, const char *state_json) {
    spade_outcome o = {0};
    o.kind = SPADE_POLL;
    o.after_seconds = after_seconds;
    o.state = dup_n(state_json ? state_json : "null", strlen(state_json ? state_json : "null"));
    return o;
}

spade_outcome spade_error(bool retryable, const char *fmt, ...) {
    spade_outcome o = {0};
    o.kind = SPADE_ERROR;
    o.retryable = retryable;
    va_list ap;
    va_start(ap, fmt);
    o.message = vformat(fmt, ap);
    va_end(ap);
    return o;
}

/* ------------------------------------------------------------------ capabilities */

void spade_log(spade_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    guest_string_t s = {(uint8_t *)msg, strlen(msg)};
    WIT(log_level_t) l = level == SPADE_TRACE   ? WIT_CONST(LOG_LEVEL_TRACE)
                         : level == SPADE_DEBUG ? WIT_CONST(LOG_LEVEL_DEBUG)
                         : level == SPADE_INFO  ? WIT_CONST(LOG_LEVEL_INFO)
                         : level == SPADE_WARN  ? WIT_CONST(LOG_LEVEL_WARN)
                                                : WIT_CONST(LOG_LEVEL_ERROR);
    WIT(log_write)(l, &s);
    free(msg);
}

void spade_print(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *line = vformat(fmt, ap);
    va_end(ap);
    guest_string_t s = {(uint8_t *)line, strlen(line)};
    WIT(output_print)(&s);
    free(line);
}

#ifdef SPADE_WITH_SECRETS
char *spade_secret(const char *key) {
    guest_string_t k = {(uint8_t *)key, strlen(key)};
    guest_string_t v;
    if (!WIT(secrets_get)(&k, &v)) return NULL;
    char *out = lift(&v);
    guest_string_free(&v);
    return out;
}
#endif

/* ------------------------------------------------------------------ JSON */

static const char *ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

/* End of the JSON string starting at the quote `p` (just past the closing quote). */
static const char *skip_string(const char *p) {
    for (p++; *p && *p != '"'; p++)
        if (*p == '\\' && p[1]) p++;
    return *p ? p + 1 : NULL;
}

/* End of the JSON value at `p`, or NULL if malformed. */
static const char *skip_value(const char *p) {
    p = ws(p);
    if (*p == '"') return skip_string(p);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (*p) {
            if (*p == '"') {
                p = skip_string(p);
                if (!p) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    const char *start = p;
    while (*p && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\t' &&
           *p != '\r')
        p++;
    return p > start ? p : NULL;
}

static void put_utf8(char **o, uint32_t c) {
    char *q = *o;
    if (c < 0x80) *q++ = (char)c;
    else if (c < 0x800) { *q++ = (char)(0xC0 | c >> 6); *q++ = (char)(0x80 | (c & 0x3F)); }
    else if (c < 0x10000) {
        *q++ = (char)(0xE0 | c >> 12); *q++ = (char)(0x80 | ((c >> 6) & 0x3F));
        *q++ = (char)(0x80 | (c & 0x3F));
    } else {
        *q++ = (char)(0xF0 | c >> 18); *q++ = (char)(0x80 | ((c >> 12) & 0x3F));
        *q++ = (char)(0x80 | ((c >> 6) & 0x3F)); *q++ = (char)(0x80 | (c & 0x3F));
    }
    *o = q;
}

static int hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

char *spade_json_string(const char *json) {
    const char *p = ws(json);
    const char *end = *p == '"' ? skip_string(p) : NULL;
    if (!end || *ws(end)) return NULL;
    char *out = malloc((size_t)(end - p) + 1), *o = out; /* decoding never grows it */
    if (!out) abort();
    for (p++; p < end - 1; p++) {
        if (*p != '\\') { *o++ = *p; continue; }
        switch (*++p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            uint32_t c, lo;
            if (!hex4(p + 1, &c)) { free(out); return NULL; }
            p += 4;
            if (c >= 0xD800 && c < 0xDC00 && p[1] == '\\' && p[2] == 'u' && hex4(p + 3, &lo) &&
                lo >= 0xDC00 && lo < 0xE000) {
                c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            put_utf8(&o, c);
            break;
        }
        default: *o++ = *p; /* \" \\ \/ */
        }
    }
    *o = 0;
    return out;
}

char *spade_json_get(const char *object_json, const char *key) {
    const char *p = ws(object_json);
    if (*p != '{') return NULL;
    p = ws(p + 1);
    while (*p == '"') {
        const char *kend = skip_string(p);
        if (!kend) return NULL;
        char *k = spade_json_string(dup_n(p, (size_t)(kend - p)));
        p = ws(kend);
        if (*p != ':') { free(k); return NULL; }
        const char *v = ws(p + 1), *vend = skip_value(v);
        if (!vend) { free(k); return NULL; }
        int hit = k && strcmp(k, key) == 0;
        free(k);
        if (hit) return dup_n(v, (size_t)(vend - v));
        p = ws(vend);
        if (*p != ',') return NULL;
        p = ws(p + 1);
    }
    return NULL;
}

char *spade_json_quote(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(n * 6 + 3), *o = out;
    if (!out) abort();
    *o++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { *o++ = '\\'; *o++ = (char)c; }
        else if (c == '\n') { *o++ = '\\'; *o++ = 'n'; }
        else if (c == '\t') { *o++ = '\\'; *o++ = 't'; }
        else if (c == '\r') { *o++ = '\\'; *o++ = 'r'; }
        else if (c < 0x20) o += sprintf(o, "\\u%04x", c);
        else *o++ = (char)c;
    }
    *o++ = '"';
    *o = 0;
    return out;
}

/* ------------------------------------------------------------------ exports */

void exports_guest_describe(guest_plugin_info_t *ret) {
    size_t n = 0;
    while (spade_plugin.operators[n]) n++;
    ret->name = lower_owned(dup_n(spade_plugin.name, strlen(spade_plugin.name)));
    ret->version = lower_owned(dup_n(spade_plugin.version, strlen(spade_plugin.version)));
    ret->wit_version = lower_owned(dup_n(SPADE_WIT_VERSION, strlen(SPADE_WIT_VERSION)));
    ret->operators.len = n;
    ret->operators.ptr = malloc(n * sizeof(guest_string_t));
    for (size_t i = 0; i < n; i++)
        ret->operators.ptr[i] = lower_owned(dup_n(spade_plugin.operators[i], strlen(spade_plugin.operators[i])));
}

static int serves(const char *op) {
    for (size_t i = 0; spade_plugin.operators[i]; i++)
        if (strcmp(spade_plugin.operators[i], op) == 0) return 1;
    return 0;
}

void exports_guest_run(guest_task_request_t *r, guest_outcome_t *ret) {
    spade_request req = {
        .operator_name = lift(&r->operator_),
        .task_name = lift(&r->task_name),
        .project_name = lift(&r->project_name),
        .workflow_name = lift(&r->workflow_name),
        .attempt_id = r->attempt_id,
        .session_id = r->session_id,
        .session_uuid = lift(&r->session_uuid),
        .session_time = lift(&r->session_time),
        .timezone = lift(&r->timezone),
        .retry_attempt_name = lift_opt(&r->retry_attempt_name),
        .command = lift(&r->command),
        .params = lift(&r->params),
        .local_params = lift(&r->local_params),
        .raw = lift(&r->raw),
        .state = lift_opt(&r->state),
        .retry_count = r->retry_count,
    };
    guest_task_request_free(r); /* the callee owns its arguments */

    spade_outcome o;
    if (!serves(req.operator_name))
        o = spade_error(false, "plugin %s does not provide operator '%s>'", spade_plugin.name,
                        req.operator_name);
    else
        o = spade_run(&req);

    memset(ret, 0, sizeof *ret);
    switch (o.kind) {
    case SPADE_DONE:
        ret->tag = WIT_CONST(TYPES_OUTCOME_DONE);
        ret->val.done.store_params = lower_owned(o.store ? o.store : dup_n("{}", 2));
        ret->val.done.export_params = lower_owned(o.export_ ? o.export_ : dup_n("{}", 2));
        ret->val.done.reset_store_params.len = 0;
        ret->val.done.reset_store_params.ptr = NULL;
        ret->val.done.subtasks.is_some = o.subtasks != NULL;
        if (o.subtasks) ret->val.done.subtasks.val = lower_owned(o.subtasks);
        break;
    case SPADE_POLL:
        ret->tag = WIT_CONST(TYPES_OUTCOME_POLL);
        ret->val.poll.after_seconds = o.after_seconds;
        ret->val.poll.state = lower_owned(o.state);
        break;
    default:
        ret->tag = WIT_CONST(TYPES_OUTCOME_ERROR);
        ret->val.error.message = lower_owned(o.message ? o.message : dup_n("failed", 6));
        ret->val.error.retryable = o.retryable;
    }
}
