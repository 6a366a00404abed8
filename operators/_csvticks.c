/* Tick rows ``symbol,ts,price,size`` straight into columns, in C.
 *
 * parse(block) -> (symbols, times, prices, sizes) | None. ``block`` is bytes of whole lines,
 * ``\n``-separated, the final ``\n`` optional (operators.csvio.RangeReader's blocks). The
 * result has one item per line in each column: a list of str, and the times, prices and
 * sizes packed, as array.array('q'), array('d') and array('d') (what a channel decodes
 * packed columns to, engine/numbers.py), with the values operators.csvparse.parse_lines
 * gives for the same lines. No Tick is made, and no int or float object: a batch costs
 * what its columns cost (the msgspec fast path, operators.csvparse.parse_block, makes a
 * Tick per row and the source then takes its fields apart again), the packed columns go
 * on the wire as they are, and the window kernel reads them in place.
 *
 * It reads a strict part of the grammar only, and returns None, keeping nothing, for a block
 * with any line outside it; the caller then parses the block as before (msgspec, and the
 * reference loop that explains bad lines). A line is read here when it is
 *
 *     symbol ',' ts ',' number ',' number  [ '\r' ]
 *
 * with ``symbol`` one or more bytes of UTF-8 holding no ``,``, ``"`` or ``\r`` (the format has
 * no quoting, and the CSV sinks could not write such a symbol back); ``ts`` an optional
 * ``-`` and 1 to 19 digits within int64; each number an optional ``-``, digits with an
 * optional ``.`` and fraction (a digit at least), and an optional exponent ``e``/``E``,
 * optional sign, digits; at most 40 bytes. The price must be finite and the size finite and
 * > 0 (else the reference loop reports the line). Numbers are float()'s to the bit: short
 * ones by the exact fast path described at read_number, the rest by PyOS_string_to_double,
 * the correctly rounded conversion float() uses. What is refused here and valid there (a
 * ``+`` sign, spaces, ``_`` in digits, ``inf``, a ts past int64) costs only the fallback.
 *
 * Symbols repeat, so each is decoded once into a str and kept in a small table keyed by its
 * bytes (4,096 entries; a colliding symbol replaces the entry, so memory stays bounded
 * whatever the number of symbols): rows of one symbol share one str, as the generator's do,
 * which is what the window kernel indexes by (operators/_ohlcv.c).
 *
 * While rows are read nothing can start a garbage collection (and so run Python code): the
 * symbols' list, the one container made before them, is made first, and str and bytes
 * allocations do not collect. A collection can start after the loop (making the arrays and
 * the result) or where the parse ends anyway (a symbol that is not UTF-8 raises inside the
 * decoder); symbol_of reads its entry again after decoding. A call from Python code run
 * inside a call (a finalizer, during a collection) sees the table in a consistent state:
 * entries change only by a single pointer swap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_packed.h"

#define MAX_TS_DIGITS 19
#define MAX_NUMBER 40
#define TABLE_BITS 12
#define TABLE_SIZE (1 << TABLE_BITS)

typedef struct {
    uint64_t hash;
    PyObject *str;       /* owned; NULL when empty */
    const char *utf8;    /* the str's UTF-8, owned by the str */
    Py_ssize_t len;
} Entry;

static Entry table[TABLE_SIZE];

static inline uint64_t
fnv1a(const char *p, Py_ssize_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    }
    return h;
}

/* A new reference to the str of the bytes p[0:n]; NULL with no error set when they are
 * not UTF-8, NULL with an error set on failure. */
