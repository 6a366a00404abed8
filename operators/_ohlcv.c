/* OHLCV over the columns of a batch that falls in one window, in C.
 *
 * window(bucket, initial, times, keys, prices, sizes) -> rows done
 *
 * does for each row i, in order, what the tumbling window's one-window loop does with
 * OHLCV's inline body (operators/aggregations.py, _OHLCV_BODY): find the key's accumulator
 * in bucket (a new one from initial() when the key is new), then
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
 * others, as a channel decodes packed columns (engine/numbers.py). A row of lists stores its
 * own objects in the accumulator, as the Python loop does; a row of arrays stores new ints
 * and floats of the same values, which is what iterating the array gives the Python loop.
 *
 * Each accumulator's values are read into C at its first row, updated in C row by row, and
 * written back once: a key with k rows in the batch costs one set of new objects, not k.
 * That gives the Python loop's result only if nothing can look at an accumulator in
 * between, so no Python code runs while any is held in C: the call refuses (returns 0)
 * unless bucket is an exact dict whose keys are all exact str, and the rows it does have
 * exact str keys, whose lookups then run no Python code; what it allocates meanwhile is not
 * tracked by the collector; and the values an accumulator held are freed only after all are
 * written. A key that is not yet in bucket ends such a run (its rows written): the
 * accumulators of it and of the new keys after it are made by initial() and stored, as the
 * Python loop does at each one's first row and in the same order, and the rows go on from
 * that key. aggregations.OHLCV hands out this kernel only with its own initial(), which
 * touches nothing else.
 *
 * It stops before the first row it cannot do exactly that way, and returns that row's
 * index, everything before it done and written; the caller runs the Python loop from there.
 * Such a row has a key that is not an exact str, a time that is not an exact int within 64
 * bits, a price or size that is not an exact float, or an accumulator that is not OHLCV's
 * list of nine with exact ints and floats where the arithmetic reads (as after a rows batch
 * of int prices, say). Returns 0 at once when a column is of another kind, the columns'
 * lengths differ or bucket does not qualify.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

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

static PyObject *array_type; /* array.array, looked up when the module loads */

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
    if (code == 0 || array_type == NULL || !Py_IS_TYPE(obj, (PyTypeObject *)array_type)) {
        return 0;
    }
    if (PyObject_GetBuffer(obj, &c->view, PyBUF_FORMAT | PyBUF_ND) < 0) {
        PyErr_Clear();
        return 0;
    }
    c->viewed = 1;
    const char *f = c->view.format;
    int kind = f != NULL && f[0] != '\0' && f[1] == '\0'
               && (code == 'd' ? f[0] == 'd' : (f[0] == 'q' || f[0] == 'l'));
    if (!kind || c->view.ndim != 1 || c->view.itemsize != 8 || c->view.shape[0] != n) {
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

/* An exact list's or tuple's item i (the caller has checked the kind and the length). */
static PyObject *
item(PyObject *seq, Py_ssize_t i)
{
    return PyList_CheckExact(seq) ? PyList_GET_ITEM(seq, i) : PyTuple_GET_ITEM(seq, i);
}

/* Row i's time: 1 read, 0 not an exact int within int64. */
static int
time_at(const Column *c, Py_ssize_t i, long long *ts)
{
    if (c->values != NULL) {
        memcpy(ts, c->values + 8 * i, 8);
        return 1;
    }
    PyObject *t = item(c->seq, i);
    return PyLong_CheckExact(t) && int64_of(t, ts) == 0;
}

/* Row i's price or size: 1 read, 0 not an exact float. */
static int
double_at(const Column *c, Py_ssize_t i, double *value)
{
    if (c->values != NULL) {
        memcpy(value, c->values + 8 * i, 8);
        return 1;
    }
    PyObject *v = item(c->seq, i);
    if (!PyFloat_CheckExact(v)) {
        return 0;
    }
    *value = PyFloat_AS_DOUBLE(v);
    return 1;
}

/* What to store for row i's time or price: the row's own object from a list or tuple, a
 * new one of the same value from an array. A new reference, NULL on error. */
static PyObject *
time_object(const Column *c, Py_ssize_t i, long long ts)
{
    return c->values == NULL ? Py_NewRef(item(c->seq, i)) : PyLong_FromLongLong(ts);
}

static PyObject *
double_object(const Column *c, Py_ssize_t i, double value)
{
    return c->values == NULL ? Py_NewRef(item(c->seq, i)) : PyFloat_FromDouble(value);
}

/* One accumulator during a run of rows: its values in C, and the row each changed slot
 * last came from (-1: unchanged). */
typedef struct {
    PyObject *acc; /* held */
    long long open_ts, close_ts, count;
    int open_side, close_side; /* int64_of's: the accumulator's times may lie beyond int64 */
    double open, close, high, low, volume, pv;
    Py_ssize_t open_row, close_row, high_row, low_row;
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

/* A run's tables, kept between runs. Only one run uses them at a time: a run holds the GIL
 * and runs no Python code until its states are written back. */
static Index by_key, by_acc; /* by the key object (the same str row after row), by the acc */
static State *states;
static size_t states_used, states_room;
static uint32_t generation;

#define MAX_KEPT 65536 /* entries kept between runs; a larger table is freed after one */

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

/* 0, or -1 with an error when the indexes cannot be made. */
static int
start_run(void)
{
    if (++generation == 0) { /* wrapped: entries of generation 0 are from long ago */
        for (Index *index = &by_key; index != NULL; index = index == &by_key ? &by_acc : NULL) {
            if (index->entries != NULL) {
                memset(index->entries, 0, (index->mask + 1) * sizeof(Entry));
            }
        }
        generation = 1;
    }
    by_key.used = by_acc.used = 0;
    states_used = 0;
    return room_for_one(&by_key) < 0 || room_for_one(&by_acc) < 0 ? -1 : 0;
}

static void
end_run(void)
{
    for (Index *index = &by_key; index != NULL; index = index == &by_key ? &by_acc : NULL) {
        if (index->mask + 1 > MAX_KEPT) {
            PyMem_Free(index->entries);
            index->entries = NULL;
            index->mask = 0;
        }
    }
    if (states_room > MAX_KEPT) {
        PyMem_Free(states);
        states = NULL;
        states_room = 0;
    }
}

/* The state of the accumulator for key, read from it at its first row: NULL, with no error,
 * when the key is not in bucket (*missing set) or its accumulator is not OHLCV's list with
 * the types the arithmetic reads; NULL with an error on failure. */
static State *
state_of(PyObject *bucket, PyObject *key, int *missing)
{
    Entry *k = probe(&by_key, key);
    if (k->generation == generation) {
        return &states[k->state];
    }
    PyObject *acc = PyDict_GetItemWithError(bucket, key); /* borrowed */
    if (acc == NULL) {
        *missing = !PyErr_Occurred();
        return NULL;
    }
    if (room_for_one(&by_key) < 0 || room_for_one(&by_acc) < 0) {
        return NULL;
    }
    Entry *a = probe(&by_acc, acc);
    if (a->generation != generation) { /* an accumulator not yet read: another key object */
        if (!usable(acc)) {
            return NULL;
        }
        if (states_used == states_room) {
            size_t room = states_room ? states_room * 2 : 256;
            State *more = PyMem_Realloc(states, room * sizeof(State));
            if (more == NULL) {
                PyErr_NoMemory();
                return NULL;
            }
            states = more;
            states_room = room;
        }
        PyObject **v = ((PyListObject *)acc)->ob_item;
        State *s = &states[states_used];
        *s = (State){.open_row = -1, .close_row = -1, .high_row = -1, .low_row = -1};
        s->open_side = int64_of(v[OPEN_TS], &s->open_ts);
        s->close_side = int64_of(v[CLOSE_TS], &s->close_ts);
        if (int64_of(v[N], &s->count) != 0) {
            return NULL;
        }
        s->high = PyFloat_AS_DOUBLE(v[HIGH]);
        s->low = PyFloat_AS_DOUBLE(v[LOW]);
        s->volume = PyFloat_AS_DOUBLE(v[VOLUME]);
        s->pv = PyFloat_AS_DOUBLE(v[PV]);
        s->acc = Py_NewRef(acc);
        *a = (Entry){acc, generation, (uint32_t)states_used++};
        by_acc.used++;
    }
    *probe(&by_key, key) = (Entry){key, generation, a->state};
    by_key.used++;
    return &states[a->state];
}

/* OHLCV's body for row i, in C. */
static void
update(State *e, Py_ssize_t i, long long ts, double price, double size)
{
    if (e->open_side > 0 || (e->open_side == 0 && ts < e->open_ts)) {
        e->open_side = 0;
        e->open_ts = ts;
        e->open = price;
        e->open_row = i;
    }
    if (e->close_side < 0 || (e->close_side == 0 && ts >= e->close_ts)) {
        e->close_side = 0;
        e->close_ts = ts;
        e->close = price;
        e->close_row = i;
    }
    if (price > e->high) {
        e->high = price;
        e->high_row = i;
    }
    if (price < e->low) {
        e->low = price;
        e->low_row = i;
    }
    e->volume += size;
    e->pv += price * size;
    e->count += 1;
}

/* Store a state's values in its accumulator; the values they replace go to old (at most
 * SLOTS of them), to be freed once every accumulator is written. -1 on error, the
 * accumulator unchanged. */
static int
write_back(const State *e, const Column *columns, PyObject **old, size_t *olds)
{
    const Column *times = &columns[0], *prices = &columns[2];
    PyObject *values[SLOTS] = {NULL};
    int failed = 0;
    if (e->open_row >= 0) {
        values[OPEN_TS] = time_object(times, e->open_row, e->open_ts);
        values[OPEN] = double_object(prices, e->open_row, e->open);
        failed |= values[OPEN_TS] == NULL || values[OPEN] == NULL;
    }
    if (e->close_row >= 0) {
        values[CLOSE_TS] = time_object(times, e->close_row, e->close_ts);
        values[CLOSE] = double_object(prices, e->close_row, e->close);
        failed |= values[CLOSE_TS] == NULL || values[CLOSE] == NULL;
    }
    if (e->high_row >= 0) {
        failed |= (values[HIGH] = double_object(prices, e->high_row, e->high)) == NULL;
    }
    if (e->low_row >= 0) {
        failed |= (values[LOW] = double_object(prices, e->low_row, e->low)) == NULL;
    }
    failed |= (values[VOLUME] = PyFloat_FromDouble(e->volume)) == NULL;
    failed |= (values[PV] = PyFloat_FromDouble(e->pv)) == NULL;
    failed |= (values[N] = PyLong_FromLongLong(e->count)) == NULL;
    if (failed) {
        for (int k = 0; k < SLOTS; k++) {
            Py_XDECREF(values[k]);
        }
        return -1;
    }
    PyObject **a = ((PyListObject *)e->acc)->ob_item;
    for (int k = 0; k < SLOTS; k++) {
        if (values[k] != NULL) {
            old[(*olds)++] = a[k];
            a[k] = values[k];
        }
    }
    return 0;
}

/* Write every state of the run back and let the accumulators go; -1 if one could not be
 * written (an error is set; the others are). */
static int
finish(const Column *columns)
{
    int status = 0;
    /* Per accumulator: the values of its slots, and the accumulator itself. */
    size_t room = (states_used ? states_used : 1) * (SLOTS + 1);
    PyObject **old = PyMem_Malloc(room * sizeof(PyObject *));
    if (old == NULL) {
        PyErr_NoMemory();
        status = -1;
    }
    size_t olds = 0;
    for (size_t i = 0; i < states_used; i++) {
        const State *e = &states[i];
        if (old == NULL) {
            Py_DECREF(e->acc);
            continue;
        }
        if (write_back(e, columns, old, &olds) < 0) {
            status = -1;
        }
        old[olds++] = e->acc;
    }
    states_used = 0;
    end_run();
    for (size_t k = 0; k < olds; k++) { /* may run finalizers: everything is written */
        Py_DECREF(old[k]);
    }
    PyMem_Free(old);
    return status;
}

/* Whether row i's key, time, price and size can be done in C (read into the last three). */
static int
row_at(const Column *columns, Py_ssize_t i, long long *ts, double *price, double *size)
{
    return PyUnicode_CheckExact(item(columns[1].seq, i)) && time_at(&columns[0], i, ts)
        && double_at(&columns[2], i, price) && double_at(&columns[3], i, size);
}

/* Whether bucket's lookups by an exact str can run no Python code: all its keys are exact
 * str (a key of another type with a Python __eq__ may share a str's hash). */
static int
str_keys_only(PyObject *bucket)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(bucket, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            return 0;
        }
    }
    return 1;
}

