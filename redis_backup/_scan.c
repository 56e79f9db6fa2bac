/* Fast path of resp.StreamScanner: walks whole RESP commands in a buffer, starting at a command
 * boundary, and stops at the first one that is not complete or not plainly well-formed. Whatever
 * it stops at is handed back to the Python scanner, which is the reference: it resumes split
 * commands and words the errors. So this file only has to be right about the easy, common case. */
#define PY_SSIZE_T_CLEAN
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

enum { N_OTHER, N_MULTI, N_EXEC, N_SELECT, N_REPLCONF, N_PING };

static int classify(const unsigned char *s, Py_ssize_t len) {
    switch (len) {
    case 4: return eq_upper(s, len, "EXEC") ? N_EXEC : eq_upper(s, len, "PING") ? N_PING : N_OTHER;
    case 5: return eq_upper(s, len, "MULTI") ? N_MULTI : N_OTHER;
    case 6: return eq_upper(s, len, "SELECT") ? N_SELECT : N_OTHER;
    case 8: return eq_upper(s, len, "REPLCONF") ? N_REPLCONF : N_OTHER;
    default: return N_OTHER;
    }
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
        int kind = N_OTHER, is_getack = 0, ok = 1;
        long long new_db = db;
        int has_db = 0;
        for (long long i = 0; i < argc; i++) {
            if (q >= n || p[q] != '$') { ok = 0; break; }
            Py_ssize_t d = parse_len(p, q + 1, n, &blen);
            if (d < 0 || blen > MAX_BULK || d + blen + 2 > n) { ok = 0; break; }
            if (p[d + blen] != '\r' || p[d + blen + 1] != '\n') { ok = 0; break; }
            if (i == 0) {
                kind = blen <= 8 ? classify(p + d, blen) : N_OTHER;
            } else if (i == 1 && blen <= CAPTURE) {
                if (kind == N_SELECT) {
                    long long v = 0;
                    Py_ssize_t k;
                    if (blen == 0) { ok = 0; break; }
                    for (k = 0; k < blen; k++) {
                        if (p[d + k] < '0' || p[d + k] > '9' || k >= 18) { ok = 0; break; }
                        v = v * 10 + (p[d + k] - '0');
                    }
                    if (!ok) break;
                    new_db = v;
                    has_db = 1;
                } else if (kind == N_REPLCONF) {
                    is_getack = eq_upper(p + d, blen, "GETACK");
                }
            }
            q = d + blen + 2;
        }
        if (!ok) break;
        /* the command is complete: apply it, exactly as StreamScanner._arg_done does */
        commands++;
        if (has_db) {
            db = new_db;
            if (db > max_db) max_db = db;
        }
        if (kind == N_MULTI) in_multi = 1;
        else if (kind == N_EXEC) in_multi = 0;
        else if (kind == N_OTHER) writes = 1;
        if (is_getack) getack = 1;
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

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Walk whole, plainly well-formed RESP commands from a boundary."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