static PyObject *
symbol_of(const char *p, Py_ssize_t n)
{
    uint64_t h = fnv1a(p, n);
    Entry *e = &table[(h ^ (h >> 32)) & (TABLE_SIZE - 1)];
    if (e->str != NULL && e->hash == h && e->len == n && memcmp(e->utf8, p, (size_t)n) == 0) {
        return Py_NewRef(e->str);
    }
    PyObject *str = PyUnicode_DecodeUTF8(p, n, NULL);
    if (str == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(str, &len); /* the bytes decoded, cached */
    if (utf8 == NULL) {
        Py_DECREF(str);
        return NULL;
    }
    e = &table[(h ^ (h >> 32)) & (TABLE_SIZE - 1)]; /* the same entry: table is static */
    PyObject *old = e->str;
    e->str = NULL;
    e->hash = h;
    e->utf8 = utf8;
    e->len = len;
    e->str = Py_NewRef(str);
    Py_XDECREF(old); /* a str: its deallocation runs no Python code */
    return str;
}

/* Exact powers of ten: every one up to 1e22 is a double. */
static const double POWERS[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* Read the digits at *p (advancing it) into *mantissa, its first 19 significant ones (the
 * digits from the first nonzero one, counted in *significant); how many were read. */
static Py_ssize_t
read_digits(const char **p, const char *end, uint64_t *mantissa, int *significant)
{
    const char *q = *p;
    for (; q < end && (unsigned)(*q - '0') < 10; q++) {
        if (*significant || *q != '0') {
            if (*significant < 19) {
                ++*significant;
                *mantissa = *mantissa * 10 + (uint64_t)(*q - '0');
            }
        }
    }
    Py_ssize_t count = q - *p;
    *p = q;
    return count;
}

/* Read the number field starting at p (before ``end``) in the grammar above into *value;
 * its end, or NULL when it is outside the grammar (or, with an error set, when it could not
 * be converted, which the grammar rules out). Out of range reads as +-inf, which the caller
 * refuses.
 *
 * A number of at most 15 significant digits m and a decimal exponent k with |k| <= 22 is
 * m * 10**k or m / 10**-k: both operands are exact doubles, so the one rounding of that
 * operation gives the correctly rounded value (the fast path of Clinger's algorithm, which
 * dtoa takes too), where double arithmetic rounds once (FLT_EVAL_METHOD 0: SSE2, not x87).
 * Anything else goes to PyOS_string_to_double, float()'s own conversion. */
static const char *
read_number(const char *p, const char *end, double *value)
{
    const char *start = p;
    int negative = p < end && *p == '-';
    p += negative;
    uint64_t mantissa = 0;
    int significant = 0; /* digits from the first nonzero one */
    Py_ssize_t fraction = 0; /* digits after the point */
    Py_ssize_t digits = read_digits(&p, end, &mantissa, &significant);
    if (p < end && *p == '.') {
        p++;
        fraction = read_digits(&p, end, &mantissa, &significant);
        digits += fraction;
    }
    if (!digits) {
        return NULL;
    }
    long exponent = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int minus = p < end && *p == '-';
        p += p < end && (*p == '+' || *p == '-');
        if (!(p < end && (unsigned)(*p - '0') < 10)) {
            return NULL;
        }
        while (p < end && (unsigned)(*p - '0') < 10) {
            exponent = exponent < 100000 ? exponent * 10 + (*p - '0') : exponent;
            p++;
        }
        exponent = minus ? -exponent : exponent;
    }
    if (p - start > MAX_NUMBER) {
        return NULL;
    }
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    long k = exponent - fraction;
    if (significant <= 15 && k >= -22 && k <= 22) {
        double m = (double)mantissa; /* < 10**15 < 2**53: exact */
        double v = k >= 0 ? m * POWERS[k] : m / POWERS[-k];
        *value = negative ? -v : v;
        return p;
    }
#endif
    char buffer[MAX_NUMBER + 1];
    memcpy(buffer, start, (size_t)(p - start));
    buffer[p - start] = '\0';
    *value = PyOS_string_to_double(buffer, NULL, NULL);
    if (*value == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    return p;
}

/* Read one line [p, end) into row i of the lists; 1 if read, 0 if outside the grammar,
 * -1 on an error (set). */
static int
read_line(const char *p, const char *end, Py_ssize_t i, PyObject **symbols, int64_t *times,
          double *prices, double *sizes)
{
    if (end > p && end[-1] == '\r') {
        end--;
    }
    const char *comma = memchr(p, ',', (size_t)(end - p));
    if (comma == NULL || comma == p || memchr(p, '\r', (size_t)(comma - p)) != NULL
        || memchr(p, '"', (size_t)(comma - p)) != NULL) {
        return 0;
    }
    const char *q = comma + 1;
    int negative = q < end && *q == '-';
    q += negative;
    uint64_t magnitude = 0; /* 19 digits stay below 2**64 */
    int digits = 0;
    while (q < end && (unsigned)(*q - '0') < 10) {
        if (++digits > MAX_TS_DIGITS) {
            return 0;
        }
        magnitude = magnitude * 10 + (uint64_t)(*q - '0');
        q++;
    }
    if (!digits || q >= end || *q != ',' || magnitude > (uint64_t)INT64_MAX + negative) {
        return 0;
    }
    double price, size;
    const char *price_end = read_number(q + 1, end, &price);
    if (price_end == NULL || price_end >= end || *price_end != ',') {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (read_number(price_end + 1, end, &size) != end) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!isfinite(price) || !isfinite(size) || !(size > 0.0)) {
        return 0;
    }
    PyObject *symbol = symbol_of(p, comma - p);
    if (symbol == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    symbols[i] = symbol;
    times[i] = negative ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    prices[i] = price;
    sizes[i] = size;
    return 1;
}

static PyObject *
parse(PyObject *Py_UNUSED(module), PyObject *block)
{
    if (!PyBytes_CheckExact(block)) {
        PyErr_SetString(PyExc_TypeError, "parse: block must be bytes");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(block);
    Py_ssize_t size = PyBytes_GET_SIZE(block);
    const char *stop = data + size;
    if (size && stop[-1] == '\n') {
        stop--; /* the last line's newline: no empty line after it */
    }
    if (size && stop == data) {
        Py_RETURN_NONE; /* one empty line: the reference loop reports it */
    }
    Py_ssize_t n = 0;
    if (size) {
        n = 1;
        for (const char *p = data; (p = memchr(p, '\n', (size_t)(stop - p))) != NULL; p++) {
            n++;
        }
    }
    /* The symbols' list, then a bytes object per numeric column that the rows are read into
     * and the arrays are made from. */
    PyObject *symbols = PyList_New(n); /* items NULL until read */
    PyObject *raw[3] = {NULL, NULL, NULL};
    PyObject *result = NULL;
    if (symbols == NULL) {
        return NULL;
    }
    for (int c = 0; c < 3; c++) {
        if ((raw[c] = PyBytes_FromStringAndSize(NULL, n * 8)) == NULL) {
            goto done;
        }
    }
    PyObject **items = ((PyListObject *)symbols)->ob_item;
    int64_t *times = (int64_t *)PyBytes_AS_STRING(raw[0]);
    double *prices = (double *)PyBytes_AS_STRING(raw[1]);
    double *sizes = (double *)PyBytes_AS_STRING(raw[2]);
    const char *p = data;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *end = memchr(p, '\n', (size_t)(stop - p));
        if (end == NULL) {
            end = stop;
        }
        int read = read_line(p, end, i, items, times, prices, sizes);
        if (read <= 0) {
            if (read == 0) {
                result = Py_NewRef(Py_None);
            }
            goto done;
        }
        p = end + 1;
    }
    PyObject *columns[3] = {packed_from_bytes('q', raw[0]), NULL, NULL};
    if (columns[0] != NULL && (columns[1] = packed_from_bytes('d', raw[1])) != NULL) {
        columns[2] = packed_from_bytes('d', raw[2]);
    }
    if (columns[2] != NULL) {
        result = PyTuple_Pack(4, symbols, columns[0], columns[1], columns[2]);
    }
    for (int c = 0; c < 3; c++) {
        Py_XDECREF(columns[c]);
    }

done:
    Py_DECREF(symbols); /* a list frees the items it has, NULL ones skipped */
    for (int c = 0; c < 3; c++) {
        Py_XDECREF(raw[c]);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)parse, METH_O,
     "parse(block) -> (symbols, times, prices, sizes) | None\n\n"
     "Tick rows of a block of whole lines as four columns, or None when a line is outside "
     "the strict grammar read here (see operators/_csvticks.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "operators._csvticks",
    .m_doc = "Tick rows straight into columns, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__csvticks(void)
{
    if (packed_init() < 0) {
        return NULL;
    }
    return PyModuleDef_Init(&module);
}
