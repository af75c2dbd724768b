/* A C extension with one bug of each kind the SIP harness' sanitizers must catch in `_scan.c`
 * (tests/fuzz/test_fuzz.py builds it with fuzz/sanitized.py's flags and runs it in the harness' setup). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Reads past the end of the bytes object it is given. */
static PyObject *read_past_end(PyObject *self, PyObject *arg) {
    const char *p = PyBytes_AS_STRING(arg);
    return PyLong_FromLong(p[PyBytes_GET_SIZE(arg) + 64]);
}

/* Signed overflow: undefined behaviour. */
static PyObject *overflow(PyObject *self, PyObject *arg) {
    int x = (int)PyLong_AsLong(arg);
    return PyLong_FromLong(x + 2147483647);
}

static PyMethodDef methods[] = {
    {"read_past_end", read_past_end, METH_O, NULL},
    {"overflow", overflow, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "faulty", NULL, -1, methods};
PyMODINIT_FUNC PyInit_faulty(void) { return PyModule_Create(&module); }
