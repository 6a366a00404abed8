/* Packed columns as a channel decodes them (engine/numbers.py): array.array of 8-byte
 * ints ('q', or 'l' where a long is 8 bytes) or of doubles ('d'). Shared by the
 * extensions that read them in place (_columns.c, _ohlcv.c) or make them (_csvticks.c,
 * partitioning/_native.c). */
#ifndef RINGFLOW_PACKED_H
#define RINGFLOW_PACKED_H

#include <Python.h>

static PyObject *packed_array_type; /* array.array, looked up when the module loads */

/* Look array.array up: 0, or -1 with an error. */
static inline int
packed_init(void)
{
    if (packed_array_type != NULL) {
        return 0;
    }
    PyObject *array = PyImport_ImportModule("array");
    if (array == NULL) {
        return -1;
    }
    packed_array_type = PyObject_GetAttrString(array, "array");
    Py_DECREF(array);
    return packed_array_type == NULL ? -1 : 0;
}

/* Whether obj is an array.array (exactly). */
static inline int
packed_is_array(PyObject *obj)
{
    return packed_array_type != NULL && Py_IS_TYPE(obj, (PyTypeObject *)packed_array_type);
}

/* 1 with *view held (release it with PyBuffer_Release) when obj is an array.array of
 * 8-byte items of code's kind ('q': ints, 'd': doubles); else 0, holding nothing. An
 * exported array cannot be resized until its view is released. */
static inline int
packed_view(PyObject *obj, char code, Py_buffer *view)
{
    if (!packed_is_array(obj)) {
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_FORMAT | PyBUF_ND) < 0) {
        PyErr_Clear();
        return 0;
    }
    const char *f = view->format;
    int kind = f != NULL && f[0] != '\0' && f[1] == '\0'
               && (code == 'd' ? f[0] == 'd' : (f[0] == 'q' || f[0] == 'l'));
    if (!kind || view->ndim != 1 || view->itemsize != 8) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* The type code of an array.array of 8-byte items ('q', 'l' or 'd'), else 0. */
static inline char
packed_code(PyObject *obj)
{
    Py_buffer view;
    if (!packed_view(obj, 'q', &view) && !packed_view(obj, 'd', &view)) {
        return 0;
    }
    char code = view.format[0];
    PyBuffer_Release(&view);
    return code;
}

/* A new array.array of code ('q', 'l' or 'd') holding the 8-byte values in the bytes
 * object raw (copied), or NULL with an error. */
static inline PyObject *
packed_from_bytes(char code, PyObject *raw)
{
    char format[2] = {code, '\0'};
    return PyObject_CallFunction(packed_array_type, "sO", format, raw);
}

#endif
