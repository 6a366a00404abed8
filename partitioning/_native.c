/* The key-hash splitter's per-record loop for Columns batches, in C.
 *
 * split_columns(keys, cache, parallelism, columns) looks every key up in the splitter's
 * cache (key -> replica) and deals the rows of every column out to per-replica lists, in
 * batch order: one dictionary lookup per row, then one pointer copy per row and column.
 * The same work in Python is a lookup, an index append and an itemgetter gather per row,
 * about ten times the cost (benchmarks/RESULTS.md). partitioning/keyhash.py holds the
 * Python version of this routine, used when the module is not built and tested against it.
 *
 * Returns a list with one entry per replica: None where no row goes, else a tuple with one
 * column per column: a list for a list or tuple, an array.array of the same type code for
 * an array of 8-byte items (a packed column as a channel decodes it, engine/numbers.py, or
 * as the CSV source parses it), its values copied as they are. Returns None, having
 * changed nothing, when a key is not in the cache, when a key is not an exact str, bytes or
 * int, or when the keys are not an exact list or tuple or a column is none of those: the
 * caller then takes the Python path, which places new keys and explains bad ones.
 *
 * No Python code may run while the loops hold raw pointers into the lists. The lookups
 * compare keys with the cache's keys, so the caller calls this only while every cached key
 * is an exact str, bytes or int too (their hashing and comparison are C). The allocations
 * between the lookups and the copies can start a garbage collection, which can run
 * finalizers: the columns are checked again after them, and a column that changed size
 * makes the routine return None. An array's items are read and written through buffer
 * views taken after that check, when no Python code can run any more.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../operators/_packed.h"

#define MAX_PARALLELISM 32768 /* partitioning.keyhash.MAX_KEY_GROUPS */
_Static_assert(MAX_PARALLELISM <= 65536, "replicas are stored as uint16_t");

/* The items of an exact list or tuple (0), or -1 for any other sequence. */
static int
items_of(PyObject *seq, PyObject ***items, Py_ssize_t *n)
{
    if (PyList_CheckExact(seq)) {
        *items = ((PyListObject *)seq)->ob_item;
        *n = PyList_GET_SIZE(seq);
        return 0;
    }
    if (PyTuple_CheckExact(seq)) {
        *items = ((PyTupleObject *)seq)->ob_item;
        *n = PyTuple_GET_SIZE(seq);
        return 0;
    }
    return -1;
}

/* A new array.array of code with n items (their values unset), or NULL with an error. */
static PyObject *
new_array(char code, Py_ssize_t n)
{
    PyObject *raw = PyBytes_FromStringAndSize(NULL, n * 8);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *array = packed_from_bytes(code, raw);
    Py_DECREF(raw);
    return array;
}

/* Copy the 8-byte items of the array src to the arrays of group[r] (column c) by
 * replica_of: 0, or -1 with an error. */
static int
deal_array(PyObject *src, PyObject *result, Py_ssize_t c, const uint16_t *replica_of,
           Py_ssize_t n, Py_ssize_t parallelism)
{
    Py_buffer from;
    if (PyObject_GetBuffer(src, &from, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    Py_buffer *to = PyMem_Calloc((size_t)parallelism, sizeof(Py_buffer));
    char **next = PyMem_Calloc((size_t)parallelism, sizeof(char *));
    Py_ssize_t held = 0;
    int status = -1;
    if (to == NULL || next == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < parallelism; held++) {
        PyObject *group = PyList_GET_ITEM(result, held);
        if (group == Py_None) {
            continue;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(group, c), &to[held], PyBUF_WRITABLE) < 0) {
            goto done;
        }
        next[held] = to[held].buf;
    }
    const char *values = from.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t r = replica_of[i];
        memcpy(next[r], values + 8 * i, 8);
        next[r] += 8;
    }
    status = 0;

done:
    for (Py_ssize_t r = 0; r < held; r++) {
        if (next[r] != NULL) {
            PyBuffer_Release(&to[r]);
        }
    }
    PyMem_Free(to);
    PyMem_Free(next);
    PyBuffer_Release(&from);
    return status;
}

