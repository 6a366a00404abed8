/* Numeric columns as raw 8-byte values on a channel, in C (engine/numbers.py).
 *
 * pack(column, code) -> bytes | None
 *     code "d": column an exact list or tuple of exact floats, packed as IEEE doubles;
 *     code "q": an exact list or tuple of exact ints within int64 (a bool is not an exact
 *     int), packed as int64. 8 bytes per row, in the machine's order (the caller packs only
 *     on a little-endian machine: the wire is little-endian). Returns None when the column
 *     is not such a list or tuple: the caller then sends it as msgpack, which checks and
 *     converts what it holds as the decoder's types say.
 *
 * The result is allocated before the column is read, and nothing after that can run
 * Python code (a bytes object is not tracked by the collector), so the column cannot
 * change while it is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
pack(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pack(column, code) takes 2 arguments");
        return NULL;
    }
    PyObject *column = args[0], *code = args[1];
    int floats;
    if (PyUnicode_CheckExact(code) && PyUnicode_CompareWithASCIIString(code, "d") == 0) {
        floats = 1;
    }
    else if (PyUnicode_CheckExact(code) && PyUnicode_CompareWithASCIIString(code, "q") == 0) {
        floats = 0;
    }
    else {
        PyErr_SetString(PyExc_ValueError, "pack: code must be 'd' or 'q'");
        return NULL;
    }
    if (!PyList_CheckExact(column) && !PyTuple_CheckExact(column)) {
        Py_RETURN_NONE;
    }
    const Py_ssize_t n = Py_SIZE(column);
    PyObject *packed = PyBytes_FromStringAndSize(NULL, n * 8);
    if (packed == NULL) {
        return NULL;
    }
    PyObject **items = PyList_CheckExact(column) ? ((PyListObject *)column)->ob_item
                                                 : ((PyTupleObject *)column)->ob_item;
    char *out = PyBytes_AS_STRING(packed);
    if (floats) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyFloat_CheckExact(items[i])) {
                goto decline;
            }
            double value = PyFloat_AS_DOUBLE(items[i]);
            memcpy(out + 8 * i, &value, 8);
        }
    }
    else {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyLong_CheckExact(items[i])) {
                goto decline;
            }
            int overflow;
            long long value = PyLong_AsLongLongAndOverflow(items[i], &overflow);
            if (overflow) {
                goto decline;
            }
            memcpy(out + 8 * i, &value, 8);
        }
    }
    return packed;

decline:
    Py_DECREF(packed);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pack", (PyCFunction)(void (*)(void))pack, METH_FASTCALL,
     "pack(column, code) -> bytes | None\n\n"
     "An int ('q') or float ('d') column as 8-byte values (see engine/_numbers.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "engine._numbers",
    .m_doc = "Numeric columns as raw 8-byte values on a channel, in C.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__numbers(void)
{
    return PyModuleDef_Init(&module);
}