/* The rows from start while they can be done and their keys are in bucket, all in C: no
 * Python code runs (no lookup can, nothing allocated is tracked by the collector, and the
 * old values are freed once every accumulator is written). Returns the first row not
 * done, -1 on error (the rows before it written); *missing says whether its key is new. */
static Py_ssize_t
rows(PyObject *bucket, const Column *columns, Py_ssize_t n, Py_ssize_t start, int *missing)
{
    *missing = 0;
    if (start_run() < 0) {
        return -1;
    }
    Py_ssize_t i = start;
    int failed = 0;
    for (; i < n; i++) {
        long long ts;
        double price, size;
        if (!row_at(columns, i, &ts, &price, &size)) {
            break;
        }
        State *e = state_of(bucket, item(columns[1].seq, i), missing);
        if (e == NULL || e->count == LLONG_MAX) {
            failed = e == NULL && PyErr_Occurred() != NULL;
            break;
        }
        update(e, i, ts, price, size);
    }
    if (finish(columns) < 0) {
        failed = 1;
    }
    return failed ? -1 : i;
}

/* As the Python loop does at a new key's first row, the accumulator made by initial() and
 * stored, for the rows from start up to the first that cannot be done in C (or whose key's
 * accumulator cannot): 0, or -1 on error. Python code runs here (initial), and no
 * accumulator is held in C meanwhile. */