static PyObject *
split_columns(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "split_columns(keys, cache, parallelism, columns) takes 4 arguments");
        return NULL;
    }
    PyObject *keys = args[0], *cache = args[1], *columns = args[3];
    Py_ssize_t parallelism = PyLong_AsSsize_t(args[2]);
    if (parallelism == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (parallelism < 1 || parallelism > MAX_PARALLELISM) {
        PyErr_Format(PyExc_ValueError, "split_columns: parallelism %zd is outside [1, %d]",
                     parallelism, MAX_PARALLELISM);
        return NULL;
    }
    if (!PyDict_CheckExact(cache)) {
        PyErr_SetString(PyExc_TypeError, "split_columns: cache must be a dict");
        return NULL;
    }
    if (!PyTuple_CheckExact(columns)) {
        PyErr_SetString(PyExc_TypeError, "split_columns: columns must be a tuple");
        return NULL;
    }
    PyObject **key_items;
    Py_ssize_t n;
    if (items_of(keys, &key_items, &n) < 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t ncols = PyTuple_GET_SIZE(columns);
    /* Per column: an array's type code, 0 for a list or tuple. */
    char *codes = PyMem_Calloc((size_t)(ncols ? ncols : 1), 1);
    PyObject *result = NULL;
    uint16_t *replica_of = NULL;
    Py_ssize_t *counts = NULL;
    PyObject ***targets = NULL;
    if (codes == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t c = 0; c < ncols; c++) {
        PyObject **unused;
        Py_ssize_t len;
        PyObject *column = PyTuple_GET_ITEM(columns, c);
        if (items_of(column, &unused, &len) < 0) {
            codes[c] = packed_code(column);
            if (!codes[c]) {
                result = Py_NewRef(Py_None);
                goto done;
            }
            len = Py_SIZE(column);
        }
        if (len != n) {
            PyErr_Format(PyExc_ValueError,
                         "split_columns: column %zd has %zd values, the keys %zd", c, len, n);
            goto done;
        }
    }

    replica_of = PyMem_Malloc((n ? n : 1) * sizeof(uint16_t));
    counts = PyMem_Calloc((size_t)parallelism, sizeof(Py_ssize_t));
    targets = PyMem_Calloc((size_t)parallelism, sizeof(PyObject **));
    if (replica_of == NULL || counts == NULL || targets == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = key_items[i];
        if (!(PyUnicode_CheckExact(key) || PyBytes_CheckExact(key) || PyLong_CheckExact(key))) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        PyObject *found = PyDict_GetItemWithError(cache, key); /* borrowed */
        if (found == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            result = Py_NewRef(Py_None);
            goto done;
        }
        Py_ssize_t replica = PyLong_AsSsize_t(found);
        if (replica < 0 || replica >= parallelism) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_ValueError,
                             "split_columns: the cache maps a key to replica %zd, outside "
                             "[0, %zd)", replica, parallelism);
            }
            goto done;
        }
        replica_of[i] = (uint16_t)replica;
        counts[replica]++;
    }

    result = PyList_New(parallelism);
    if (result == NULL) {
        goto done;
    }
    for (Py_ssize_t r = 0; r < parallelism; r++) {
        PyObject *group;
        if (counts[r] == 0) {
            group = Py_NewRef(Py_None);
        }
        else {
            group = PyTuple_New(ncols);
            if (group == NULL) {
                Py_CLEAR(result);
                goto done;
            }
            for (Py_ssize_t c = 0; c < ncols; c++) {
                /* A list's items are NULL until filled below, an array's unset. */
                PyObject *list = codes[c] ? new_array(codes[c], counts[r]) : PyList_New(counts[r]);
                if (list == NULL) {
                    Py_DECREF(group);
                    Py_CLEAR(result);
                    goto done;
                }
                PyTuple_SET_ITEM(group, c, list);
            }
        }
        PyList_SET_ITEM(result, r, group);
    }
    /* The allocations above may have run a collection, and finalizers with it: check the
     * columns again. No Python code runs from here on, so every new list is filled before
     * anyone sees it. */
    for (Py_ssize_t c = 0; c < ncols; c++) {
        PyObject **unused;
        Py_ssize_t len;
        PyObject *column = PyTuple_GET_ITEM(columns, c);
        int same = codes[c] ? Py_SIZE(column) == n
                            : items_of(column, &unused, &len) == 0 && len == n;
        if (!same) {
            Py_SETREF(result, Py_NewRef(Py_None));
            goto done;
        }
    }
    for (Py_ssize_t c = 0; c < ncols; c++) {
        if (codes[c]) {
            if (deal_array(PyTuple_GET_ITEM(columns, c), result, c, replica_of, n,
                           parallelism) < 0) {
                Py_CLEAR(result);
                goto done;
            }
            continue;
        }
        for (Py_ssize_t r = 0; r < parallelism; r++) {
            PyObject *group = PyList_GET_ITEM(result, r);
            targets[r] = group == Py_None
                ? NULL
                : ((PyListObject *)PyTuple_GET_ITEM(group, c))->ob_item;
        }
        PyObject **items = NULL;
        Py_ssize_t len = 0;
        (void)items_of(PyTuple_GET_ITEM(columns, c), &items, &len); /* checked just above */
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *value = items[i];
            Py_INCREF(value);
            *targets[replica_of[i]]++ = value;
        }
    }

done:
    PyMem_Free(codes);
    PyMem_Free(replica_of);
    PyMem_Free(counts);
    PyMem_Free(targets);
    return result;
}

static PyMethodDef methods[] = {
    {"split_columns", (PyCFunction)(void (*)(void))split_columns, METH_FASTCALL,
     "split_columns(keys, cache, parallelism, columns) -> list | None\n\n"
     "Deal the rows of columns out to replicas by cache[key] (see partitioning/_native.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "partitioning._native",
    .m_doc = "The key-hash splitter's per-record loop for Columns batches, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (packed_init() < 0) {
        return NULL;
    }
    return PyModuleDef_Init(&module);
}
