/* The smallest and largest value of an int column, in one pass, in C.
 *
 * int_bounds(column) -> (low, high) | None. The tumbling window reads a Columns batch's
 * time column for its bounds before anything else (whether any record is late, whether
 * the batch falls in one window). Python's min() and max() are two passes of rich
 * comparisons: event times in ns are three-digit ints, and the pair cost about a tenth
 * of the aggregation loop itself (benchmarks/RESULTS.md). Here each item is read once as
 * a C long long.
 *
 * Returns None, having read the column only, when it is not an exact, non-empty list of
 * exact ints that fit in 64 bits: the caller then uses min() and max(), which take any
 * values Python can order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef methods[] = {
    {"int_bounds", int_bounds, METH_O,
     "int_bounds(column) -> (low, high) | None\n\n"
     "min() and max() of a list of ints in one pass (see operators/_bounds.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "operators._bounds",
    .m_doc = "The smallest and largest value of an int column, in one pass, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__bounds(void)
{
    return PyModuleDef_Init(&module);
}
