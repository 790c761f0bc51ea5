/* _maglev.c: the fast paths of lbd/dataplane/maglev.py (build) and of
 * lbd/dataplane/settle.py (flow_slots, mark_candidates, settle_slots).
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
#include <string.h>

#define NO_BACKEND 0u /* LBD_NO_BACKEND */
/* From xdp/lbd_shared.h, which tests/unit holds these to: LBD_HASH_SEED and
 * the marks of a settled slot. */
#define HASH_SEED 0x6c626431u
#define SLOT_CANDIDATE 0x40000000u
#define SLOT_SETTLED 0x80000000u
#define SLOT_MARKS 0xc0000000u

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


/* --- settle.py ---------------------------------------------------------- */

/* flow_slots(keys, key_size, offsets, client_only, ring_size) -> bytes
 *   keys: connection-table keys as the map holds them (struct lbd_flow_key,
 *   key_size bytes each); offsets: (src, dst, sport, proto, family) byte
 *   offsets in it, read by the caller from bcc's key type (dport follows
 *   sport); client_only: one byte per key, nonzero where its VIP hashes the
 *   client address alone. Returns each key's Maglev slot as native u32: the
 *   hash of xdp/flowhash.h modulo ring_size. */
static uint32_t key_hash(const unsigned char *key, const unsigned long off[5], int client_only)
{
	unsigned char buf[40];
	int v4 = key[off[4]] == 4; /* LBD_FAMILY_V4 */
	size_t alen = v4 ? 4 : 16, len;

	memcpy(buf, key + off[0], alen);
	if (client_only)
		return murmur3_x86_32(buf, alen, HASH_SEED);
	memcpy(buf + alen, key + off[1], alen);
	memcpy(buf + 2 * alen, key + off[2], 4); /* sport, dport: as in the packet */
	buf[2 * alen + 4] = key[off[3]];
	memset(buf + 2 * alen + 5, 0, 3);
	len = 2 * alen + 8;
	return murmur3_x86_32(buf, len, HASH_SEED);
}

static PyObject *flow_slots(PyObject *Py_UNUSED(self), PyObject *args)
{
	Py_buffer keys, client;
	Py_ssize_t key_size, n, i;
	unsigned long off[5], ring_size;
	PyObject *result = NULL;

	if (!PyArg_ParseTuple(args, "y*n(kkkkk)y*k:flow_slots", &keys, &key_size, &off[0], &off[1],
			      &off[2], &off[3], &off[4], &client, &ring_size))
		return NULL;
	if (key_size < 40 || keys.len % key_size || client.len != keys.len / key_size ||
	    ring_size == 0 || off[0] + 16 > (unsigned long)key_size || off[1] + 16 > (unsigned long)key_size ||
	    off[2] + 4 > (unsigned long)key_size || off[3] >= (unsigned long)key_size ||
	    off[4] >= (unsigned long)key_size) {
		PyErr_SetString(PyExc_ValueError, "flow_slots: keys, offsets or client_only do not fit");
		goto out;
	}
	n = keys.len / key_size;
	result = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint32_t));
	if (!result)
		goto out;
	{
		uint32_t *slots = (uint32_t *)PyBytes_AS_STRING(result);
		const unsigned char *k = keys.buf, *c = client.buf;

		Py_BEGIN_ALLOW_THREADS
		for (i = 0; i < n; i++)
			slots[i] = key_hash(k + i * key_size, off, c[i]) % ring_size;
		Py_END_ALLOW_THREADS
	}
out:
	PyBuffer_Release(&keys);
	PyBuffer_Release(&client);
	return result;
}

/* The marks of settle.h in a Maglev table's slots (u32 values in 8-byte
 * slots of a mmapped array map). The program and the daemon clear marks
 * with plain stores while we run: every change here is a compare and swap
 * from a value read, so none of their stores is lost. */
static Py_ssize_t swap_marks(unsigned char *memory, Py_ssize_t slots, const unsigned char *skip,
			     uint32_t from, uint32_t to)
{
	Py_ssize_t i, swapped = 0;

	for (i = 0; i < slots; i++) {
		uint32_t *value = (uint32_t *)(memory + 8 * i), seen;

		if (skip && skip[i])
			continue;
		seen = __atomic_load_n(value, __ATOMIC_RELAXED);
		if ((seen & SLOT_MARKS) == from &&
		    __atomic_compare_exchange_n(value, &seen, (seen & ~SLOT_MARKS) | to, 0,
						__ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
			swapped++;
	}
	return swapped;
}

static int table_memory(Py_buffer *memory, Py_ssize_t slots, const char *who)
{
	if (slots < 0 || slots > memory->len / 8) {
		PyBuffer_Release(memory);
		PyErr_Format(PyExc_ValueError, "%s: more slots than memory", who);
		return -1;
	}
	return 0;
}

/* mark_candidates(memory, slots) -> int: every unmarked slot of a table
 * becomes a candidate. */
static PyObject *mark_candidates(PyObject *Py_UNUSED(self), PyObject *args)
{
	Py_buffer memory;
	Py_ssize_t slots, swapped;

	if (!PyArg_ParseTuple(args, "w*n:mark_candidates", &memory, &slots))
		return NULL;
	if (table_memory(&memory, slots, "mark_candidates") < 0)
		return NULL;
	swapped = swap_marks(memory.buf, slots, NULL, 0, SLOT_CANDIDATE);
	PyBuffer_Release(&memory);
	return PyLong_FromSsize_t(swapped);
}

/* settle_slots(memory, blocked) -> int: every candidate slot not blocked
 * (one byte per slot, nonzero: an entry of it disagrees) becomes settled;
 * a slot unsettled since it was marked stays unsettled. */
static PyObject *settle_slots(PyObject *Py_UNUSED(self), PyObject *args)
{
	Py_buffer memory, blocked;
	Py_ssize_t swapped;

	if (!PyArg_ParseTuple(args, "w*y*:settle_slots", &memory, &blocked))
		return NULL;
	if (table_memory(&memory, blocked.len, "settle_slots") < 0) {
		PyBuffer_Release(&blocked);
		return NULL;
	}
	swapped = swap_marks(memory.buf, blocked.len, blocked.buf, SLOT_CANDIDATE, SLOT_SETTLED);
	PyBuffer_Release(&memory);
	PyBuffer_Release(&blocked);
	return PyLong_FromSsize_t(swapped);
}

static PyMethodDef methods[] = {
	{"build", build, METH_VARARGS,
	 "build(entries, size, seed_offset, seed_skip) -> bytes: Maglev table of "
	 "sorted (key, weight, id) entries as native-endian u32 (see lbd.dataplane.maglev)."},
	{"flow_slots", flow_slots, METH_VARARGS,
	 "flow_slots(keys, key_size, offsets, client_only, ring_size) -> bytes: each "
	 "connection-table key's Maglev slot as native u32 (see lbd.dataplane.settle)."},
	{"mark_candidates", mark_candidates, METH_VARARGS,
	 "mark_candidates(memory, slots) -> int: a table's unmarked slots become candidates."},
	{"settle_slots", settle_slots, METH_VARARGS,
	 "settle_slots(memory, blocked) -> int: candidates not blocked become settled."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	.m_base = PyModuleDef_HEAD_INIT,
	.m_name = "_maglev",
	.m_doc = "C fast paths of lbd.dataplane.maglev and lbd.dataplane.settle.",
	.m_size = -1,
	.m_methods = methods,
};

PyMODINIT_FUNC PyInit__maglev(void)
{
	return PyModule_Create(&module);
}
