/* Fast path of resp.StreamScanner: walks whole RESP commands in a buffer, starting at a command
 * boundary, and stops at the first one that is not complete or not plainly well-formed. Whatever
 * it stops at is handed back to the Python scanner, which is the reference: it resumes split
 * commands and words the errors. So this file only has to be right about the easy, common case. */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <Python.h>
#include <string.h>

#define MAX_ARGS (1LL << 20)
#define MAX_BULK (512LL << 20)
#define CAPTURE 20

/* Parses "<digits>\r\n" at p[i..n); returns the index after the LF, -1 if incomplete or not
 * plain digits (Python decides what that is). */
static Py_ssize_t parse_len(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, long long *out) {
    long long v = 0;
    Py_ssize_t start = i;
    while (i < n && p[i] >= '0' && p[i] <= '9') {
        if (i - start >= 18) return -1;
        v = v * 10 + (p[i] - '0');
        i++;
    }
    if (i == start || i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n') return -1;
    *out = v;
    return i + 2;
}

static int eq_upper(const unsigned char *s, Py_ssize_t len, const char *word) {
    Py_ssize_t k;
    if ((Py_ssize_t)strlen(word) != len) return 0;
    for (k = 0; k < len; k++) {
        unsigned char c = s[k];
        if (c >= 'a' && c <= 'z') c -= 32;
        if (c != (unsigned char)word[k]) return 0;
    }
    return 1;
}

/* From N_SELECT on, look_at() reads the command's short arguments; N_OTHER and from N_MOVE on are writes. */
enum { N_OTHER, N_MULTI, N_EXEC, N_PING, N_SELECT, N_REPLCONF, N_MOVE, N_COPY, N_SWAPDB };

static int classify(const unsigned char *s, Py_ssize_t len) {
    switch (len) {
    case 4:
        return eq_upper(s, len, "EXEC")   ? N_EXEC
               : eq_upper(s, len, "PING") ? N_PING
               : eq_upper(s, len, "MOVE") ? N_MOVE
               : eq_upper(s, len, "COPY") ? N_COPY
                                          : N_OTHER;
    case 5: return eq_upper(s, len, "MULTI") ? N_MULTI : N_OTHER;
    case 6:
        return eq_upper(s, len, "SELECT") ? N_SELECT : eq_upper(s, len, "SWAPDB") ? N_SWAPDB : N_OTHER;
    case 8: return eq_upper(s, len, "REPLCONF") ? N_REPLCONF : N_OTHER;
    default: return N_OTHER;
    }
}

/* A db index of plain digits (at most 18: no overflow); -1 for anything else, which Python reads. */
static long long parse_db(const unsigned char *s, Py_ssize_t len) {
    long long v = 0;
    Py_ssize_t k;
    if (len == 0 || len > 18) return -1;
    for (k = 0; k < len; k++) {
        if (s[k] < '0' || s[k] > '9') return -1;
        v = v * 10 + (s[k] - '0');
    }
    return v;
}

/* What the arguments of one SELECT, REPLCONF, MOVE, COPY or SWAPDB say (kept out of the hot loop). */
struct look {
    long long select_db;  /* SELECT's db, -1: none */
    long long named_db;   /* the highest db MOVE, COPY ... DB or SWAPDB names, -1: none */
    long long copy_db_at; /* COPY: the index of the argument after a DB keyword */
    int getack;
};

/* Argument i (at most CAPTURE bytes) of a command of that kind, as StreamScanner._on_arg reads the
 * arguments resp._LOOKS_AT names; 0 if Python must read the command. */
static int look_at(int kind, long long i, const unsigned char *s, Py_ssize_t len, struct look *lk) {
    int is_db = 0;
    switch (kind) {
    case N_SELECT:
        if (i == 1 && (lk->select_db = parse_db(s, len)) < 0) return 0;
        return 1;
    case N_REPLCONF:
        if (i == 1) lk->getack = eq_upper(s, len, "GETACK");
        return 1;
    case N_MOVE: is_db = i == 2; break;
    case N_SWAPDB: is_db = i <= 2; break;
    case N_COPY: /* COPY src dst [DB db] [REPLACE], the options in any order */
        if (i == lk->copy_db_at) is_db = 1;
        else if (i >= 3 && eq_upper(s, len, "DB")) lk->copy_db_at = i + 1;
        break;
    }
    if (is_db) {
        long long v = parse_db(s, len);
        if (v < 0) return 0; /* not plain digits: Python decides whether it is an integer */
        if (v > lk->named_db) lk->named_db = v;
    }
    return 1;
}

/* scan(data, pos, db, in_multi) -> (pos, first_safe, last_safe, last_safe_db, last_boundary, db,
 *                                    in_multi, getack, writes, commands, max_db) */
static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t pos;
    long long db;
    int in_multi;
    if (!PyArg_ParseTuple(args, "y*nLp", &buf, &pos, &db, &in_multi)) return NULL;
    const unsigned char *p = (const unsigned char *)buf.buf;
    Py_ssize_t n = buf.len;
    Py_ssize_t first_safe = -1, last_safe = -1, last_boundary = -1;
    long long last_safe_db = db, commands = 0, max_db = db;
    int getack = 0, writes = 0;

    while (pos < n && p[pos] == '*') {
        long long argc, blen;
        Py_ssize_t q = parse_len(p, pos + 1, n, &argc);
        if (q < 0 || argc < 1 || argc > MAX_ARGS) break;
        int kind = N_OTHER, ok = 1;
        struct look lk = {-1, -1, -1, 0};
        for (long long i = 0; i < argc; i++) {
            if (q >= n || p[q] != '$') { ok = 0; break; }
            Py_ssize_t d = parse_len(p, q + 1, n, &blen);
            if (d < 0 || blen > MAX_BULK || d + blen + 2 > n) { ok = 0; break; }
            if (p[d + blen] != '\r' || p[d + blen + 1] != '\n') { ok = 0; break; }
            if (i == 0) {
                kind = blen <= 8 ? classify(p + d, blen) : N_OTHER;
            } else if (kind >= N_SELECT && blen <= CAPTURE && !look_at(kind, i, p + d, blen, &lk)) {
                ok = 0;
                break;
            }
            q = d + blen + 2;
        }
        if (!ok) break;
        /* the command is complete: apply it, exactly as StreamScanner._arg_done does */
        commands++;
        if (kind == N_OTHER) writes = 1;
        else if (kind == N_MULTI) in_multi = 1;
        else if (kind == N_EXEC) in_multi = 0;
        else if (kind >= N_SELECT) {
            if (lk.select_db >= 0) db = lk.select_db;
            if (db > max_db) max_db = db;
            if (lk.named_db > max_db) max_db = lk.named_db; /* MOVE, COPY ... DB, SWAPDB: db is unchanged */
            if (lk.getack) getack = 1;
            if (kind >= N_MOVE) writes = 1;
        }
        pos = q;
        last_boundary = pos;
        if (!in_multi) {
            last_safe = pos;
            last_safe_db = db;
            if (first_safe < 0) first_safe = pos;
        }
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(nnnLnLiiiLL)", pos, first_safe, last_safe, last_safe_db, last_boundary, db,
                         in_multi, getack, writes, commands, max_db);
}

/* find(data, needle, start, end) -> the index of needle in data[start:end], -1 if it is not there.
 * bytes.find for any buffer: a memoryview into the receive buffer has no find(), and copying it into
 * a bytes object only to search it would cost what the buffer was reused to save. */
static PyObject *find(PyObject *self, PyObject *args) {
    Py_buffer hay, needle;
    Py_ssize_t start, end, at = -1;
    if (!PyArg_ParseTuple(args, "y*y*nn", &hay, &needle, &start, &end)) return NULL;
    if (end > hay.len) end = hay.len;
    if (start < 0) start = 0;
    if (start <= end && needle.len <= end - start) {
        const char *h = (const char *)hay.buf;
        const char *hit = needle.len ? memmem(h + start, end - start, needle.buf, needle.len) : h + start;
        if (hit != NULL) at = hit - h;
    }
    PyBuffer_Release(&needle);
    PyBuffer_Release(&hay);
    return PyLong_FromSsize_t(at);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Walk whole, plainly well-formed RESP commands from a boundary."},
    {"find", find, METH_VARARGS, "bytes.find(needle, start, end) for any contiguous buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
