/* _maglev.c: the fast path of lbd/dataplane/maglev.py.
 *
 * build(entries, size, seed_offset, seed_skip) -> bytes
 *   entries: list of (key: bytes, weight: int > 0, backend_id: int), already
 *   validated and sorted by lbd.dataplane.maglev._prepare; size: a prime < 2**31.
 *   Returns the table as size native-endian u32 backend ids.
 *
 * The algorithm is build_table_reference() in lbd/dataplane/maglev.py, step for step;
 * the tests hold the two byte-identical. Only the arithmetic differs: the
 * permutation is walked by adding skip modulo size instead of recomputing
 * (offset + j * skip) % size, which avoids a division per probe.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define NO_BACKEND 0u /* LBD_NO_BACKEND */

static inline uint32_t rotl32(uint32_t x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* MurmurHash3_x86_32; blocks read little-endian whatever the host, as the
 * Python version (lbd/dataplane/flowhash.py) does. */
static uint32_t murmur3_x86_32(const unsigned char *data, size_t len, uint32_t seed)
{
	const uint32_t c1 = 0xcc9e2d51, c2 = 0x1b873593;
	uint32_t h = seed, k;
	size_t i, nblocks = len / 4;

	for (i = 0; i < nblocks; i++) {
		const unsigned char *p = data + 4 * i;
		k = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		    (uint32_t)p[3] << 24;
		k *= c1;
		k = rotl32(k, 15);
		k *= c2;
		h ^= k;
		h = rotl32(h, 13);
		h = h * 5 + 0xe6546b64;
	}
	const unsigned char *tail = data + 4 * nblocks;
	k = 0;
	switch (len & 3) {
	case 3:
		k ^= (uint32_t)tail[2] << 16; /* fall through */
	case 2:
		k ^= (uint32_t)tail[1] << 8; /* fall through */
	case 1:
		k ^= tail[0];
		k *= c1;
		k = rotl32(k, 15);
		k *= c2;
		h ^= k;
	}
	h ^= (uint32_t)len;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static int is_prime(uint32_t n)
{
	if (n < 2)
		return 0;
	for (uint32_t i = 2; (uint64_t)i * i <= n; i++)
		if (n % i == 0)
			return 0;
	return 1;
}

struct perm {
	uint32_t pos;  /* slot at the backend's current place in its permutation */
	uint32_t skip;
	uint32_t weight;
	uint32_t id;
	uint32_t credit;
};

/* Fills table (size slots, all NO_BACKEND) from n > 0 backends. Needs no
 * Python objects, so it runs without the GIL. (Measured: a bitmap of taken
 * slots, or a branch-free step, makes this slower, not faster.) */
static void fill(uint32_t *table, uint32_t size, struct perm *b, Py_ssize_t n,
		 uint32_t max_weight)
{
	uint32_t filled = 0;

	for (;;) {
		for (Py_ssize_t i = 0; i < n; i++) {
			b[i].credit += b[i].weight;
			while (b[i].credit >= max_weight) {
				uint32_t pos = b[i].pos, skip = b[i].skip;

				b[i].credit -= max_weight;
				while (table[pos] != NO_BACKEND) {
					pos += skip; /* pos, skip < size < 2**31 */
					if (pos >= size)
						pos -= size;
				}
				table[pos] = b[i].id;
				pos += skip;
				if (pos >= size)
					pos -= size;
				b[i].pos = pos;
				if (++filled == size)
					return;
			}
		}
	}
}

static PyObject *build(PyObject *Py_UNUSED(self), PyObject *args)
{
	PyObject *entries, *seq, *result = NULL;
	unsigned long size_arg, seed_offset, seed_skip;
	struct perm *b = NULL;
	uint32_t *table, size, max_weight = 0;
	Py_ssize_t n, i;

	if (!PyArg_ParseTuple(args, "Okkk:build", &entries, &size_arg, &seed_offset,
			      &seed_skip))
		return NULL;
	/* Checked again here (lbd.dataplane.maglev checks first) because a bad size or
	 * weight would make fill() loop forever rather than fail. */
	if (size_arg >= (1ul << 31) || !is_prime((uint32_t)size_arg)) {
		PyErr_Format(PyExc_ValueError, "size must be a prime below 2**31, not %lu",
			     size_arg);
		return NULL;
	}
	size = (uint32_t)size_arg;
	seq = PySequence_Fast(entries, "entries must be a sequence");
	if (!seq)
		return NULL;
	n = PySequence_Fast_GET_SIZE(seq);
	b = PyMem_Calloc(n ? n : 1, sizeof(*b));
	if (!b) {
		PyErr_NoMemory();
		goto out;
	}
	for (i = 0; i < n; i++) {
		PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
		const char *key;
		Py_ssize_t keylen;
		unsigned long weight, id;

		if (!PyArg_ParseTuple(item, "y#kk:entry", &key, &keylen, &weight, &id))
			goto out;
		if (weight == 0 || weight > 0xffff || id == 0 || id > 0xfffffffful) {
			PyErr_SetString(PyExc_ValueError,
					"entry needs weight 1..65535 and id 1..2**32-1");
			goto out;
		}
		b[i].pos = murmur3_x86_32((const unsigned char *)key, keylen,
					  (uint32_t)seed_offset) % size;
		b[i].skip = murmur3_x86_32((const unsigned char *)key, keylen,
					   (uint32_t)seed_skip) % (size - 1) + 1;
		b[i].weight = (uint32_t)weight;
		b[i].id = (uint32_t)id;
		if (b[i].weight > max_weight)
			max_weight = b[i].weight;
	}
	/* Filled in place: nobody else holds the new bytes object yet. */
	result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size * sizeof(uint32_t));
	if (!result)
		goto out;
	table = (uint32_t *)PyBytes_AS_STRING(result);
	memset(table, 0, (size_t)size * sizeof(uint32_t)); /* NO_BACKEND */
	if (n > 0) {
		Py_BEGIN_ALLOW_THREADS
		fill(table, size, b, n, max_weight);
		Py_END_ALLOW_THREADS
	}
out:
	PyMem_Free(b);
	Py_DECREF(seq);
	return result;
}

static PyMethodDef methods[] = {
	{"build", build, METH_VARARGS,
	 "build(entries, size, seed_offset, seed_skip) -> bytes: Maglev table of "
	 "sorted (key, weight, id) entries as native-endian u32 (see lbd.dataplane.maglev)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	.m_base = PyModuleDef_HEAD_INIT,
	.m_name = "_maglev",
	.m_doc = "C fast path of lbd.dataplane.maglev.build_table.",
	.m_size = -1,
	.m_methods = methods,
};

PyMODINIT_FUNC PyInit__maglev(void)
{
	return PyModule_Create(&module);
}
