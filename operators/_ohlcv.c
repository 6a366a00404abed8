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
 * with the same objects stored and the same double arithmetic (the build turns off fused
 * multiply-add, so price * size is rounded before it is added, as in Python): the results
 * are identical to the bit, but for which NaN a sum of two NaNs is (the compiler orders
 * the operands of an addition as it likes, here as in CPython).
 *
 * It stops before the first row it cannot do exactly that way, and returns that row's
 * index, having changed nothing for it; the caller runs the Python loop from there. Such a
 * row has a key that is not an exact str (its hash or comparison could run Python code), a
 * time that is not an exact int within 64 bits, a price or size that is not an exact
 * float, or an accumulator that is not OHLCV's list of nine with exact ints and floats
 * where the arithmetic reads (as after a rows batch of int prices, say). Returns 0 at once
 * when the columns are not exact lists or tuples or bucket not an exact dict.
 *
 * Python code can run in the dict lookup (a key of another type with a Python __eq__ may
 * share a str's hash), in initial() and in freeing the values an accumulator held in its
 * open and close slots (which the checks do not cover). So each row's four objects and its
 * accumulator are held (strong references) while the row is done, the old values are freed
 * only once it is, and the loop reads the columns afresh, with their lengths, at every row.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>

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

/* Put value (a new reference) in slot k; the old value goes to *old for the caller to free
 * once the row is done. */
static void
put(PyObject **a, int k, PyObject *value, PyObject **old, int *olds)
{
    old[(*olds)++] = a[k];
    a[k] = value;
}

/* An exact list's or tuple's item i (the caller has checked the kind and the length). */
static PyObject *
item(PyObject *column, Py_ssize_t i)
{
    return PyList_CheckExact(column) ? PyList_GET_ITEM(column, i) : PyTuple_GET_ITEM(column, i);
}

/* The body for one row, on an accumulator the caller holds: 1 done, 0 not doable (nothing
 * changed). No Python code runs until the old values are freed, at the end. */
static int
update(PyObject *acc, PyObject *t, long long ts, PyObject *p, PyObject *s)
{
    if (!usable(acc)) {
        return 0;
    }
    PyObject **a = ((PyListObject *)acc)->ob_item;
    long long open_ts, close_ts, count;
    int open_side = int64_of(a[OPEN_TS], &open_ts);
    int close_side = int64_of(a[CLOSE_TS], &close_ts);
    if (int64_of(a[N], &count) != 0 || count == LLONG_MAX) {
        return 0;
    }
    const double price = PyFloat_AS_DOUBLE(p), size = PyFloat_AS_DOUBLE(s);
    const double product = price * size;
    PyObject *volume = PyFloat_FromDouble(PyFloat_AS_DOUBLE(a[VOLUME]) + size);
    PyObject *pv = PyFloat_FromDouble(PyFloat_AS_DOUBLE(a[PV]) + product);
    PyObject *counted = PyLong_FromLongLong(count + 1);
    if (volume == NULL || pv == NULL || counted == NULL) {
        Py_XDECREF(volume);
        Py_XDECREF(pv);
        Py_XDECREF(counted);
        return -1;
    }
    /* Floats and ints are not tracked by the collector, so making them ran no Python code:
     * the accumulator is as read. */
    PyObject *old[SLOTS];
    int olds = 0;
    if (open_side > 0 || (open_side == 0 && ts < open_ts)) {
        put(a, OPEN_TS, Py_NewRef(t), old, &olds);
        put(a, OPEN, Py_NewRef(p), old, &olds);
    }
    if (close_side < 0 || (close_side == 0 && ts >= close_ts)) {
        put(a, CLOSE_TS, Py_NewRef(t), old, &olds);
        put(a, CLOSE, Py_NewRef(p), old, &olds);
    }
    if (price > PyFloat_AS_DOUBLE(a[HIGH])) {
        put(a, HIGH, Py_NewRef(p), old, &olds);
    }
    if (price < PyFloat_AS_DOUBLE(a[LOW])) {
        put(a, LOW, Py_NewRef(p), old, &olds);
    }
    put(a, VOLUME, volume, old, &olds);
    put(a, PV, pv, old, &olds);
    put(a, N, counted, old, &olds);
    for (int k = 0; k < olds; k++) {
        Py_DECREF(old[k]);
    }
    return 1;
}

/* One row, whose objects the caller holds: 1 done, 0 not doable, -1 error. The lookup can
 * run Python code (a key of another type in the bucket, with a Python __eq__, may share the
 * str's hash), and so can initial(): the accumulator is held from then on. */
static int
add_row(PyObject *bucket, PyObject *initial, PyObject *t, PyObject *key, PyObject *p,
        PyObject *s)
{
    long long ts;
    if (!PyUnicode_CheckExact(key) || !PyLong_CheckExact(t) || int64_of(t, &ts) != 0
        || !PyFloat_CheckExact(p) || !PyFloat_CheckExact(s)) {
        return 0;
    }
    PyObject *acc = PyDict_GetItemWithError(bucket, key);
    if (acc != NULL) {
        Py_INCREF(acc);
    }
    else {
        if (PyErr_Occurred()) {
            return -1;
        }
        /* As the Python loop does: a new key's accumulator is made and stored first (if it
         * is not OHLCV's list, the Python loop then finds it there). */
        acc = PyObject_CallNoArgs(initial);
        if (acc == NULL) {
            return -1;
        }
        if (PyDict_SetItem(bucket, key, acc) < 0) {
            Py_DECREF(acc);
            return -1;
        }
    }
    int done = update(acc, t, ts, p, s);
    Py_DECREF(acc);
    return done;
}

static PyObject *
window(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "window(bucket, initial, times, keys, prices, sizes) takes 6 arguments");
        return NULL;
    }
    PyObject *bucket = args[0], *initial = args[1], *const *columns = args + 2;
    if (!PyDict_CheckExact(bucket)) {
        return PyLong_FromLong(0);
    }
    for (int c = 0; c < 4; c++) {
        if (!PyList_CheckExact(columns[c]) && !PyTuple_CheckExact(columns[c])) {
            return PyLong_FromLong(0);
        }
    }
    const Py_ssize_t n = Py_SIZE(columns[0]);
    Py_ssize_t i = 0;
    while (i < n) {
        if (Py_SIZE(columns[1]) != n || Py_SIZE(columns[2]) != n || Py_SIZE(columns[3]) != n
            || Py_SIZE(columns[0]) != n) {
            break;
        }
        /* Held for the row, as the Python loop's zip holds its row in a tuple. */
        PyObject *t = Py_NewRef(item(columns[0], i)), *key = Py_NewRef(item(columns[1], i));
        PyObject *p = Py_NewRef(item(columns[2], i)), *s = Py_NewRef(item(columns[3], i));
        int done = add_row(bucket, initial, t, key, p, s);
        Py_DECREF(t);
        Py_DECREF(key);
        Py_DECREF(p);
        Py_DECREF(s);
        if (done < 0) {
            return NULL;
        }
        if (done == 0) {
            break;
        }
        i++;
    }
    return PyLong_FromSsize_t(i);
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
    return PyModuleDef_Init(&module);
}
