/* Column helpers for the tumbling window, in C.
 *
 * int_bounds(column) -> (low, high) | None. The window reads a Columns batch's time column
 * for its bounds before anything else (whether any record is late, whether the batch falls
 * in one window). Python's min() and max() are two passes of rich comparisons: event times
 * in ns are three-digit ints, and the pair cost about a tenth of the aggregation loop itself
 * (benchmarks/RESULTS.md). Here each item is read once as a C long long. Returns None,
 * having read the column only, when it is not an exact, non-empty list of exact ints that
 * fit in 64 bits: the caller then uses min() and max(), which take any values Python can
 * order.
 *
 * fields(records, record_type, descriptors) -> tuple of lists | None. The fields a window
 * reads, as columns, from a list of records of one slotted type (a msgspec Struct, or a
 * class with __slots__): each descriptor is the type's member descriptor for a field, and
 * each value is read at the descriptor's offset, as the descriptor's __get__ would read it,
 * without a call per record and field (four map(attrgetter) over a list cost about 200 ns a
 * record; this, about 15). Returns None, having built nothing, when records is not an exact
 * list, a record is not exactly of record_type, a descriptor is not a member descriptor of
 * a required object slot of that type, or a field is unset (the caller then reads them with
 * attrgetter, which raises where Python would).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define MAX_FIELDS 16

static PyObject *
int_bounds(PyObject *Py_UNUSED(module), PyObject *column)
{
    if (!PyList_CheckExact(column) || PyList_GET_SIZE(column) == 0) {
        Py_RETURN_NONE;
    }
    /* No Python code runs in the loop (exact ints only), so the list cannot change. */
    PyObject **items = ((PyListObject *)column)->ob_item;
    Py_ssize_t n = PyList_GET_SIZE(column);
    long long low = 0, high = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i];
        if (!PyLong_CheckExact(item)) {
            Py_RETURN_NONE;
        }
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
        if (overflow) {
            Py_RETURN_NONE;
        }
        if (i == 0) {
            low = high = value;
        }
        else if (value < low) {
            low = value;
        }
        else if (value > high) {
            high = value;
        }
    }
    return Py_BuildValue("(LL)", low, high);
}

static PyObject *
fields(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "fields(records, record_type, descriptors) takes 3 arguments");
        return NULL;
    }
    PyObject *records = args[0], *record_type = args[1], *descriptors = args[2];
    if (!PyList_CheckExact(records) || !PyType_Check(record_type)
        || !PyTuple_CheckExact(descriptors)) {
        Py_RETURN_NONE;
    }
    const Py_ssize_t k = PyTuple_GET_SIZE(descriptors);
    if (k < 1 || k > MAX_FIELDS) {
        Py_RETURN_NONE;
    }
    Py_ssize_t offsets[MAX_FIELDS];
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *d = PyTuple_GET_ITEM(descriptors, j);
        if (!PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
            Py_RETURN_NONE;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)d)->d_member;
        if (member->type != T_OBJECT_EX
            || !PyType_IsSubtype((PyTypeObject *)record_type, PyDescr_TYPE(d))) {
            Py_RETURN_NONE;
        }
        offsets[j] = member->offset;
    }
    const Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *out = PyTuple_New(k);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *column = PyList_New(n); /* its items NULL until set */
        if (column == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, j, column);
    }
    /* Making the lists may have run a collection, and finalizers with it: from here on
     * nothing allocates, so no Python code runs while the loop reads the records. */
    if (PyList_GET_SIZE(records) != n) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (Py_TYPE(record) != (PyTypeObject *)record_type) {
            Py_DECREF(out); /* a list with unset items frees the ones it has */
            Py_RETURN_NONE;
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *value = *(PyObject **)((char *)record + offsets[j]);
            if (value == NULL) {
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            PyList_SET_ITEM(PyTuple_GET_ITEM(out, j), i, Py_NewRef(value));
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"int_bounds", int_bounds, METH_O,
     "int_bounds(column) -> (low, high) | None\n\n"
     "min() and max() of a list of ints in one pass (see operators/_columns.c)."},
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(records, record_type, descriptors) -> tuple of lists | None\n\n"
     "Slotted records' fields as columns (see operators/_columns.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "operators._columns",
    .m_doc = "Column helpers for the tumbling window, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__columns(void)
{
    return PyModuleDef_Init(&module);
}
