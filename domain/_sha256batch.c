/* RFC 9162 leaf and node hashes for whole lists at once, through OpenSSL's SHA-256.
 *
 * hashlib spends about 0.4 us per hash setting up and copying an OpenSSL context; over a
 * list one context is reused, which leaves only the hashing itself. Optional: the build
 * skips this module where no C compiler or OpenSSL headers are found, and domain/merkle.py
 * then hashes with hashlib (same results; tests/unit/test_merkle_batch.py checks both).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>

static const EVP_MD *sha256_md; /* looked up once at import */

/* SHA-256(prefix || a || b) into out; 0 on success. */
static int
digest3(EVP_MD_CTX *ctx, unsigned char prefix, const char *a, Py_ssize_t alen,
        const char *b, Py_ssize_t blen, unsigned char *out)
{
    if (EVP_DigestInit_ex(ctx, sha256_md, NULL) != 1) return -1;
    if (EVP_DigestUpdate(ctx, &prefix, 1) != 1) return -1;
    if (alen > 0 && EVP_DigestUpdate(ctx, a, (size_t)alen) != 1) return -1;
    if (blen > 0 && EVP_DigestUpdate(ctx, b, (size_t)blen) != 1) return -1;
    return EVP_DigestFinal_ex(ctx, out, NULL) == 1 ? 0 : -1;
}

static PyObject *
check_list(PyObject *arg)
{
    if (!PyList_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "expected a list of bytes, got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(arg);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(arg, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "item %zd is %.100s, not bytes", i, Py_TYPE(item)->tp_name);
            return NULL;
        }
    }
    return arg;
}

/* hashes(list, prefix, pairs): one digest per item (pairs=0) or per pair of items (pairs=1) */
static PyObject *
hashes(PyObject *arg, unsigned char prefix, int pairs)
{
    if (check_list(arg) == NULL) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(arg);
    Py_ssize_t count = pairs ? n / 2 : n;
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    unsigned char buf[EVP_MAX_MD_SIZE];
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *a = PyList_GET_ITEM(arg, pairs ? 2 * i : i);
        PyObject *b = pairs ? PyList_GET_ITEM(arg, 2 * i + 1) : NULL;
        int bad = digest3(ctx, prefix, PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a),
                          b ? PyBytes_AS_STRING(b) : NULL, b ? PyBytes_GET_SIZE(b) : 0, buf);
        PyObject *h = bad ? NULL : PyBytes_FromStringAndSize((const char *)buf, 32);
        if (h == NULL) {
            if (bad) PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
            EVP_MD_CTX_free(ctx);
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, h);
    }
    EVP_MD_CTX_free(ctx);
    return out;
}

static PyObject *
leaf_hashes(PyObject *self, PyObject *arg)
{
    return hashes(arg, 0x00, 0);
}

static PyObject *
node_level(PyObject *self, PyObject *arg)
{
    return hashes(arg, 0x01, 1);
}

static PyMethodDef methods[] = {
    {"leaf_hashes", leaf_hashes, METH_O,
     "leaf_hashes(datas: list[bytes]) -> list[bytes]: SHA-256(0x00 || d) for each d."},
    {"node_level", node_level, METH_O,
     "node_level(hashes: list[bytes]) -> list[bytes]: SHA-256(0x01 || l || r) for each pair;\n"
     "an odd last item is left out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sha256batch",
    "RFC 9162 leaf and node hashes over lists (OpenSSL).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sha256batch(void)
{
    if (sha256_md == NULL) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL); /* fetched once, not at every init */
#else
        sha256_md = EVP_sha256();
#endif
        if (sha256_md == NULL) {
            PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA256");
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
