/* Column helpers for the tumbling window, in C.
 *
 * int_bounds(column) -> (low, high) | None. The window reads a Columns batch's time column
 * for its bounds before anything else (whether any record is late, whether the batch falls
 * in one window). Python's min() and max() are two passes of rich comparisons: event times
 * in ns are three-digit ints, and the pair cost about a tenth of the aggregation loop itself
 * (benchmarks/RESULTS.md). Here each item is read once as a C long long, from an exact list
 * of exact ints or from an array.array of 8-byte ints ('q', 'l': a packed column as a
 * channel decodes it, engine/numbers.py). Returns None, having read the column only, for
 * an empty column or any other (a list holding a value that is not an exact int within 64
 * bits, say): the caller then uses min() and max(), which take any values Python can
 * order.
 *
 * fields(records, names) -> tuple of lists | None. The fields a window reads, as columns,
 * from a list of records of one slotted type (a msgspec Struct, or a class with
 * __slots__): each value read at its member descriptor's offset, as the descriptor's
 * __get__ reads it, without a call per record and field. Returns None, keeping nothing,
 * unless every record is exactly of the first one's type, that type uses the default
 * attribute access (no __getattribute__ or __getattr__ of its own), each name is an object
 * slot of it (a member descriptor, found as attribute access finds it, on every call) and
 * no slot read is unset: the caller then reads the fields with attrgetter, which gives what
 * Python gives, errors included.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_packed.h"

#define MAX_FIELDS 16

/* int_bounds of an array.array: None unless its items are 8-byte ints. */
static PyObject *
array_bounds(PyObject *column)
{
    Py_buffer view;
    if (!packed_view(column, 'q', &view)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t n = view.shape[0];
    if (n == 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    const long long *values = view.buf;
    long long low = values[0], high = values[0];
    for (Py_ssize_t i = 1; i < n; i++) {
        long long value = values[i];
        if (value < low) {
            low = value;
        }
        else if (value > high) {
            high = value;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(LL)", low, high);
}

static PyObject *
int_bounds(PyObject *Py_UNUSED(module), PyObject *column)
{
    if (packed_is_array(column)) {
        return array_bounds(column);
    }
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

/* The list, untracked by the collector while its items are unset (a collection could
 * otherwise hand it to Python code through gc.get_objects()). */
static PyObject *
untracked_list(Py_ssize_t n)
{
    PyObject *list = PyList_New(n);
    if (list != NULL) {
        PyObject_GC_UnTrack(list);
    }
    return list;
}

/* Fill columns[j][i] with field names[j] of records[i]: 1 done, 0 not readable so. Each
 * name is looked up on the type as attribute access would for an instance (_PyType_Lookup,
 * through the MRO, on every call, so a class attribute replaced since is seen): a member
 * descriptor found there decides (it is a data descriptor), and its __get__ reads the slot
 * at its offset, as this does. */
static int
read_records(PyObject *records, Py_ssize_t n, PyObject *names, Py_ssize_t k,
             PyObject **columns)
{
    if (PyList_GET_SIZE(records) != n) {
        return 0;
    }
    PyTypeObject *type = Py_TYPE(PyList_GET_ITEM(records, 0));
    if (type->tp_getattro != PyObject_GenericGetAttr) { /* a __getattribute__ of its own */
        return 0;
    }
    Py_ssize_t offsets[MAX_FIELDS];
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *name = PyTuple_GET_ITEM(names, j);
        if (!PyUnicode_CheckExact(name)) {
            return 0;
        }
        PyObject *d = _PyType_Lookup(type, name); /* borrowed */
        if (d == NULL || !PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
            return 0;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)d)->d_member;
        if (member->type != T_OBJECT_EX || !PyType_IsSubtype(type, PyDescr_TYPE(d))) {
            return 0;
        }
        offsets[j] = member->offset;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (Py_TYPE(record) != type) {
            return 0;
        }
        for (Py_ssize_t j = 0; j < k; j++) {
            PyObject *value = *(PyObject **)((char *)record + offsets[j]);
            if (value == NULL) {
                return 0;
            }
            PyList_SET_ITEM(columns[j], i, Py_NewRef(value));
        }
    }
    return 1;
}

static PyObject *
fields(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fields(records, names) takes 2 arguments");
        return NULL;
    }
    PyObject *records = args[0], *names = args[1];
    if (!PyList_CheckExact(records) || PyList_GET_SIZE(records) == 0
        || !PyTuple_CheckExact(names)) {
        Py_RETURN_NONE;
    }
    const Py_ssize_t k = PyTuple_GET_SIZE(names);
    if (k < 1 || k > MAX_FIELDS) {
        Py_RETURN_NONE;
    }
    /* The lists first: making them may run a collection, and Python code with it. From
     * then on nothing allocates and no Python code runs, so the type's attributes and the
     * records are read as they are. */
    const Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *columns[MAX_FIELDS];
    for (Py_ssize_t j = 0; j < k; j++) {
        columns[j] = untracked_list(n);
        if (columns[j] == NULL) {
            while (j-- > 0) {
                Py_DECREF(columns[j]);
            }
            return NULL;
        }
    }
    int ok = read_records(records, n, names, k, columns);
    if (ok <= 0) {
        for (Py_ssize_t j = 0; j < k; j++) {
            Py_DECREF(columns[j]); /* a list with unset items frees those it has */
        }
        if (ok < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *out = PyTuple_New(k);
    if (out == NULL) {
        for (Py_ssize_t j = 0; j < k; j++) {
            Py_DECREF(columns[j]);
        }
        return NULL;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject_GC_Track(columns[j]);
        PyTuple_SET_ITEM(out, j, columns[j]);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"int_bounds", int_bounds, METH_O,
     "int_bounds(column) -> (low, high) | None\n\n"
     "min() and max() of a list of ints in one pass (see operators/_columns.c)."},
    {"fields", (PyCFunction)(void (*)(void))fields, METH_FASTCALL,
     "fields(records, names) -> tuple of lists | None\n\n"
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
    if (packed_init() < 0) {
        return NULL;
    }
    return PyModuleDef_Init(&module);
}
