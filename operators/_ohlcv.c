/* OHLCV over the columns of a batch that falls in one window, in C.
 *
 * window(bucket, initial, times, keys, prices, sizes[, first, lo, hi]) -> row
 *
 * does for each row i from first (default 0), in order, what the tumbling window's
 * one-window loop does with OHLCV's inline body (operators/aggregations.py, _OHLCV_BODY):
 * find the key's accumulator in bucket (a new one from initial() when the key is new), then
 *
 *     if t < acc[OPEN_TS]:   acc[OPEN_TS], acc[OPEN] = t, price
 *     if t >= acc[CLOSE_TS]: acc[CLOSE_TS], acc[CLOSE] = t, price
 *     if price > acc[HIGH]:  acc[HIGH] = price
 *     if price < acc[LOW]:   acc[LOW] = price
 *     acc[VOLUME] += size; acc[PV] += price * size; acc[N] += 1
 *
 * with the same double arithmetic (the build turns off fused multiply-add, so price * size
 * is rounded before it is added, as in Python): the results are identical to the bit, but
 * for which NaN a sum of two NaNs is (the compiler orders the operands of an addition as it
 * likes, here as in CPython).
 *
 * Columns. keys: an exact list or tuple. times, prices, sizes: each an exact list or tuple,
 * or an array.array of 8-byte ints ('q', 'l') for the times and of doubles ('d') for the
 * others, as a channel decodes packed columns (engine/numbers.py).
 *
 * Runs. Each accumulator's values are read into C at its first row, updated in C row by
 * row, and written back once at the end of the run, as new ints and floats of the values
 * the Python loop would have stored (equal, to the bit, not the same objects): a key with
 * k rows costs one set of new objects, not k. Key objects are indexed by address, so a key
 * that repeats (a channel decodes a symbol to one str object) costs one dict lookup per
 * run. A key not yet in bucket ends the run (its rows written): the accumulators of it and
 * of the new keys after it are made by initial() and stored, as the Python loop does at
 * each one's first row and in the same order, with nothing held in C; then the next run
 * starts at that key. The new keys after the first are so made ahead of the rows between
 * them, which is the Python loop's result for an initial() that depends on nothing, as
 * OHLCV's: aggregations.OHLCV hands out this kernel only with its own initial().
 *
 * Safety. Within a run only a dict lookup can run Python code: a key of another type in
 * bucket, with a Python __eq__, may share a str's hash (and then anything may run, the
 * collector and finalizers included). So a run holds references to every key and
 * accumulator it indexes, reads a row only after checking the row is still within each
 * list, writes an accumulator back only if it is still a list of nine, and refuses to be
 * re-entered (a call made while a run is under way does nothing and returns 0). The
 * results are the Python loop's unless such code changes the window's accumulators or the
 * batch while a run holds them. The values an accumulator held are freed at the end of
 * the run, once all are written, not at the row that replaced them. An exception in a call
 * (from a lookup, initial() or an allocation) leaves the window's state undefined (new
 * keys' accumulators may already be made ahead of rows not done): it stops the job.
 *
 * It stops before the first row it cannot do exactly that way, or whose time is outside
 * [lo, hi) (the window's: a batch over several windows is done window by window, a call a
 * run of rows in one), and returns that row's index, everything before it done and
 * written; the caller goes on from there. A row it cannot do has a key that is not an exact
 * str, a time that is not an exact int within 64 bits, a price or size that is not an exact
 * float, or an accumulator that is not OHLCV's list of nine with exact ints and floats where
 * the arithmetic reads (as after a rows batch of int prices, say). Returns first at once
 * when a column is of another kind or the columns' lengths differ.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "_packed.h"

enum { OPEN_TS, OPEN, HIGH, LOW, CLOSE_TS, CLOSE, VOLUME, PV, N, SLOTS };

/* An exact int's value: 0 within int64 (*value set), -1 below, 1 above. */
static int
int64_of(PyObject *obj, long long *value)
{
    int overflow;
    *value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    return overflow;
}

