/*
 * storage._commp: the compiled core of storage.commp (Filecoin piece commitment).
 *
 * The tree hashes 64-byte messages, one SHA-256 call per node, so per-call overhead decides the
 * speed: this module does the Fr32 expansion and the whole tree walk in C, with the GIL released,
 * calling OpenSSL's libcrypto for SHA-256 (which uses the CPU's SHA extensions when present).
 *
 * Spec: https://spec.filecoin.io/#section-systems.filecoin_files.piece.data-representation
 * (Fr32 padding, sha2-256-trunc254 binary Merkle tree). storage/commp.py holds the pure-Python
 * twin of this code; both must give the same roots for the same bytes.
 *
 * State is O(log n): the carry of a partial 127-byte quad, the number of whole quads absorbed,
 * and one pending left node per tree level. Level 0 holds the 32-byte leaves; a quad (127 input
 * bytes, 4 leaves) reduces to one level-2 node.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define NODE 32
#define QUAD_IN 127
#define MAX_HEIGHT 31 /* 64 GiB padded piece: 2^31 leaves of 32 bytes */
#define LEVELS (MAX_HEIGHT + 1)
#define MAX_QUADS ((uint64_t)1 << (MAX_HEIGHT - 2))
#define GIL_RELEASE_MIN 4096 /* below this, releasing the GIL costs more than it saves */

/* Root of an all-zero subtree of 2^i leaves: the padding up to a power of two. */
static uint8_t zero_roots[LEVELS][NODE];
static EVP_MD *sha256_md;

/* SHA-256 of one 64-byte pair (left || right), top two bits of the last byte cleared. */
static int
hash_pair(EVP_MD_CTX *ctx, const uint8_t pair[2 * NODE], uint8_t out[NODE])
{
    unsigned int len;
    if (!EVP_DigestInit_ex(ctx, sha256_md, NULL) || !EVP_DigestUpdate(ctx, pair, 2 * NODE) ||
        !EVP_DigestFinal_ex(ctx, out, &len)) {
        return -1;
    }
    out[NODE - 1] &= 0x3F;
    return 0;
}

static int
hash_nodes(EVP_MD_CTX *ctx, const uint8_t left[NODE], const uint8_t right[NODE], uint8_t out[NODE])
{
    uint8_t pair[2 * NODE];
    memcpy(pair, left, NODE);
    memcpy(pair + NODE, right, NODE);
    return hash_pair(ctx, pair, out);
}

/*
 * Fr32: read 127 bytes as a little-endian bit string, cut it into four 254-bit quanta and store
 * each in a 32-byte little-endian leaf whose top two bits are zero. Quantum j starts at bit 254j,
 * that is byte 254j / 8 (31, 63, 95), bit (8 - 2j) mod 8.
 */
static void
fr32_expand(const uint8_t in[QUAD_IN], uint8_t out[4 * NODE])
{
    memcpy(out, in, NODE);
    out[NODE - 1] &= 0x3F;
    for (int j = 1; j < 4; j++) {
        const uint8_t *src = in + 254 * j / 8;
        uint8_t *dst = out + NODE * j;
        const int shift = 8 - 2 * j;
        /* the last quantum ends at the input's last byte: its byte 31 has no upper neighbour */
        const int whole = j == 3 ? NODE - 1 : NODE;
        for (int k = 0; k < whole; k++) {
            dst[k] = (uint8_t)((src[k] >> shift) | (src[k + 1] << (8 - shift)));
        }
        if (j == 3) {
            dst[NODE - 1] = (uint8_t)(src[NODE - 1] >> shift);
        }
        dst[NODE - 1] &= 0x3F;
    }
}

