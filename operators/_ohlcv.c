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
 * when the columns are not exact lists of one length or bucket not an exact dict.
 *
 * Python code runs only in initial() and in freeing values an accumulator held in its
 * open and close slots (which the checks do not cover): both happen between rows, and the
 * loop reads the columns afresh (with their lengths) at every row.
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

static PyObject *
window(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "window(bucket, initial, times, keys, prices, sizes) takes 6 arguments");
        return NULL;
    }
    PyObject *bucket = args[0], *initial = args[1];
    PyObject *times = args[2], *keys = args[3], *prices = args[4], *sizes = args[5];
    if (!PyDict_CheckExact(bucket) || !PyList_CheckExact(times) || !PyList_CheckExact(keys)
        || !PyList_CheckExact(prices) || !PyList_CheckExact(sizes)) {
        return PyLong_FromLong(0);
    }
    const Py_ssize_t n = PyList_GET_SIZE(times);
    Py_ssize_t i = 0;
    while (i < n) {
        if (PyList_GET_SIZE(times) != n || PyList_GET_SIZE(keys) != n
            || PyList_GET_SIZE(prices) != n || PyList_GET_SIZE(sizes) != n) {
            break;
        }
        PyObject *t = PyList_GET_ITEM(times, i), *key = PyList_GET_ITEM(keys, i);
        PyObject *p = PyList_GET_ITEM(prices, i), *s = PyList_GET_ITEM(sizes, i);
        long long ts;
        if (!PyUnicode_CheckExact(key) || !PyLong_CheckExact(t) || int64_of(t, &ts) != 0
            || !PyFloat_CheckExact(p) || !PyFloat_CheckExact(s)) {
            break;
        }
        PyObject *acc = PyDict_GetItemWithError(bucket, key); /* borrowed */
        if (acc == NULL) {
            if (PyErr_Occurred()) {
                return NULL;
            }
            PyObject *fresh = PyObject_CallNoArgs(initial);
            if (fresh == NULL) {
                return NULL;
            }
            int failed = PyDict_SetItem(bucket, key, fresh);
            Py_DECREF(fresh);
            if (failed) {
                return NULL;
            }
            continue; /* Python code ran: read the row again */
        }
        if (!usable(acc)) {
            break;
        }
        PyObject **a = ((PyListObject *)acc)->ob_item;
        long long open_ts, close_ts, count;
        int open_side = int64_of(a[OPEN_TS], &open_ts);
        int close_side = int64_of(a[CLOSE_TS], &close_ts);
        if (int64_of(a[N], &count) != 0 || count == LLONG_MAX) {
            break;
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
            return NULL;
        }
        /* Floats and ints are not tracked by the collector, so making them ran no Python
         * code: the accumulator and the row are as read. */
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
        i++;
        for (int k = 0; k < olds; k++) {
            Py_DECREF(old[k]);
        }
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