/* Whether the accumulator is OHLCV's list with the types the arithmetic reads. */
static int
usable(PyObject *acc)
{
    if (!PyList_CheckExact(acc) || PyList_GET_SIZE(acc) != SLOTS) {
        return 0;
    }
    PyObject **a = ((PyListObject *)acc)->ob_item;
    return PyLong_CheckExact(a[OPEN_TS]) && PyLong_CheckExact(a[CLOSE_TS])
        && PyFloat_CheckExact(a[HIGH]) && PyFloat_CheckExact(a[LOW])
        && PyFloat_CheckExact(a[VOLUME]) && PyFloat_CheckExact(a[PV])
        && PyLong_CheckExact(a[N]);
}

/* A column: an exact list's or tuple's items, or an array's 8-byte values. */
typedef struct {
    PyObject *seq;      /* borrowed */
    const char *values; /* an array's buffer; NULL for a list or tuple */
    Py_buffer view;
    int viewed;
} Column;

/* 1 when obj is a column of n rows of the kind asked (code 0: a list or tuple only; 'q':
 * or an array of 8-byte ints; 'd': or an array of doubles), else 0. */
static int
open_column(Column *c, PyObject *obj, char code, Py_ssize_t n)
{
    c->seq = obj;
    c->values = NULL;
    c->viewed = 0;
    if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) {
        return Py_SIZE(obj) == n;
    }
    if (code == 0 || !packed_view(obj, code, &c->view)) {
        return 0;
    }
    c->viewed = 1; /* exported: the array cannot be resized until it is released */
    if (c->view.shape[0] != n) {
        return 0;
    }
    c->values = c->view.buf;
    return 1;
}

static void
close_column(Column *c)
{
    if (c->viewed) {
        PyBuffer_Release(&c->view);
        c->viewed = 0;
    }
}

/* Item i of a list or tuple column (borrowed), or NULL past its end: a list may have
 * shrunk since the call began. */
static PyObject *
item(const Column *c, Py_ssize_t i)
{
    PyObject *seq = c->seq;
    if (PyList_CheckExact(seq)) {
        return i < PyList_GET_SIZE(seq) ? PyList_GET_ITEM(seq, i) : NULL;
    }
    return i < PyTuple_GET_SIZE(seq) ? PyTuple_GET_ITEM(seq, i) : NULL;
}

/* Row i's time: 1 read, 0 not an exact int within int64. */
static int
time_at(const Column *c, Py_ssize_t i, long long *ts)
{
    if (c->values != NULL) {
        memcpy(ts, c->values + 8 * i, 8);
        return 1;
    }
    PyObject *t = item(c, i);
    return t != NULL && PyLong_CheckExact(t) && int64_of(t, ts) == 0;
}

/* Row i's price or size: 1 read, 0 not an exact float. */
static int
double_at(const Column *c, Py_ssize_t i, double *value)
{
    if (c->values != NULL) {
        memcpy(value, c->values + 8 * i, 8);
        return 1;
    }
    PyObject *v = item(c, i);
    if (v == NULL || !PyFloat_CheckExact(v)) {
        return 0;
    }
    *value = PyFloat_AS_DOUBLE(v);
    return 1;
}

/* A call's rows: the columns, their length, and the times a row must have to be done
 * here (the window's: lo <= t < hi, each bound absent when unbounded). */
typedef struct {
    Column columns[4];
    Py_ssize_t n;
    long long lo, hi;
    int has_lo, has_hi;
} Batch;

/* Row i, if it can be done in C: its key (borrowed) and values; NULL if not. */
static PyObject *
row_at(const Batch *b, Py_ssize_t i, long long *ts, double *price, double *size)
{
    const Column *columns = b->columns;
    PyObject *key = item(&columns[1], i);
    if (key == NULL || !PyUnicode_CheckExact(key) || !time_at(&columns[0], i, ts)
        || (b->has_lo && *ts < b->lo) || (b->has_hi && *ts >= b->hi)
        || !double_at(&columns[2], i, price) || !double_at(&columns[3], i, size)) {
        return NULL;
    }
    return key;
}