/* The level-2 node of one quad: Fr32-expand it and hash its 4 leaves down to one node. */
static int
quad_node(EVP_MD_CTX *ctx, const uint8_t in[QUAD_IN], uint8_t out[NODE])
{
    uint8_t leaves[4 * NODE];
    uint8_t level1[2 * NODE];
    fr32_expand(in, leaves);
    if (hash_pair(ctx, leaves, level1) < 0 || hash_pair(ctx, leaves + 2 * NODE, level1 + NODE) < 0) {
        return -1;
    }
    return hash_pair(ctx, level1, out);
}

/*
 * Add the level-2 node of quad number `index` to the pending stack: while the node is a right
 * child, hash it with its pending left sibling and climb (a binary counter carry).
 */
static int
push_node(EVP_MD_CTX *ctx, uint8_t stack[LEVELS][NODE], uint64_t index, const uint8_t node[NODE])
{
    uint8_t current[NODE];
    int level = 2;
    memcpy(current, node, NODE);
    while (index & 1) {
        if (hash_nodes(ctx, stack[level], current, current) < 0) {
            return -1;
        }
        index >>= 1;
        level++;
    }
    memcpy(stack[level], current, NODE);
    return 0;
}

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    EVP_MD_CTX *ctx;
    uint64_t quads;
    size_t carry_len;
    uint8_t carry[QUAD_IN];
    uint8_t stack[LEVELS][NODE];
} TreeObject;

/* Absorb bytes; called with the tree's lock held and possibly without the GIL. */
static int
tree_absorb(TreeObject *self, const uint8_t *data, size_t len)
{
    uint8_t node[NODE];
    if (self->carry_len > 0) {
        size_t need = QUAD_IN - self->carry_len;
        if (len < need) {
            memcpy(self->carry + self->carry_len, data, len);
            self->carry_len += len;
            return 0;
        }
        memcpy(self->carry + self->carry_len, data, need);
        data += need;
        len -= need;
        self->carry_len = 0;
        if (quad_node(self->ctx, self->carry, node) < 0 ||
            push_node(self->ctx, self->stack, self->quads, node) < 0) {
            return -1;
        }
        self->quads++;
    }
    for (; len >= QUAD_IN; data += QUAD_IN, len -= QUAD_IN) {
        if (quad_node(self->ctx, data, node) < 0 ||
            push_node(self->ctx, self->stack, self->quads, node) < 0) {
            return -1;
        }
        self->quads++;
    }
    memcpy(self->carry, data, len);
    self->carry_len = len;
    return 0;
}

/*
 * Root of the tree so far, zero-padded to a power of two, without changing the state: a partial
 * quad is zero-filled to 127 bytes (an empty tree counts as one zero quad), then the pending
 * nodes are folded from the lowest level up, with zero subtrees as missing right siblings.
 */
static int
tree_root(TreeObject *self, uint8_t out[NODE])
{
    uint8_t stack[LEVELS][NODE];
    uint8_t acc[NODE];
    int have_acc = 0;
    uint64_t quads = self->quads;
    int height = 2;

    memcpy(stack, self->stack, sizeof(stack));
    if (self->carry_len > 0 || quads == 0) {
        uint8_t padded[QUAD_IN] = {0};
        uint8_t node[NODE];
        memcpy(padded, self->carry, self->carry_len);
        if (quad_node(self->ctx, padded, node) < 0 || push_node(self->ctx, stack, quads, node) < 0) {
            return -1;
        }
        quads++;
    }
    while (((uint64_t)1 << (height - 2)) < quads) {
        height++;
    }
    for (int level = 2; level < height; level++) {
        if ((quads >> (level - 2)) & 1) {
            if (hash_nodes(self->ctx, stack[level], have_acc ? acc : zero_roots[level], acc) < 0) {
                return -1;
            }
            have_acc = 1;
        }
        else if (have_acc && hash_nodes(self->ctx, acc, zero_roots[level], acc) < 0) {
            return -1;
        }
    }
    memcpy(out, ((quads >> (height - 2)) & 1) ? stack[height] : acc, NODE);
    return 0;
}

