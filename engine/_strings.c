/* Dictionary encoding of string columns on a channel, in C (engine/strings.py).
 *
 * A channel's encoder keeps a table of the strings it has sent (str -> index); a string
 * column travels as the strings new to the table and one uint16 index per row. The
 * decoder keeps the same table as a list, so every row of a column decodes to a shared
 * str object: no string is built per row, and the str's hash, cached on the object, is
 * computed once per channel rather than once per row by the dictionaries downstream.
 * engine/strings.py holds the Python version of both routines, the reference the tests
 * compare these with.
 *
 * encode(column, ids, limit) -> (new, indices) | None
 *     column: an exact list or tuple of exact str; ids: the encoder's dict (str -> index),
 *     updated; limit: the most entries ids may hold (<= 65536). new: the strings added to
 *     ids, in index order; indices: 2 bytes per row, little-endian. Returns None, with ids
 *     as it was, when the column is not an exact list or tuple, an item is not an exact
 *     str, or the table would pass limit: the caller then sends the column as it is.
 *
 * take(table, indices) -> list
 *     The rows: table[i] for each little-endian uint16 i in indices. ValueError for an
 *     index outside the table.
 *
 * No Python code runs in either loop but the collector's, which an allocation can start:
 * encode reads each item afresh, bounds-checked, and holds a reference to it while it
 * allocates; take allocates its result before it reads the table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_ENTRIES 65536 /* indices are uint16 */

/* Item i of an exact list or tuple (borrowed), or NULL past its end. */
static PyObject *
item_at(PyObject *seq, Py_ssize_t i)
{
    if (PyList_CheckExact(seq)) {
        return i < PyList_GET_SIZE(seq) ? PyList_GET_ITEM(seq, i) : NULL;
    }
    return i < PyTuple_GET_SIZE(seq) ? PyTuple_GET_ITEM(seq, i) : NULL;
}

/* Take the strings of new (added by this call) out of ids again. */
static void
roll_back(PyObject *ids, PyObject *new)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(new); i++) {
        if (PyDict_DelItem(ids, PyList_GET_ITEM(new, i)) < 0) {
            PyErr_Clear();
        }
    }
    PyErr_Restore(type, value, traceback);
}

static PyObject *
encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode(column, ids, limit) takes 3 arguments");
        return NULL;
    }
    PyObject *column = args[0], *ids = args[1];
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (limit < 0 || limit > MAX_ENTRIES) {
        PyErr_Format(PyExc_ValueError, "encode: limit %zd is outside [0, %d]", limit,
                     MAX_ENTRIES);
        return NULL;
    }
    if (!PyDict_CheckExact(ids)) {
        PyErr_SetString(PyExc_TypeError, "encode: ids must be a dict");
        return NULL;
    }
    if (!PyList_CheckExact(column) && !PyTuple_CheckExact(column)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = Py_SIZE(column);
    PyObject *new = PyList_New(0);
    PyObject *indices = PyBytes_FromStringAndSize(NULL, 2 * n);
    if (new == NULL || indices == NULL) {
        Py_XDECREF(new);
        Py_XDECREF(indices);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(indices);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = item_at(column, i);
        if (s == NULL || !PyUnicode_CheckExact(s)) { /* shrunk by a finalizer, or not str */
            goto decline;
        }
        Py_INCREF(s);
        Py_ssize_t index;
        PyObject *found = PyDict_GetItemWithError(ids, s); /* borrowed */
        if (found != NULL) {
            index = PyLong_AsSsize_t(found);
            if (index < 0 || index >= limit) {
                Py_DECREF(s);
                if (!PyErr_Occurred()) {
                    PyErr_Format(PyExc_ValueError, "encode: ids maps a string to %zd, "
                                 "outside [0, %zd)", index, limit);
                }
                goto fail;
            }
        }
        else {
            if (PyErr_Occurred()) {
                Py_DECREF(s);
                goto fail;
            }
            index = PyDict_GET_SIZE(ids);
            if (index >= limit) {
                Py_DECREF(s);
                goto decline;
            }
            PyObject *number = PyLong_FromSsize_t(index);
            int failed = number == NULL || PyDict_SetItem(ids, s, number) < 0;
            Py_XDECREF(number);
            if (!failed && PyList_Append(new, s) < 0) {
                (void)PyDict_DelItem(ids, s); /* keep ids and new in step for the roll-back */
                failed = 1;
            }
            if (failed) {
                Py_DECREF(s);
                goto fail;
            }
        }
        Py_DECREF(s);
        out[2 * i] = (unsigned char)(index & 0xff);
        out[2 * i + 1] = (unsigned char)(index >> 8);
    }
    if (Py_SIZE(column) != n) { /* grew meanwhile: rows would be missing */
        goto decline;
    }
    PyObject *result = PyTuple_Pack(2, new, indices);
    if (result == NULL) {
        goto fail;
    }
    Py_DECREF(new);
    Py_DECREF(indices);
    return result;

decline:
    roll_back(ids, new);
    Py_DECREF(new);
    Py_DECREF(indices);
    Py_RETURN_NONE;

fail:
    roll_back(ids, new);
    Py_DECREF(new);
    Py_DECREF(indices);
    return NULL;
}

static PyObject *
take(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take(table, indices) takes 2 arguments");
        return NULL;
    }
    PyObject *table = args[0], *indices = args[1];
    if (!PyList_CheckExact(table)) {
        PyErr_SetString(PyExc_TypeError, "take: table must be a list");
        return NULL;
    }
    if (!PyBytes_CheckExact(indices)) {
        PyErr_SetString(PyExc_TypeError, "take: indices must be bytes");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(indices);
    if (size % 2) {
        PyErr_Format(PyExc_ValueError, "take: %zd bytes of indices, not a multiple of 2",
                     size);
        return NULL;
    }
    Py_ssize_t n = size / 2;
    PyObject *result = PyList_New(n); /* items NULL until filled below */
    if (result == NULL) {
        return NULL;
    }
    const unsigned char *in = (const unsigned char *)PyBytes_AS_STRING(indices);
    Py_ssize_t entries = PyList_GET_SIZE(table);
    PyObject **items = ((PyListObject *)table)->ob_item;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t index = in[2 * i] | ((Py_ssize_t)in[2 * i + 1] << 8);
        if (index >= entries) {
            Py_DECREF(result); /* list_dealloc skips the NULL items */
            PyErr_Format(PyExc_ValueError, "take: index %zd in a table of %zd strings",
                         index, entries);
            return NULL;
        }
        PyObject *s = items[index];
        Py_INCREF(s);
        PyList_SET_ITEM(result, i, s);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(column, ids, limit) -> (new, indices) | None\n\n"
     "Dictionary-encode a string column against ids (see engine/_strings.c)."},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(table, indices) -> list\n\nThe rows of a dictionary-encoded string column."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "engine._strings",
    .m_doc = "Dictionary encoding of string columns on a channel, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__strings(void)
{
    return PyModule_Create(&module);
}