static int
create(PyObject *bucket, PyObject *initial, const Column *columns, Py_ssize_t n,
       Py_ssize_t start)
{
    for (Py_ssize_t i = start; i < n; i++) {
        long long ts;
        double price, size;
        for (int c = 0; c < 4; c++) { /* initial() may have changed a list */
            if (columns[c].values == NULL && Py_SIZE(columns[c].seq) != n) {
                return 0;
            }
        }
        if (!row_at(columns, i, &ts, &price, &size)) {
            return 0;
        }
        PyObject *key = Py_NewRef(item(columns[1].seq, i));
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

/* Every row that can be done: in C until a new key, whose accumulators (and those of the
 * rows after it) are then made, and on. Returns the first row not done, -1 on error. */
static Py_ssize_t
all_rows(PyObject *bucket, PyObject *initial, const Column *columns, Py_ssize_t n)
{
    Py_ssize_t i = 0, created_from = -1;
    for (;;) {
        for (int c = 0; c < 4; c++) {
            if (columns[c].values == NULL && Py_SIZE(columns[c].seq) != n) {
                return i;
            }
        }
        if (!str_keys_only(bucket)) {
            return i;
        }
        int missing;
        i = rows(bucket, columns, n, i, &missing);
        if (i < 0 || !missing || i == created_from) { /* the last: made, and gone again */
            return i;
        }
        if (create(bucket, initial, columns, n, i) < 0) {
            return -1;
        }
        created_from = i;
    }
}

static PyObject *
window(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "window(bucket, initial, times, keys, prices, sizes) takes 6 arguments");
        return NULL;
    }
    PyObject *bucket = args[0], *initial = args[1];
    if (!PyDict_CheckExact(bucket)) {
        return PyLong_FromLong(0);
    }
    PyObject *times = args[2];
    int sized = PyList_CheckExact(times) || PyTuple_CheckExact(times)
                || (array_type != NULL && Py_IS_TYPE(times, (PyTypeObject *)array_type));
    if (!sized) {
        return PyLong_FromLong(0);
    }
    const Py_ssize_t n = Py_SIZE(times); /* an array's too: a variable-size object */
    static const char codes[4] = {'q', 0, 'd', 'd'};
    Column columns[4];
    int opened = 0, usable_columns = 1;
    for (; opened < 4 && usable_columns; opened++) {
        usable_columns = open_column(&columns[opened], args[2 + opened], codes[opened], n);
    }
    Py_ssize_t done = usable_columns ? all_rows(bucket, initial, columns, n) : 0;
    for (int c = 0; c < opened; c++) {
        close_column(&columns[c]);
    }
    return done < 0 ? NULL : PyLong_FromSsize_t(done);
}

static PyMethodDef methods[] = {
    {"window", (PyCFunction)(void (*)(void))window, METH_FASTCALL,
     "window(bucket, initial, times, keys, prices, sizes) -> rows done\n\n"
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
    if (array_type == NULL) {
        PyObject *array = PyImport_ImportModule("array");
        if (array == NULL) {
            return NULL;
        }
        array_type = PyObject_GetAttrString(array, "array");
        Py_DECREF(array);
        if (array_type == NULL) {
            return NULL;
        }
    }
    return PyModuleDef_Init(&module);
}