static void
tree_lock(TreeObject *self)
{
    if (!PyThread_acquire_lock(self->lock, 0)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, 1);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *
openssl_error(void)
{
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
    return NULL;
}

static PyObject *
Tree_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Tree() takes no arguments");
        return NULL;
    }
    TreeObject *self = (TreeObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    self->ctx = EVP_MD_CTX_new();
    if (self->lock == NULL || self->ctx == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Tree_dealloc(TreeObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    if (self->lock != NULL) {
        PyThread_free_lock(self->lock);
    }
    EVP_MD_CTX_free(self->ctx);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

PyDoc_STRVAR(Tree_update_doc,
             "update(data, /)\n--\n\nAbsorb a bytes-like chunk (any length; partial quads are carried).");

static PyObject *
Tree_update(TreeObject *self, PyObject *arg)
{
    Py_buffer view;
    int status;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    tree_lock(self);
    if ((uint64_t)view.len > MAX_QUADS * QUAD_IN - (self->quads * QUAD_IN + self->carry_len)) {
        PyThread_release_lock(self->lock);
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_OverflowError, "piece would exceed the 64 GiB maximum");
        return NULL;
    }
    if (view.len >= GIL_RELEASE_MIN) {
        Py_BEGIN_ALLOW_THREADS
        status = tree_absorb(self, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
    }
    else {
        status = tree_absorb(self, view.buf, (size_t)view.len);
    }
    PyThread_release_lock(self->lock);
    PyBuffer_Release(&view);
    if (status < 0) {
        return openssl_error();
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Tree_root_doc,
             "root()\n--\n\nThe 32-byte root so far, zero-padded to a power of two; the state is kept.");

static PyObject *
Tree_root(TreeObject *self, PyObject *Py_UNUSED(ignored))
{
    uint8_t out[NODE];
    int status;
    tree_lock(self);
    status = tree_root(self, out);
    PyThread_release_lock(self->lock);
    if (status < 0) {
        return openssl_error();
    }
    return PyBytes_FromStringAndSize((const char *)out, NODE);
}

static PyMethodDef Tree_methods[] = {
    {"update", (PyCFunction)Tree_update, METH_O, Tree_update_doc},
    {"root", (PyCFunction)Tree_root, METH_NOARGS, Tree_root_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Tree_doc, "Tree()\n--\n\nIncremental Fr32 + sha2-256-trunc254 binary tree.");

static PyType_Slot Tree_slots[] = {
    {Py_tp_new, Tree_new},
    {Py_tp_dealloc, Tree_dealloc},
    {Py_tp_methods, Tree_methods},
    {Py_tp_doc, (void *)Tree_doc},
    {0, NULL},
};

static PyType_Spec Tree_spec = {
    .name = "storage._commp.Tree",
    .basicsize = sizeof(TreeObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Tree_slots,
};

static int
init_zero_roots(void)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int status = ctx == NULL ? -1 : 0;
    memset(zero_roots[0], 0, NODE);
    for (int level = 1; status == 0 && level < LEVELS; level++) {
        status = hash_nodes(ctx, zero_roots[level - 1], zero_roots[level - 1], zero_roots[level]);
    }
    EVP_MD_CTX_free(ctx);
    return status;
}

static struct PyModuleDef commp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "storage._commp",
    .m_doc = "Compiled core of storage.commp: Fr32 expansion and the sha2-256-trunc254 tree.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__commp(void)
{
    if (sha256_md == NULL) {
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (sha256_md == NULL || init_zero_roots() < 0) {
            PyErr_SetString(PyExc_ImportError, "OpenSSL provides no usable SHA-256");
            return NULL;
        }
    }
    PyObject *module = PyModule_Create(&commp_module);
    if (module == NULL) {
        return NULL;
    }
    PyObject *tree_type = PyType_FromSpec(&Tree_spec);
    if (tree_type == NULL || PyModule_AddObject(module, "Tree", tree_type) < 0) {
        Py_XDECREF(tree_type);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