/* One accumulator during a run: its values in C, and which slots the run changed. */
typedef struct {
    PyObject *acc; /* held */
    long long open_ts, close_ts, count;
    int open_side, close_side; /* int64_of's: the accumulator's times may lie beyond int64 */
    int opened, closed, highered, lowered;
    double open, close, high, low, volume, pv;
} State;

/* An index from an object's address to its state: open addressing, reused from run to run
 * (an entry counts only if it is of this run's generation, so nothing is cleared). */
typedef struct {
    PyObject *ptr;
    uint32_t generation;
    uint32_t state;
} Entry;

typedef struct {
    Entry *entries;
    size_t mask, used;
} Index;

/* A run's tables, kept between runs; one run uses them at a time (busy). */
static Index by_key, by_acc; /* by the key object (held), by the accumulator */
static State *states;
static size_t states_used, states_room;
static PyObject **keys_held; /* the key objects indexed, one per by_key entry */
static size_t keys_room;
/* Room for what a run lets go at its end: each accumulator's old values and itself, and
 * the keys. Made before anything is held, so finishing a run allocates nothing. */
static PyObject **releases;
static size_t releases_room;
static uint32_t generation;
static int busy;

#define MAX_KEPT 65536 /* entries kept between runs; larger tables are freed after one */

static Entry *
probe(const Index *index, PyObject *ptr)
{
    size_t h = (size_t)(((uintptr_t)ptr >> 4) * (uintptr_t)0x9E3779B97F4A7C15ull);
    for (size_t i = (h ^ (h >> 29)) & index->mask;; i = (i + 1) & index->mask) {
        Entry *e = &index->entries[i];
        if (e->generation != generation || e->ptr == ptr) {
            return e;
        }
    }
}

/* Room in index for one more entry: 0, or -1 with an error. */
static int
room_for_one(Index *index)
{
    if (index->entries != NULL && (index->used + 1) * 2 <= index->mask + 1) {
        return 0;
    }
    size_t size = index->entries == NULL ? 64 : (index->mask + 1) * 2;
    Entry *entries = PyMem_Calloc(size, sizeof(Entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Index bigger = {entries, size - 1, index->used};
    for (size_t i = 0; index->entries != NULL && i <= index->mask; i++) {
        if (index->entries[i].generation == generation) {
            *probe(&bigger, index->entries[i].ptr) = index->entries[i];
        }
    }
    PyMem_Free(index->entries);
    *index = bigger;
    return 0;
}

static Index *const indexes[2] = {&by_key, &by_acc};

/* A new run: 0, or -1 with an error when the indexes cannot be made. */
static int
start_run(void)
{
    if (++generation == 0) { /* wrapped: entries of generation 0 are from long ago */
        for (int k = 0; k < 2; k++) {
            if (indexes[k]->entries != NULL) {
                memset(indexes[k]->entries, 0, (indexes[k]->mask + 1) * sizeof(Entry));
            }
        }
        generation = 1;
    }
    by_key.used = by_acc.used = 0;
    states_used = 0;
    return room_for_one(&by_key) < 0 || room_for_one(&by_acc) < 0 ? -1 : 0;
}

/* Room for needed elements in a buffer of *room elements of size each (doubled as it
 * fills): 0, or -1 with an error. */
static int
room_for(void **buffer, size_t *room, size_t needed, size_t size)
{
    if (needed <= *room) {
        return 0;
    }
    size_t more = *room ? *room : 256;
    while (more < needed) {
        more *= 2;
    }
    void *bigger = PyMem_Realloc(*buffer, more * size);
    if (bigger == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buffer = bigger;
    *room = more;
    return 0;
}

/* The state of key's accumulator, read from it at the key's first row in the run: NULL,
 * with no error, when the key is not in bucket (*missing set) or its accumulator is not
 * OHLCV's list with the types the arithmetic reads; NULL with an error on failure. */
static State *
state_of(PyObject *bucket, PyObject *key, int *missing)
{
    Entry *k = probe(&by_key, key);
    if (k->generation == generation) {
        return &states[k->state];
    }
    size_t let_go = (states_used + 1) * (SLOTS + 1) + by_key.used + 1;
    if (room_for_one(&by_key) < 0 || room_for_one(&by_acc) < 0
        || room_for((void **)&states, &states_room, states_used + 1, sizeof(State)) < 0
        || room_for((void **)&keys_held, &keys_room, by_key.used + 1, sizeof(PyObject *)) < 0
        || room_for((void **)&releases, &releases_room, let_go, sizeof(PyObject *)) < 0) {
        return NULL;
    }
    /* A lookup may run Python code (see Safety): key and the accumulator are held. */
    Py_INCREF(key);
    PyObject *acc = PyDict_GetItemWithError(bucket, key); /* borrowed */
    if (acc == NULL) {
        *missing = !PyErr_Occurred();
        Py_DECREF(key);
        return NULL;
    }
    Entry *a = probe(&by_acc, acc);
    if (a->generation != generation) { /* an accumulator not yet read: a new state */
        if (!usable(acc)) {
            Py_DECREF(key);
            return NULL;
        }
        PyObject **v = ((PyListObject *)acc)->ob_item;
        State s = {.acc = NULL};
        s.open_side = int64_of(v[OPEN_TS], &s.open_ts);
        s.close_side = int64_of(v[CLOSE_TS], &s.close_ts);
        if (int64_of(v[N], &s.count) != 0) {
            Py_DECREF(key);
            return NULL;
        }
        s.high = PyFloat_AS_DOUBLE(v[HIGH]);
        s.low = PyFloat_AS_DOUBLE(v[LOW]);
        s.volume = PyFloat_AS_DOUBLE(v[VOLUME]);
        s.pv = PyFloat_AS_DOUBLE(v[PV]);
        s.acc = Py_NewRef(acc);
        states[states_used] = s;
        *a = (Entry){acc, generation, (uint32_t)states_used++};
        by_acc.used++;
    }
    keys_held[by_key.used] = key;
    *probe(&by_key, key) = (Entry){key, generation, a->state};
    by_key.used++;
    return &states[a->state];
}

/* OHLCV's body for one row, in C. */
static void
update(State *e, long long ts, double price, double size)
{
    if (e->open_side > 0 || (e->open_side == 0 && ts < e->open_ts)) {
        e->open_side = 0;
        e->open_ts = ts;
        e->open = price;
        e->opened = 1;
    }
    if (e->close_side < 0 || (e->close_side == 0 && ts >= e->close_ts)) {
        e->close_side = 0;
        e->close_ts = ts;
        e->close = price;
        e->closed = 1;
    }
    if (price > e->high) {
        e->high = price;
        e->highered = 1;
    }
    if (price < e->low) {
        e->low = price;
        e->lowered = 1;
    }
    e->volume += size;
    e->pv += price * size;
    e->count += 1;
}

/* Store a state's values in its accumulator (if it is still a list of nine); the values
 * they replace go to old (at most SLOTS), to be freed once all are written. -1 with an
 * error if the new values cannot be made, the accumulator unchanged. */
static int
write_back(const State *e, PyObject **old, size_t *olds)
{
    PyObject *values[SLOTS] = {NULL};
    int failed = 0;
    if (e->opened) {
        failed |= (values[OPEN_TS] = PyLong_FromLongLong(e->open_ts)) == NULL;
        failed |= (values[OPEN] = PyFloat_FromDouble(e->open)) == NULL;
    }
    if (e->closed) {
        failed |= (values[CLOSE_TS] = PyLong_FromLongLong(e->close_ts)) == NULL;
        failed |= (values[CLOSE] = PyFloat_FromDouble(e->close)) == NULL;
    }
    if (e->highered) {
        failed |= (values[HIGH] = PyFloat_FromDouble(e->high)) == NULL;
    }
    if (e->lowered) {
        failed |= (values[LOW] = PyFloat_FromDouble(e->low)) == NULL;
    }
    failed |= (values[VOLUME] = PyFloat_FromDouble(e->volume)) == NULL;
    failed |= (values[PV] = PyFloat_FromDouble(e->pv)) == NULL;
    failed |= (values[N] = PyLong_FromLongLong(e->count)) == NULL;
    int intact = PyList_GET_SIZE(e->acc) == SLOTS;
    PyObject **a = ((PyListObject *)e->acc)->ob_item;
    for (int k = 0; k < SLOTS; k++) {
        if (values[k] == NULL) {
            continue;
        }
        if (failed || !intact) {
            Py_DECREF(values[k]);
        }
        else {
            old[(*olds)++] = a[k];
            a[k] = values[k];
        }
    }
    return failed ? -1 : 0;
}

/* Write every state of the run back and let the accumulators and keys go; -1 if one
 * could not be written (an error is set; the others are). Allocates nothing, and reads the
 * tables only before the run ends (busy = 0): letting go may run finalizers, which may
 * start a run of their own. */
static int
finish(void)
{
    int status = 0;
    PyObject **old = releases; /* room made by state_of for all of it */
    size_t room = releases_room, olds = 0;
    releases = NULL;
    releases_room = 0;
    for (size_t i = 0; i < states_used; i++) {
        if (write_back(&states[i], old, &olds) < 0) {
            status = -1;
        }
    }
    for (size_t i = 0; i < states_used; i++) {
        old[olds++] = states[i].acc;
    }
    for (size_t i = 0; i < by_key.used; i++) {
        old[olds++] = keys_held[i];
    }
    states_used = 0;
    by_key.used = by_acc.used = 0;
    for (int k = 0; k < 2; k++) {
        if (indexes[k]->mask + 1 > MAX_KEPT) {
            PyMem_Free(indexes[k]->entries);
            indexes[k]->entries = NULL;
            indexes[k]->mask = 0;
        }
    }
    if (states_room > MAX_KEPT) {
        PyMem_Free(states);
        states = NULL;
        states_room = 0;
    }
    if (keys_room > MAX_KEPT) {
        PyMem_Free(keys_held);
        keys_held = NULL;
        keys_room = 0;
    }
    busy = 0; /* what follows may run Python code, and the tables are free again */
    for (size_t k = 0; k < olds; k++) { /* may run finalizers: everything is written */
        Py_DECREF(old[k]);
    }
    if (releases == NULL && room <= MAX_KEPT * (SLOTS + 1)) { /* kept for the next run */
        releases = old;
        releases_room = room;
    }
    else {
        PyMem_Free(old);
    }
    return status;
}

/* A run: the rows from start while they can be done and their keys are in bucket. Returns
 * the first row not done, -1 on error (the run's rows written, but see Safety); *missing
 * says whether its key is new. */
static Py_ssize_t
rows(PyObject *bucket, const Batch *b, Py_ssize_t start, int *missing)
{
    *missing = 0;
    busy = 1;
    if (start_run() < 0) {
        busy = 0;
        return -1;
    }
    Py_ssize_t i = start;
    int failed = 0;
    for (; i < b->n; i++) {
        long long ts;
        double price, size;
        PyObject *key = row_at(b, i, &ts, &price, &size);
        if (key == NULL) {
            break;
        }
        State *e = state_of(bucket, key, missing);
        if (e == NULL || e->count == LLONG_MAX) {
            failed = e == NULL && PyErr_Occurred() != NULL;
            break;
        }
        update(e, ts, price, size);
    }
    if (finish() < 0) {
        failed = 1;
    }
    return failed ? -1 : i;
}

/* As the Python loop does at a new key's first row, the accumulator made by initial() and
 * stored, for the rows from start up to the first that cannot be done in C (or whose key's
 * accumulator cannot): 0, or -1 on error. Python code runs here (initial), and nothing is
 * held in C meanwhile. */
static int
create(PyObject *bucket, PyObject *initial, const Batch *b, Py_ssize_t start)
{
    for (Py_ssize_t i = start; i < b->n; i++) {
        long long ts;
        double price, size;
        PyObject *key = row_at(b, i, &ts, &price, &size);
        if (key == NULL) {
            return 0;
        }
        Py_INCREF(key);
        PyObject *acc = PyDict_GetItemWithError(bucket, key); /* borrowed */
        if (acc != NULL || PyErr_Occurred()) {
            Py_DECREF(key);
            if (acc == NULL) {
                return -1;
            }
            if (!usable(acc)) {
                return 0;
            }
            continue;
        }
        acc = PyObject_CallNoArgs(initial);
        int failed = acc == NULL || PyDict_SetItem(bucket, key, acc) < 0;
        int stop = !failed && !usable(acc); /* the Python loop finds it there */
        Py_XDECREF(acc);
        Py_DECREF(key);
        if (failed || stop) {
            return failed ? -1 : 0;
        }
    }
    return 0;
}

/* Every row from first that can be done: runs, with the accumulators of new keys made
 * between them. Returns the first row not done, -1 on error. */
static Py_ssize_t
all_rows(PyObject *bucket, PyObject *initial, const Batch *b, Py_ssize_t first)
{
    Py_ssize_t i = first, created_from = -1;
    for (;;) {
        int missing;
        i = rows(bucket, b, i, &missing);
        if (i < 0 || !missing || i == created_from) { /* the last: made, and gone again */
            return i;
        }
        if (create(bucket, initial, b, i) < 0) {
            return -1;
        }
        created_from = i;
    }
}

/* A bound given as an int: 1 with *value set; 0 when it lies beyond int64 on the side that
 * leaves it no bound (below for lo, above for hi); -1 when no time passes it; -2 on error. */
static int
bound_of(PyObject *obj, int upper, long long *value)
{
    if (!PyLong_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "window: first, lo and hi must be ints");
        return -2;
    }
    int overflow;
    *value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (*value == -1 && PyErr_Occurred()) {
        return -2;
    }
    if (overflow == 0) {
        return 1;
    }
    return (overflow > 0) == upper ? 0 : -1;
}

static PyObject *
window(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 && nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "window(bucket, initial, times, keys, prices, sizes"
                                         "[, first, lo, hi]) takes 6 or 9 arguments");
        return NULL;
    }
    PyObject *bucket = args[0], *initial = args[1], *times = args[2];
    Batch b = {.has_lo = 0, .has_hi = 0};
    Py_ssize_t first = 0;
    if (nargs == 9) {
        first = PyLong_AsSsize_t(args[6]);
        if (first == -1 && PyErr_Occurred()) {
            return NULL;
        }
        int lo = bound_of(args[7], 0, &b.lo), hi = bound_of(args[8], 1, &b.hi);
        if (lo == -2 || hi == -2) {
            return NULL;
        }
        if (lo < 0 || hi < 0) { /* no time is within the bounds */
            return PyLong_FromSsize_t(first);
        }
        b.has_lo = lo;
        b.has_hi = hi;
    }
    int sized = PyList_CheckExact(times) || PyTuple_CheckExact(times) || packed_is_array(times);
    if (!PyDict_CheckExact(bucket) || !sized || busy || first < 0 || first > Py_SIZE(times)) {
        return PyLong_FromSsize_t(first);
    }
    b.n = Py_SIZE(times); /* an array's too: a variable-size object */
    static const char codes[4] = {'q', 0, 'd', 'd'};
    int opened = 0, usable_columns = 1;
    for (; opened < 4 && usable_columns; opened++) {
        usable_columns = open_column(&b.columns[opened], args[2 + opened], codes[opened], b.n);
    }
    Py_ssize_t done = usable_columns ? all_rows(bucket, initial, &b, first) : first;
    for (int c = 0; c < opened; c++) {
        close_column(&b.columns[c]);
    }
    return done < 0 ? NULL : PyLong_FromSsize_t(done);
}

static PyMethodDef methods[] = {
    {"window", (PyCFunction)(void (*)(void))window, METH_FASTCALL,
     "window(bucket, initial, times, keys, prices, sizes[, first, lo, hi]) -> row\n\n"
     "OHLCV over the columns of one window's batch (see operators/_ohlcv.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "operators._ohlcv",
    .m_doc = "OHLCV over the columns of a batch that falls in one window, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__ohlcv(void)
{
    if (packed_init() < 0) {
        return NULL;
    }
    return PyModuleDef_Init(&module);
}
