/* wallwatch._native: the per-packet hot loops of passive detection, in C.
 *
 * Why: a busy resolver gives its users 100,000+ answers a second, and reading each in
 * Python (frame, IP and UDP headers, the DNS message) costs more than the whole budget.
 * These functions do only the per-packet reading; what a packet means (matching, the
 * rules, the detector) stays in Python. Each has a pure-Python twin in
 * wallwatch/fastwire.py that returns the same values, used when this module cannot be
 * built, and a test runs both over the same packets.
 *
 * summary(msg) -> (id, flags, rcode, qname, qtype, ancount, nscount, arcount,
 *                  addresses, ttl, ede) or None
 *   The header, the question, the A/AAAA addresses of the answer section in order (as
 *   text), the least TTL among them (-1 without), and the first Extended DNS Error code
 *   of the OPT record (-1 without). rcode is extended by OPT. None when the message is
 *   malformed, has no question, or a question name with bytes other than letters,
 *   digits, '-' and '_' (the caller's full parser then reads it): qname is lower-case,
 *   without the trailing dot.
 *
 * scan_pcap(data, offset, big_endian, nano, linktype, limit)
 *   -> (packets, offset, seen, cut)
 *   Classic pcap records from ``offset`` on: up to ``limit`` UDP-over-IPv4 packets, each
 *   (time, src, dst, sport, dport, ip_ttl, ip_id, df, payload, number), and each IPv6
 *   packet as (time, record, number) for the caller's full reader (number: the record's,
 *   from 1 at ``offset``); ``seen`` counts every record read,
 *   ``cut`` is true when the data ends inside a record (offset then points at that
 *   record). Fragments, other protocols and non-UDP packets are skipped (counted in seen
 *   only).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static inline unsigned rd16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint32_t rd32le(const unsigned char *p) {
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

/* Skip a (possibly compressed) name starting at off; the offset after it, or -1. */
static Py_ssize_t skip_name(const unsigned char *m, Py_ssize_t n, Py_ssize_t off) {
    int steps = 0;
    while (off < n && steps++ < 128) {
        unsigned len = m[off];
        if (len == 0) return off + 1;
        if ((len & 0xC0) == 0xC0) return off + 2 <= n ? off + 2 : -1;
        if (len & 0xC0) return -1;
        off += 1 + len;
    }
    return -1;
}

/* The first question of message m[0:n] when its name is plain labels (letters, digits,
   '-', '_'; anything else is the full parser's): the name in lower case without the
   trailing dot (w bytes of name[256]) and the type; the offset after it, or -1. */
static Py_ssize_t read_question(const unsigned char *m, Py_ssize_t n, char *name, Py_ssize_t *w,
                                unsigned *qtype) {
    if (n < 12 || rd16(m + 4) < 1) return -1;
    Py_ssize_t off = 12;
    *w = 0;
    for (;;) {
        if (off >= n) return -1;
        unsigned len = m[off++];
        if (len == 0) break;
        if (len > 63 || off + len > n || *w + len + 1 > 255) return -1;
        if (*w) name[(*w)++] = '.';
        for (unsigned i = 0; i < len; i++) {
            unsigned char c = m[off + i];
            if (c >= 'A' && c <= 'Z') c += 32;
            else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
                return -1;
            name[(*w)++] = (char)c;
        }
        off += len;
    }
    if (off + 4 > n) return -1;
    *qtype = rd16(m + off);
    return off + 4;
}

/* What summary() reads of a message, in C (the capture matcher groups by it without
   making Python objects). addrs holds naddr records of 17 bytes: the family (4 or 6) and
   the address (4 bytes, zero-padded, or 16), in answer order. */
typedef struct {
    unsigned id, flags, rcode, qtype, an, ns, ar;
    long ttl, ede;
    Py_ssize_t naddr, cap;
    unsigned char *addrs;
} csum_t;

#define ADDR_REC 17

/* The summary of m[0:n] into s and its question name into name[0:*w]: 1 when read, 0 when
   declined (the caller's full parser reads it), -1 when out of memory (an exception is
   set). s->addrs is malloc'd in every case: free it. */
static int read_summary(const unsigned char *m, Py_ssize_t n, csum_t *s, char *name,
                        Py_ssize_t *w) {
    s->naddr = s->cap = 0;
    s->addrs = NULL;
    s->ttl = s->ede = -1;
    if (n < 12) return 0;
    s->id = rd16(m);
    s->flags = rd16(m + 2);
    unsigned qd = rd16(m + 4);
    s->an = rd16(m + 6);
    s->ns = rd16(m + 8);
    s->ar = rd16(m + 10);
    if (qd < 1) return 0;
    Py_ssize_t off = read_question(m, n, name, w, &s->qtype);
    if (off < 0) return 0;
    for (unsigned i = 1; i < qd; i++) {
        off = skip_name(m, n, off);
        if (off < 0 || off + 4 > n) return 0;
        off += 4;
    }
    s->rcode = s->flags & 0xF;
    unsigned total = s->an + s->ns + s->ar;
    for (unsigned i = 0; i < total; i++) {
        off = skip_name(m, n, off);
        if (off < 0 || off + 10 > n) return 0;
        unsigned rtype = rd16(m + off);
        unsigned rclass = rd16(m + off + 2);
        uint32_t ttl = rd32(m + off + 4);
        unsigned rdlen = rd16(m + off + 8);
        off += 10;
        if (off + rdlen > n) return 0;
        /* An A or AAAA record outside the Internet class is not an address: declined. */
        if (i < s->an && (rtype == 1 || rtype == 28) && rclass != 1) return 0;
        if (i < s->an && ((rtype == 1 && rdlen == 4) || (rtype == 28 && rdlen == 16))) {
            if (rtype == 28) {
                /* IPv4-compatible and -mapped forms print a dotted tail: the full parser's. */
                const unsigned char *a = m + off;
                int zero = 1;
                for (int k = 0; k < 10; k++) zero = zero && a[k] == 0;
                unsigned g5 = rd16(a + 10);
                if (zero && (g5 == 0 || g5 == 0xFFFF)) return 0;
            }
            if (s->naddr == s->cap) {
                Py_ssize_t cap = s->cap ? 2 * s->cap : 4;
                unsigned char *grown = realloc(s->addrs, (size_t)cap * ADDR_REC);
                if (!grown) {
                    PyErr_NoMemory();
                    return -1;
                }
                s->addrs = grown;
                s->cap = cap;
            }
            unsigned char *rec = s->addrs + ADDR_REC * s->naddr++;
            memset(rec, 0, ADDR_REC);
            rec[0] = rtype == 1 ? 4 : 6;
            memcpy(rec + 1, m + off, rdlen);
            if (s->ttl < 0 || (long)ttl < s->ttl) s->ttl = (long)ttl;
        } else if (i >= s->an + s->ns && rtype == 41) {
            s->rcode |= (ttl >> 24) << 4;
            Py_ssize_t o = off, end = off + rdlen;
            while (o + 4 <= end) {
                unsigned code = rd16(m + o), olen = rd16(m + o + 2);
                if (o + 4 + olen > end) return 0;
                if (code == 15 && olen >= 2 && s->ede < 0) s->ede = rd16(m + o + 4);
                o += 4 + olen;
            }
        }
        off += rdlen;
    }
    return off == n; /* trailing data: the full parser names it */
}

/* An address record as text: dotted quad, or RFC 5952 as Python's ipaddress writes it. */
static void addr_text(const unsigned char *rec, char *text, size_t size) {
    const unsigned char *a = rec + 1;
    if (rec[0] == 4) {
        snprintf(text, size, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
        return;
    }
    unsigned g[8];
    for (int k = 0; k < 8; k++) g[k] = rd16(a + 2 * k);
    int best = -1, best_len = 0;
    for (int k = 0; k < 8;) {
        if (g[k] == 0) {
            int j = k;
            while (j < 8 && g[j] == 0) j++;
            if (j - k > best_len && j - k >= 2) best = k, best_len = j - k;
            k = j;
        } else k++;
    }
    int t = 0;
    text[0] = 0;
    for (int k = 0; k < 8; k++) {
        if (k == best) {
            t += snprintf(text + t, size - t, k == 0 ? "::" : ":");
            k += best_len - 1;
            continue;
        }
        t += snprintf(text + t, size - t, "%x%s", g[k], k < 7 ? ":" : "");
    }
}

/* The summary tuple of a message read into s (name[0:w]): a new reference. */
static PyObject *summary_tuple(const csum_t *s, const char *name, Py_ssize_t w) {
    PyObject *addresses = PyTuple_New(s->naddr);
    if (!addresses) return NULL;
    for (Py_ssize_t i = 0; i < s->naddr; i++) {
        char text[64];
        addr_text(s->addrs + ADDR_REC * i, text, sizeof text);
        PyObject *str = PyUnicode_FromString(text);
        if (!str) {
            Py_DECREF(addresses);
            return NULL;
        }
        PyTuple_SET_ITEM(addresses, i, str);
    }
    PyObject *qname = PyUnicode_DecodeASCII(name, w, NULL);
    if (!qname) {
        Py_DECREF(addresses);
        return NULL;
    }
    return Py_BuildValue("(IIINIIIINll)", s->id, s->flags, s->rcode, qname, s->qtype, s->an,
                         s->ns, s->ar, addresses, s->ttl, s->ede);
}

/* The summary tuple of message m[0:n]; Py_None (a new reference) when declined. */
static PyObject *summarize(const unsigned char *m, Py_ssize_t n) {
    csum_t s;
    char name[256];
    Py_ssize_t w = 0;
    int read = read_summary(m, n, &s, name, &w);
    PyObject *result = read < 0 ? NULL : read == 0 ? Py_NewRef(Py_None) : summary_tuple(&s, name, w);
    free(s.addrs);
    return result;
}

static PyObject *summary(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = summarize(view.buf, view.len);
    PyBuffer_Release(&view);
    return result;
}

/* Protocol Buffers, as far as dnstap needs: a varint at *p (advanced); -1 past end. */
static int varint(const unsigned char **p, const unsigned char *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Skip one field of wire type wt; -1 when malformed. For length-delimited fields, *data
   and *len are set. */
static int field(const unsigned char **p, const unsigned char *end, unsigned wt, uint64_t *value,
                 const unsigned char **data, Py_ssize_t *len) {
    switch (wt) {
    case 0: return varint(p, end, value);
    case 1: if (end - *p < 8) return -1; *p += 8; return 0;
    case 5:
        if (end - *p < 4) return -1;
        *value = (uint64_t)(*p)[0] | ((uint64_t)(*p)[1] << 8) | ((uint64_t)(*p)[2] << 16) |
                 ((uint64_t)(*p)[3] << 24);
        *p += 4;
        return 0;
    case 2: {
        uint64_t l;
        if (varint(p, end, &l) < 0 || l > (uint64_t)(end - *p)) return -1;
        *data = *p;
        *len = (Py_ssize_t)l;
        *p += l;
        return 0;
    }
    default: return -1;
    }
}

/* The next field at *p: its number, wire type, and value or data; -1 when malformed. */
static int next_field(const unsigned char **p, const unsigned char *end, uint64_t *number,
                      unsigned *wt, uint64_t *value, const unsigned char **data, Py_ssize_t *len) {
    uint64_t key;
    *value = 0;
    *data = NULL;
    *len = 0;
    if (varint(p, end, &key) < 0 || (key >> 3) == 0) return -1;
    *number = key >> 3;
    *wt = (unsigned)(key & 7);
    return field(p, end, *wt, value, data, len);
}

/* dnstap_answer(frame) -> 0 | 1 | None | tuple
 *   0: not decodable; 1: a message without an answer (a query, or a response type
 *   without its DNS message); None: an answer whose DNS message the full parser must
 *   read; else (type, response_address, response_port, socket_protocol, query_address,
 *   start) + the summary tuple, start being the query time, or the response time
 *   without one (seconds, float).
 */
static PyObject *decode_answer(const unsigned char *p, Py_ssize_t n);

static PyObject *dnstap_answer(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = decode_answer(view.buf, view.len);
    PyBuffer_Release(&view);
    return result;
}

/* dnstap_answer's work on frame p[0:n]: a new reference, or NULL on error. */
static PyObject *decode_answer(const unsigned char *p, Py_ssize_t n) {
    const unsigned char *end = p + n;
    const unsigned char *msg = NULL;
    Py_ssize_t msg_len = 0;
    int have_msg = 0;
    PyObject *result = NULL;
    uint64_t number, value;
    unsigned wt;
    const unsigned char *data;
    Py_ssize_t len;
    while (p < end) {
        if (next_field(&p, end, &number, &wt, &value, &data, &len) < 0) goto undecodable;
        if (number == 14 && wt == 2) { msg = data; msg_len = len; have_msg = 1; }
    }
    if (!have_msg) { result = PyLong_FromLong(1); goto done; }
    /* An absent enum is its first value in proto2: UDP for socket_protocol. */
    uint64_t type = 0, protocol = 1, rport = 0, qsec = 0, qnsec = 0,
             rsec = 0, rnsec = 0;
    const unsigned char *qaddr = (const unsigned char *)"", *raddr = (const unsigned char *)"",
                        *response = NULL;
    Py_ssize_t qaddr_len = 0, raddr_len = 0, response_len = 0;
    p = msg;
    end = msg + msg_len;
    while (p < end) {
        if (next_field(&p, end, &number, &wt, &value, &data, &len) < 0) goto undecodable;
        /* A known field of the wrong wire type is an unknown field to protobuf: skipped. */
        if (wt == 2) {
            if (number == 4) { qaddr = data; qaddr_len = len; }
            else if (number == 5) { raddr = data; raddr_len = len; }
            else if (number == 14) { response = data; response_len = len; }
        } else if (wt == 0) {
            if (number == 1) type = value;
            else if (number == 3) protocol = value;
            else if (number == 7) rport = value;
            else if (number == 8) qsec = value;
            else if (number == 12) rsec = value;
        } else if (wt == 5) {
            if (number == 9) qnsec = value;
            else if (number == 13) rnsec = value;
        }
    }
    /* RESOLVER_RESPONSE 4, CLIENT_RESPONSE 6, FORWARDER_RESPONSE 8 */
    if ((type != 4 && type != 6 && type != 8) || response == NULL || response_len == 0) {
        result = PyLong_FromLong(1);
        goto done;
    }
    PyObject *read = summarize(response, response_len);
    if (read == NULL) goto done;
    if (read == Py_None) { result = read; goto done; }
    double start = qsec ? (double)qsec + (double)(uint32_t)qnsec / 1e9
                        : rsec ? (double)rsec + (double)(uint32_t)rnsec / 1e9 : 0.0;
    PyObject *head = Py_BuildValue("(Ky#KKy#d)", (unsigned long long)type, (const char *)raddr,
                                   raddr_len, (unsigned long long)(rport & 0xFFFFFFFF),
                                   (unsigned long long)protocol, (const char *)qaddr, qaddr_len,
                                   start);
    if (head == NULL) { Py_DECREF(read); goto done; }
    result = PySequence_Concat(head, read);
    Py_DECREF(head);
    Py_DECREF(read);
    goto done;
undecodable:
    result = PyLong_FromLong(0);
done:
    return result;
}

/* Append item (a new reference, or NULL after an error) to list; -1 on error. */
static int append(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed;
}

/* Floor division, as Python's // */
static long long floordiv(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* dnstap_group(data, offset, keys, tallies, judged, clock, upstream, keep_clients, counts)
 *   -> (fresh, offset, control)
 *
 * The passive engine's loop over a buffer of Frame Streams data frames (see
 * wallwatch.passive.Passive.read_dnstap, its Python twin being Passive.offer): each
 * answer's key and minute as Converter.fast makes them; a repeat of a key held in
 * keys[minute] ({key: [index, count]}) adds to its count and to tallies[minute]
 * ({(stream, rcode, ttl, ede): n}); anything else is returned in ``fresh`` as
 * (frame, key or None, minute or None), a new key being held at once as [-1, 1] (unless
 * its minute is in ``judged``: late answers are the caller's). clock = (real0, scale,
 * at0). counts (a list) gains undecodable, queries, upstream_in_packets, referrals,
 * repeats. Stops before a control frame (control true), or where the data ends inside a
 * frame or its length (control false); offset then points there.
 */
static PyObject *dnstap_group(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset;
    PyObject *keys, *tallies, *judged, *counts;
    double real0, scale, at0;
    int upstream, keep_clients;
    if (!PyArg_ParseTuple(args, "y*nO!O!O(ddd)ppO!", &view, &offset, &PyDict_Type, &keys,
                          &PyDict_Type, &tallies, &judged, &real0, &scale, &at0, &upstream,
                          &keep_clients, &PyList_Type, &counts))
        return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len;
    long long tally[5] = {0, 0, 0, 0, 0};
    int control = 0;
    int gc_was = PyGC_Disable(); /* as in scan_match: no cycles made here */
    PyObject *fresh = PyList_New(0), *users = PyUnicode_FromString("users"),
             *up = PyUnicode_FromString("upstream");
    if (!fresh || !users || !up) goto fail;
    while (n - offset >= 4) {
        uint32_t len = rd32(d + offset);
        if (len == 0 || len > 262144) { control = 1; break; } /* the caller reads or names it */
        if ((Py_ssize_t)len > n - offset - 4) break;
        const unsigned char *frame = d + offset + 4;
        offset += 4 + len;
        PyObject *got = decode_answer(frame, len);
        if (got == NULL) goto fail;
        if (PyLong_Check(got)) {
            tally[PyLong_AsLong(got) == 0 ? 0 : 1]++;
            Py_DECREF(got);
            continue;
        }
        if (got == Py_None) { /* the full parser's: no key */
            Py_DECREF(got);
            if (append(fresh, Py_BuildValue("(y#OO)", frame, (Py_ssize_t)len, Py_None, Py_None)) < 0)
                goto fail;
            continue;
        }
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(got, 0));
        int to_client = kind == 6;
        long flags = PyLong_AsLong(PyTuple_GET_ITEM(got, 7));
        long rcode = PyLong_AsLong(PyTuple_GET_ITEM(got, 8));
        long ancount = PyLong_AsLong(PyTuple_GET_ITEM(got, 11));
        if (!to_client) {
            if (!upstream) { tally[2]++; Py_DECREF(got); continue; }
            if (ancount == 0 && rcode == 0 && !(flags & 0x0400)) {
                tally[3]++;
                Py_DECREF(got);
                continue;
            }
        }
        PyObject *client = PyTuple_GET_ITEM(got, 4);
        if (!(to_client && keep_clients && PyBytes_GET_SIZE(client) > 0)) client = Py_None;
        PyObject *addresses = PyTuple_GET_ITEM(got, 14);
        Py_INCREF(addresses);
        if (PyTuple_GET_SIZE(addresses) > 1) { /* round robin: one key in any order */
            PyObject *list = PySequence_List(addresses);
            Py_DECREF(addresses);
            if (!list || PyList_Sort(list) < 0) { Py_XDECREF(list); Py_DECREF(got); goto fail; }
            addresses = PyList_AsTuple(list);
            Py_DECREF(list);
            if (!addresses) { Py_DECREF(got); goto fail; }
        }
        PyObject *key = PyTuple_Pack(9, PyTuple_GET_ITEM(got, 0), PyTuple_GET_ITEM(got, 1),
                                     PyTuple_GET_ITEM(got, 2), PyTuple_GET_ITEM(got, 3),
                                     PyTuple_GET_ITEM(got, 9), PyTuple_GET_ITEM(got, 10),
                                     PyTuple_GET_ITEM(got, 8), addresses, client);
        Py_DECREF(addresses);
        double start = at0 + (PyFloat_AsDouble(PyTuple_GET_ITEM(got, 5)) - real0) * scale;
        PyObject *minute = PyLong_FromLongLong(floordiv((long long)start, 60));
        if (!key || !minute) { Py_XDECREF(key); Py_XDECREF(minute); Py_DECREF(got); goto fail; }
        int late = PySequence_Contains(judged, minute);
        PyObject *held = late ? NULL : PyDict_GetItemWithError(keys, minute);
        PyObject *entry = held ? PyDict_GetItemWithError(held, key) : NULL;
        if (late < 0 || PyErr_Occurred()) { Py_DECREF(key); Py_DECREF(minute); Py_DECREF(got); goto fail; }
        if (entry != NULL) { /* a repeat */
            PyObject *count = PyLong_FromLong(PyLong_AsLong(PyList_GET_ITEM(entry, 1)) + 1);
            PyObject *slot = count ? PyTuple_Pack(4, to_client ? users : up,
                                                  PyTuple_GET_ITEM(got, 8),
                                                  PyTuple_GET_ITEM(got, 15),
                                                  PyTuple_GET_ITEM(got, 16)) : NULL;
            PyObject *per = slot ? PyDict_GetItemWithError(tallies, minute) : NULL;
            int failed = !count || !slot || PyList_SetItem(entry, 1, count) < 0;
            if (!failed && per == NULL && !PyErr_Occurred()) {
                per = PyDict_New();
                failed = !per || PyDict_SetItem(tallies, minute, per) < 0;
                Py_XDECREF(per); /* held by tallies */
            }
            if (!failed) {
                PyObject *was = PyDict_GetItemWithError(per, slot);
                PyObject *now = PyLong_FromLong(was ? PyLong_AsLong(was) + 1 : 1);
                failed = !now || PyDict_SetItem(per, slot, now) < 0;
                Py_XDECREF(now);
            }
            Py_XDECREF(slot);
            Py_DECREF(key);
            Py_DECREF(minute);
            Py_DECREF(got);
            if (failed) goto fail;
            tally[4]++;
            continue;
        }
        int failed = 0;
        if (!late) {
            if (held == NULL) {
                held = PyDict_New();
                failed = !held || PyDict_SetItem(keys, minute, held) < 0;
                Py_XDECREF(held);
            }
            PyObject *placeholder = failed ? NULL : Py_BuildValue("[ii]", -1, 1);
            failed = failed || !placeholder || PyDict_SetItem(held, key, placeholder) < 0;
            Py_XDECREF(placeholder);
        }
        if (!failed)
            failed = append(fresh, Py_BuildValue("(y#NN)", frame, (Py_ssize_t)len, key, minute)) < 0;
        else {
            Py_DECREF(key);
            Py_DECREF(minute);
        }
        Py_DECREF(got);
        if (failed) goto fail;
    }
    for (int i = 0; i < 5; i++) {
        PyObject *was = PyList_GetItem(counts, i);
        PyObject *now = was ? PyLong_FromLongLong(PyLong_AsLongLong(was) + tally[i]) : NULL;
        if (!now || PyList_SetItem(counts, i, now) < 0) goto fail;
    }
    Py_DECREF(users);
    Py_DECREF(up);
    PyBuffer_Release(&view);
    if (gc_was) PyGC_Enable();
    return Py_BuildValue("(NnN)", fresh, offset, PyBool_FromLong(control));
fail:
    if (gc_was) PyGC_Enable();
    Py_XDECREF(fresh);
    Py_XDECREF(users);
    Py_XDECREF(up);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---- scan_match: the capture file's matching and grouping, fused with its reading ----
 *
 * scan_match(data, offset, big_endian, nano, linktype, limit, number, port, window, st,
 *            keys, tallies, judged, races, race_ttls, clock, keep_clients, counts)
 *   -> (fresh, fallback, offset, seen, cut, final, last_t)
 *
 * Passive.read_pcap's loop over a classic pcap file, as wallwatch.interop.pcap.Matcher
 * matches each query to its replies within ``window`` seconds and Passive._queries
 * groups them (its Python twin: that path itself, compared on the same files by
 * tests/test_fastwire.py). Up to ``limit`` records from ``offset``. A query and its
 * replies are held in C; when it finishes, its group key is looked up in a C table in
 * front of keys[minute] ({key: [index, count]}, which stays the truth): a repeat only
 * adds to counts (tallies, races and race_ttls summed per call, in first-seen order),
 * so the nine answers in ten that repeat one already recorded become no Python object
 * at all. Anything else is returned in ``fresh`` as (query list, key or None), as the
 * Python matcher shapes it, a new key held at once as [-1, 1] (unless its minute is in
 * ``judged``). IPv6 records, as (time, record, number), and IPv4 packets whose question
 * is not plain labels, as scan_pcap's tuples, go to ``fallback`` for the Python matcher
 * (number: the record's, from 1 at ``offset``; the caller adds ``number``). st = [state,
 * first_number, first_t] persists between calls (state starts as None; ``data``, bytes,
 * must be the same object while queries are open: replies point into it). counts gains
 * repeats at [0]. ``final``: the data ended (or was cut), every query has finished.
 * ``last_t``: the time of the last UDP-over-IPv4 packet read, or None.
 */

typedef struct {
    int kind; /* 0: skipped, 4: UDP over IPv4, 6: IPv6 (the caller's full reader) */
    double t;
    const unsigned char *rec;
    Py_ssize_t reclen;
    uint32_t src, dst;
    unsigned sport, dport, ttl, ip_id, df;
    const unsigned char *payload;
    Py_ssize_t plen;
} pkt_t;

/* The link header's length for a pcap link type; -1 when it is not read. */
static Py_ssize_t link_length(int linktype) {
    switch (linktype) {
    case 1: return 14;                    /* Ethernet */
    case 101: case 12: case 14: return 0; /* raw IP */
    case 113: return 16;                  /* Linux cooked v1 */
    case 276: return 20;                  /* Linux cooked v2 */
    case 0: case 108: return 4;           /* BSD loopback */
    default: return -1;
    }
}

/* The classic pcap record at d[*offset:n] into p (*offset moves past it): 1 when read,
   0 at the end of the data, -1 when the data ends inside the record. */
static int next_record(const unsigned char *d, Py_ssize_t n, Py_ssize_t *offset, int big,
                       int nano, int linktype, Py_ssize_t link, pkt_t *p) {
    if (*offset == n) return 0;
    if (*offset + 16 > n) return -1;
    const unsigned char *h = d + *offset;
    uint32_t sec = big ? rd32(h) : rd32le(h), frac = big ? rd32(h + 4) : rd32le(h + 4),
             caplen = big ? rd32(h + 8) : rd32le(h + 8);
    if (*offset + 16 + (Py_ssize_t)caplen > n) return -1;
    *offset += 16 + caplen;
    p->kind = 0;
    p->rec = h + 16;
    p->reclen = caplen;
    const unsigned char *q = h + 16;
    Py_ssize_t len = caplen;
    if (len < link + 20) return 1;
    p->t = (double)sec + (double)frac / (nano ? 1e9 : 1e6);
    int v6 = 0;
    if (linktype == 1) {
        unsigned type = rd16(q + 12);
        Py_ssize_t at = 14;
        if (type == 0x8100 && len >= 18 + 20) { type = rd16(q + 16); at = 18; }
        v6 = type == 0x86DD;
        if (type != 0x0800 && !v6) return 1;
        q += at; len -= at;
    } else {
        q += link; len -= link;
        v6 = (q[0] >> 4) == 6;
    }
    if (v6) {
        p->kind = 6;
        return 1;
    }
    if ((q[0] >> 4) != 4) return 1;
    Py_ssize_t ihl = (q[0] & 0xF) * 4;
    unsigned total = rd16(q + 2);
    if (ihl < 20 || len < ihl + 8 || q[9] != 17) return 1;
    unsigned frag = rd16(q + 6);
    if (frag & 0x3FFF) return 1; /* more fragments, or an offset */
    if (total >= ihl + 8 && total < len) len = total; /* Ethernet padding */
    const unsigned char *u = q + ihl;
    unsigned ulen = rd16(u + 4);
    Py_ssize_t plen = len - ihl - 8;
    if (ulen >= 8 && (Py_ssize_t)ulen - 8 < plen) plen = ulen - 8;
    p->kind = 4;
    p->src = rd32(q + 12);
    p->dst = rd32(q + 16);
    p->sport = rd16(u);
    p->dport = rd16(u + 2);
    p->ttl = q[8];
    p->ip_id = rd16(q + 4);
    p->df = (frag & 0x4000) != 0;
    p->payload = u + 8;
    p->plen = plen;
    return 1;
}

static PyObject *ip_text(uint32_t a) {
    char text[16];
    snprintf(text, sizeof text, "%u.%u.%u.%u", a >> 24, (a >> 16) & 0xFF, (a >> 8) & 0xFF,
             a & 0xFF);
    return PyUnicode_FromString(text);
}

/* scan_pcap's tuple of an IPv4 packet (number: the record's in this call). */
static PyObject *packet_tuple(const pkt_t *p, Py_ssize_t number) {
    PyObject *src = ip_text(p->src), *dst = ip_text(p->dst);
    PyObject *item = src && dst
        ? Py_BuildValue("(dOOIIIIOy#n)", p->t, src, dst, p->sport, p->dport, p->ttl, p->ip_id,
                        p->df ? Py_True : Py_False, (const char *)p->payload, p->plen, number)
        : NULL;
    Py_XDECREF(src);
    Py_XDECREF(dst);
    return item;
}

static PyObject *scan_pcap(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset, limit;
    int big, nano, linktype;
    if (!PyArg_ParseTuple(args, "y*nppin", &view, &offset, &big, &nano, &linktype, &limit))
        return NULL;
    Py_ssize_t link = link_length(linktype);
    if (link < 0) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "link type %d is not read", linktype);
    }
    PyObject *packets = PyList_New(0);
    if (!packets) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t seen = 0;
    int cut = 0;
    int gc_was = PyGC_Disable(); /* tuples of numbers, strings and bytes: no cycles */
    while (PyList_GET_SIZE(packets) < limit) {
        pkt_t p;
        int got = next_record(view.buf, view.len, &offset, big, nano, linktype, link, &p);
        if (got == 0) break;
        if (got < 0) { cut = 1; break; }
        seen++;
        PyObject *item;
        if (p.kind == 6) /* IPv6: the whole record, for the caller's full reader */
            item = Py_BuildValue("(dy#n)", p.t, (const char *)p.rec, p.reclen, seen);
        else if (p.kind == 4)
            item = packet_tuple(&p, seen);
        else
            continue;
        if (append(packets, item) < 0) goto fail;
    }
    PyBuffer_Release(&view);
    if (gc_was) PyGC_Enable();
    return Py_BuildValue("(NnnN)", packets, offset, seen, PyBool_FromLong(cut));
fail:
    if (gc_was) PyGC_Enable();
    Py_DECREF(packets);
    PyBuffer_Release(&view);
    return NULL;
}

/* The question of message m[0:n] when its name is plain labels (read_question): txid,
   flags, qname and qtype (0 read as 1, as the Python matcher reads it); -1 when not. */
static int question(const unsigned char *m, Py_ssize_t n, unsigned *txid, unsigned *flags,
                    char *name, Py_ssize_t *w, unsigned *qtype) {
    if (read_question(m, n, name, w, qtype) < 0) return -1;
    *txid = rd16(m);
    *flags = rd16(m + 2);
    if (*qtype == 0) *qtype = 1;
    return 0;
}

/* dict[key] += by for a dict of ints (Python's d[k] = d.get(k, 0) + by). */
static int bump(PyObject *dict, PyObject *key, long long by) {
    PyObject *was = PyDict_GetItemWithError(dict, key);
    if (was == NULL && PyErr_Occurred()) return -1;
    PyObject *now = PyLong_FromLongLong(was ? PyLong_AsLongLong(was) + by : by);
    if (now == NULL) return -1;
    int failed = PyDict_SetItem(dict, key, now);
    Py_DECREF(now);
    return failed;
}

/* dict[outer] as a dict, made when missing (a borrowed reference), or NULL on error. */
static PyObject *inner(PyObject *dict, PyObject *outer) {
    PyObject *found = PyDict_GetItemWithError(dict, outer);
    if (found != NULL || PyErr_Occurred()) return found;
    found = PyDict_New();
    if (found == NULL || PyDict_SetItem(dict, outer, found) < 0) {
        Py_XDECREF(found);
        return NULL;
    }
    Py_DECREF(found);
    return found;
}

static uint64_t fnv(const unsigned char *b, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

typedef struct {
    double t;
    uint32_t src;
    unsigned sport, ttl, ip_id, df;
    const unsigned char *payload; /* inside the matcher's data object */
    Py_ssize_t plen;
    int ok; /* the summary was read; else the full parser's, and the query is not grouped */
    unsigned flags, rcode;
    long least_ttl, ede;
    Py_ssize_t naddr;
    unsigned char *addrs;
} crep_t;

typedef struct cq {
    struct cq *next; /* the open table's chain */
    uint64_t hash;
    Py_ssize_t num;
    double t;
    uint32_t client, server;
    unsigned cport, sport, txid, qtype;
    int ttl; /* the query's IP TTL; -1: a reply whose query was not captured */
    int live, in_order, finished, mark;
    Py_ssize_t qlen;
    char qname[256];
    crep_t *rep;
    Py_ssize_t nrep;
    size_t caprep;
} cq_t;

typedef struct centry {
    struct centry *next;
    uint64_t hash;
    long long minute;
    unsigned char *kb;
    size_t klen;
    PyObject *entry; /* the [index, count] list of keys[minute] (a reference) */
    PyObject *held;  /* keys[minute] when it was cached: compared by identity only */
} centry_t;

typedef struct {
    long long k[4];
    long long count;
} slot_t;

typedef struct {
    /* The capture's bytes (a reference): replies point into them until they finish. */
    PyObject *data;
    unsigned char *kbuf; /* the group key being built */
    size_t kbuf_cap;
    cq_t **open;
    size_t nopen, open_cap;
    cq_t **order;
    size_t order_len, order_cap, head;
    cq_t **done;
    size_t ndone, done_cap;
    centry_t **groups;
    size_t ngroups, groups_cap;
} matcher_t;

/* Sums of one call, in first-seen order: tallies' slots, races per minute, race TTLs. */
typedef struct {
    slot_t *items;
    size_t len, cap;
    int32_t *index; /* open addressing over items, -1 empty */
    size_t index_cap;
} sums_t;

static int sums_add(sums_t *s, long long a, long long b, long long c, long long d) {
    if (2 * (s->len + 1) > s->index_cap) {
        size_t cap = s->index_cap ? 2 * s->index_cap : 64;
        int32_t *index = malloc(cap * sizeof *index);
        if (!index) return -1;
        for (size_t i = 0; i < cap; i++) index[i] = -1;
        for (size_t i = 0; i < s->len; i++) {
            uint64_t h = fnv((const unsigned char *)s->items[i].k, sizeof s->items[i].k,
                             14695981039346656037ULL);
            size_t at = h & (cap - 1);
            while (index[at] >= 0) at = (at + 1) & (cap - 1);
            index[at] = (int32_t)i;
        }
        free(s->index);
        s->index = index;
        s->index_cap = cap;
    }
    long long k[4] = {a, b, c, d};
    uint64_t h = fnv((const unsigned char *)k, sizeof k, 14695981039346656037ULL);
    size_t at = h & (s->index_cap - 1);
    while (s->index[at] >= 0) {
        slot_t *it = &s->items[s->index[at]];
        if (!memcmp(it->k, k, sizeof k)) {
            it->count++;
            return 0;
        }
        at = (at + 1) & (s->index_cap - 1);
    }
    if (s->len == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 32;
        slot_t *items = realloc(s->items, cap * sizeof *items);
        if (!items) return -1;
        s->items = items;
        s->cap = cap;
    }
    memcpy(s->items[s->len].k, k, sizeof k);
    s->items[s->len].count = 1;
    s->index[at] = (int32_t)s->len++;
    return 0;
}

static void sums_free(sums_t *s) {
    free(s->items);
    free(s->index);
}

static void free_cq(cq_t *q) {
    for (Py_ssize_t i = 0; i < q->nrep; i++) free(q->rep[i].addrs);
    free(q->rep);
    free(q);
}

static int grow(void **arr, size_t *cap, size_t need, size_t size, size_t first) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : first;
    while (cap2 < need) cap2 *= 2;
    void *grown = realloc(*arr, cap2 * size);
    if (!grown) return -1;
    *arr = grown;
    *cap = cap2;
    return 0;
}

static int push(cq_t ***arr, size_t *len, size_t *cap, cq_t *q) {
    if (grow((void **)arr, cap, *len + 1, sizeof **arr, 64) < 0) return -1;
    (*arr)[(*len)++] = q;
    return 0;
}

static uint64_t cq_hash(uint32_t client, unsigned cport, uint32_t server, unsigned sport,
                        unsigned txid, unsigned qtype, const char *qname, Py_ssize_t qlen) {
    uint32_t fixed[6] = {client, cport, server, sport, txid, qtype};
    return fnv((const unsigned char *)qname, (size_t)qlen,
               fnv((const unsigned char *)fixed, sizeof fixed, 14695981039346656037ULL));
}

static cq_t *open_find(matcher_t *mt, uint64_t h, uint32_t client, unsigned cport,
                       uint32_t server, unsigned sport, unsigned txid, unsigned qtype,
                       const char *qname, Py_ssize_t qlen) {
    if (!mt->open_cap) return NULL;
    for (cq_t *q = mt->open[h % mt->open_cap]; q; q = q->next)
        if (q->hash == h && q->client == client && q->cport == cport && q->server == server &&
            q->sport == sport && q->txid == txid && q->qtype == qtype && q->qlen == qlen &&
            !memcmp(q->qname, qname, (size_t)qlen))
            return q;
    return NULL;
}

static void open_remove(matcher_t *mt, cq_t *q) {
    cq_t **at = &mt->open[q->hash % mt->open_cap];
    while (*at && *at != q) at = &(*at)->next;
    if (*at) {
        *at = q->next;
        mt->nopen--;
    }
    q->next = NULL;
    q->live = 0;
}

static int open_insert(matcher_t *mt, cq_t *q) {
    if (mt->nopen + 1 > mt->open_cap) {
        size_t cap = mt->open_cap ? 2 * mt->open_cap : 1024;
        cq_t **table = calloc(cap, sizeof *table);
        if (!table) return -1;
        for (size_t i = 0; i < mt->open_cap; i++)
            for (cq_t *o = mt->open[i], *next; o; o = next) {
                next = o->next;
                o->next = table[o->hash % cap];
                table[o->hash % cap] = o;
            }
        free(mt->open);
        mt->open = table;
        mt->open_cap = cap;
    }
    q->next = mt->open[q->hash % mt->open_cap];
    mt->open[q->hash % mt->open_cap] = q;
    mt->nopen++;
    q->live = 1;
    return 0;
}

static void free_centry(centry_t *e) {
    Py_XDECREF(e->entry);
    free(e->kb);
    free(e);
}

static void matcher_free(PyObject *capsule) {
    matcher_t *mt = PyCapsule_GetPointer(capsule, "wallwatch.matcher");
    if (!mt) return;
    /* Every query once, whichever lists hold it. */
    cq_t **all = NULL;
    size_t nall = 0, cap = 0;
    cq_t **lists[2] = {mt->order, mt->done};
    size_t lens[2] = {mt->order_len, mt->ndone};
    for (int l = 0; l < 2; l++)
        for (size_t i = (l == 0 ? mt->head : 0); i < lens[l]; i++)
            if (!lists[l][i]->mark) {
                lists[l][i]->mark = 1;
                if (push(&all, &nall, &cap, lists[l][i]) < 0) goto leak;
            }
    for (size_t i = 0; i < mt->open_cap; i++)
        for (cq_t *q = mt->open[i]; q; q = q->next)
            if (!q->mark) {
                q->mark = 1;
                if (push(&all, &nall, &cap, q) < 0) goto leak;
            }
    for (size_t i = 0; i < nall; i++) free_cq(all[i]);
leak:
    free(all);
    for (size_t i = 0; i < mt->groups_cap; i++)
        for (centry_t *e = mt->groups[i], *next; e; e = next) {
            next = e->next;
            free_centry(e);
        }
    free(mt->groups);
    free(mt->open);
    free(mt->order);
    free(mt->done);
    free(mt->kbuf);
    Py_XDECREF(mt->data);
    free(mt);
}

typedef struct {
    PyObject *fresh, *keys, *tallies, *judged, *races, *race_ttls, *users;
    double real0, scale, at0;
    int keep;
    long long repeats;
    long long last_minute;
    int have_minute, last_late;
    PyObject *last_held; /* borrowed */
    sums_t tally, race_minutes, race_ttl;
} ctx_t;

/* The query as the Python matcher shapes it: [number, t, client, cport, server, sport,
   txid, qname, qtype, ttl or None, [(t, src, sport, ttl, ip_id, df, payload, summary)]]. */
static PyObject *materialize(const cq_t *q) {
    PyObject *replies = PyList_New(q->nrep);
    if (!replies) return NULL;
    for (Py_ssize_t i = 0; i < q->nrep; i++) {
        const crep_t *r = &q->rep[i];
        PyObject *read = summarize(r->payload, r->plen);
        PyObject *src = ip_text(r->src);
        PyObject *item = read && src
            ? Py_BuildValue("(dOIIIOy#O)", r->t, src, r->sport, r->ttl, r->ip_id,
                            r->df ? Py_True : Py_False, (const char *)r->payload, r->plen, read)
            : NULL;
        Py_XDECREF(read);
        Py_XDECREF(src);
        if (!item) {
            Py_DECREF(replies);
            return NULL;
        }
        PyList_SET_ITEM(replies, i, item);
    }
    PyObject *client = ip_text(q->client), *server = ip_text(q->server),
             *qname = PyUnicode_DecodeASCII(q->qname, q->qlen, NULL);
    PyObject *ttl = q->ttl < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(q->ttl);
    PyObject *list = client && server && qname && ttl
        ? Py_BuildValue("[ndOIOIIOIOO]", q->num, q->t, client, q->cport, server, q->sport,
                        q->txid, qname, q->qtype, ttl, replies)
        : NULL;
    Py_XDECREF(client);
    Py_XDECREF(server);
    Py_XDECREF(qname);
    Py_XDECREF(ttl);
    Py_DECREF(replies);
    if (list) PyObject_GC_UnTrack(list); /* strings, numbers and a list of tuples: no cycle */
    return list;
}

/* Passive._queries' key of a materialized query (every reply has its summary). */
static PyObject *group_key(PyObject *q, ctx_t *c) {
    PyObject *replies = PyList_GET_ITEM(q, 10);
    Py_ssize_t count = PyList_GET_SIZE(replies);
    PyObject *rkeys = PyTuple_New(count);
    if (!rkeys) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *read = PyTuple_GET_ITEM(PyList_GET_ITEM(replies, i), 7);
        PyObject *list = PySequence_List(PyTuple_GET_ITEM(read, 8));
        if (!list || PyList_Sort(list) < 0) {
            Py_XDECREF(list);
            Py_DECREF(rkeys);
            return NULL;
        }
        PyObject *sorted = PyList_AsTuple(list);
        Py_DECREF(list);
        PyObject *aa = PyLong_FromLong(PyLong_AsLong(PyTuple_GET_ITEM(read, 1)) & 0x0400);
        PyObject *rkey = sorted && aa ? PyTuple_Pack(3, PyTuple_GET_ITEM(read, 2), sorted, aa)
                                      : NULL;
        Py_XDECREF(sorted);
        Py_XDECREF(aa);
        if (!rkey) {
            Py_DECREF(rkeys);
            return NULL;
        }
        PyTuple_SET_ITEM(rkeys, i, rkey);
    }
    PyObject *packets = PyUnicode_FromString("packets");
    PyObject *key = packets ? PyTuple_Pack(8, packets, c->users, PyList_GET_ITEM(q, 4),
                                           PyList_GET_ITEM(q, 5), PyList_GET_ITEM(q, 7),
                                           PyList_GET_ITEM(q, 8),
                                           c->keep ? PyList_GET_ITEM(q, 2) : Py_None, rkeys)
                            : NULL;
    Py_XDECREF(packets);
    Py_DECREF(rkeys);
    return key;
}

static int cmp_addr(const void *a, const void *b) { return memcmp(a, b, ADDR_REC); }

/* The group key of a query in bytes (what group_key says, its address lists as multisets),
   built in the matcher's buffer; NULL when out of memory. */
static unsigned char *key_bytes(matcher_t *mt, const cq_t *q, int keep, size_t *klen) {
    size_t n = 4 + 2 + 2 + 1 + (size_t)q->qlen + 1 + 4 + 2;
    for (Py_ssize_t i = 0; i < q->nrep; i++) n += 2 + 1 + 4 + ADDR_REC * (size_t)q->rep[i].naddr;
    if (grow((void **)&mt->kbuf, &mt->kbuf_cap, n, 1, 256) < 0) return NULL;
    unsigned char *b = mt->kbuf, *w = b;
#define PUT(v, k) do { uint64_t v_ = (uint64_t)(v); for (int i_ = (k) - 1; i_ >= 0; i_--) *w++ = (unsigned char)(v_ >> (8 * i_)); } while (0)
    PUT(q->server, 4); PUT(q->sport, 2); PUT(q->qtype, 2); PUT(q->qlen, 1);
    memcpy(w, q->qname, (size_t)q->qlen); w += q->qlen;
    PUT(keep, 1); PUT(keep ? q->client : 0, 4); PUT(q->nrep, 2);
    for (Py_ssize_t i = 0; i < q->nrep; i++) {
        const crep_t *r = &q->rep[i];
        PUT(r->rcode, 2); PUT((r->flags & 0x0400) != 0, 1); PUT(r->naddr, 4);
        memcpy(w, r->addrs, ADDR_REC * (size_t)r->naddr);
        if (r->naddr > 1) qsort(w, (size_t)r->naddr, ADDR_REC, cmp_addr);
        w += ADDR_REC * r->naddr;
    }
#undef PUT
    *klen = (size_t)(w - b);
    return b;
}

static int groups_insert(matcher_t *mt, uint64_t h, long long minute, const unsigned char *kb,
                         size_t klen, PyObject *entry, PyObject *held) {
    if (mt->ngroups + 1 > mt->groups_cap) {
        size_t cap = mt->groups_cap ? 2 * mt->groups_cap : 4096;
        centry_t **table = calloc(cap, sizeof *table);
        if (!table) return -1;
        for (size_t i = 0; i < mt->groups_cap; i++)
            for (centry_t *e = mt->groups[i], *next; e; e = next) {
                next = e->next;
                e->next = table[e->hash % cap];
                table[e->hash % cap] = e;
            }
        free(mt->groups);
        mt->groups = table;
        mt->groups_cap = cap;
    }
    centry_t *e = malloc(sizeof *e);
    unsigned char *copy = malloc(klen ? klen : 1);
    if (!e || !copy) {
        free(e);
        free(copy);
        return -1;
    }
    memcpy(copy, kb, klen);
    e->hash = h;
    e->minute = minute;
    e->kb = copy;
    e->klen = klen;
    e->entry = Py_NewRef(entry);
    e->held = held;
    e->next = mt->groups[h % mt->groups_cap];
    mt->groups[h % mt->groups_cap] = e;
    mt->ngroups++;
    return 0;
}

/* A repeat of a held key: its count, the minute's tally, the race. */
static int repeat(PyObject *entry, const cq_t *q, long long minute, ctx_t *c) {
    PyObject *n = PyLong_FromLong(PyLong_AsLong(PyList_GET_ITEM(entry, 1)) + 1);
    if (!n || PyList_SetItem(entry, 1, n) < 0) return -1;
    const crep_t *first = &q->rep[0];
    if (sums_add(&c->tally, minute, first->rcode, first->least_ttl, first->ede) < 0) return -1;
    int distinct = 0;
    for (Py_ssize_t i = 1; i < q->nrep && !distinct; i++)
        distinct = q->rep[i].naddr != first->naddr ||
                   memcmp(q->rep[i].addrs, first->addrs, ADDR_REC * (size_t)first->naddr);
    if (distinct && (sums_add(&c->race_minutes, minute, 0, 0, 0) < 0 ||
                     sums_add(&c->race_ttl, first->ttl, 0, 0, 0) < 0))
        return -1;
    c->repeats++;
    return 0;
}

/* One finished query: counted when it repeats a key held this minute, else to fresh. */
static int finish(matcher_t *mt, cq_t *q, ctx_t *c) {
    int groupable = q->nrep > 0;
    for (Py_ssize_t i = 0; i < q->nrep && groupable; i++) groupable = q->rep[i].ok;
    if (!groupable) {
        PyObject *list = materialize(q);
        int failed = !list || append(c->fresh, PyTuple_Pack(2, list, Py_None)) < 0;
        Py_XDECREF(list);
        return failed ? -1 : 0;
    }
    double start = c->at0 + (q->t - c->real0) * c->scale;
    long long minute = floordiv((long long)start, 60);
    if (!c->have_minute || minute != c->last_minute) {
        PyObject *m = PyLong_FromLongLong(minute);
        if (!m) return -1;
        int late = PySequence_Contains(c->judged, m);
        PyObject *held = late == 0 ? inner(c->keys, m) : NULL;
        Py_DECREF(m);
        if (late < 0 || (late == 0 && !held)) return -1;
        c->have_minute = 1;
        c->last_minute = minute;
        c->last_late = late;
        c->last_held = held;
    }
    size_t klen = 0;
    const unsigned char *kb = NULL;
    uint64_t h = 0;
    if (!c->last_late) {
        kb = key_bytes(mt, q, c->keep, &klen);
        if (!kb) {
            PyErr_NoMemory();
            return -1;
        }
        h = fnv(kb, klen, 14695981039346656037ULL) ^ ((uint64_t)minute * 0x9E3779B97F4A7C15ULL);
        if (mt->groups_cap)
            for (centry_t *e = mt->groups[h % mt->groups_cap]; e; e = e->next)
                if (e->hash == h && e->minute == minute && e->held == c->last_held &&
                    e->klen == klen && !memcmp(e->kb, kb, klen))
                    return repeat(e->entry, q, minute, c);
    }
    PyObject *list = materialize(q);
    PyObject *key = list ? group_key(list, c) : NULL;
    int failed = !key;
    if (!failed && c->last_late) {
        failed = append(c->fresh, PyTuple_Pack(2, list, key)) < 0;
    } else if (!failed) {
        PyObject *entry = PyDict_GetItemWithError(c->last_held, key);
        failed = entry == NULL && PyErr_Occurred() != NULL;
        if (!failed && entry != NULL) { /* held by the Python matcher's answers */
            failed = groups_insert(mt, h, minute, kb, klen, entry, c->last_held) < 0 ||
                     repeat(entry, q, minute, c) < 0;
        } else if (!failed) {
            PyObject *placeholder = Py_BuildValue("[ii]", -1, 1);
            failed = !placeholder || PyDict_SetItem(c->last_held, key, placeholder) < 0 ||
                     groups_insert(mt, h, minute, kb, klen, placeholder, c->last_held) < 0 ||
                     append(c->fresh, PyTuple_Pack(2, list, key)) < 0;
            Py_XDECREF(placeholder);
        }
    }
    if (failed && !PyErr_Occurred()) PyErr_NoMemory();
    Py_XDECREF(list);
    Py_XDECREF(key);
    return failed ? -1 : 0;
}

static int cmp_num(const void *a, const void *b) {
    Py_ssize_t x = (*(cq_t *const *)a)->num, y = (*(cq_t *const *)b)->num;
    return x < y ? -1 : x > y;
}

/* Finish the queries asked before ``before`` (every one when ``all``), and those done
   early, in capture order. */
static int expire(matcher_t *mt, double before, int all, ctx_t *c) {
    cq_t **finished = mt->done;
    size_t nfin = mt->ndone, cap = mt->done_cap;
    mt->done = NULL;
    mt->ndone = mt->done_cap = 0;
    int failed = 0;
    while (mt->head < mt->order_len) {
        cq_t *q = mt->order[mt->head];
        if (!all && q->t >= before) break;
        mt->head++;
        q->in_order = 0;
        if (q->live) {
            open_remove(mt, q);
            if (push(&finished, &nfin, &cap, q) < 0) { failed = 1; break; }
        } else if (q->finished) {
            free_cq(q);
        }
    }
    if (mt->head > 4096 || mt->head == mt->order_len) {
        memmove(mt->order, mt->order + mt->head, (mt->order_len - mt->head) * sizeof *mt->order);
        mt->order_len -= mt->head;
        mt->head = 0;
    }
    int sorted = 1;
    for (size_t i = 1; i < nfin && sorted; i++) sorted = finished[i - 1]->num < finished[i]->num;
    if (!sorted) qsort(finished, nfin, sizeof *finished, cmp_num);
    for (size_t i = 0; i < nfin; i++) {
        cq_t *q = finished[i];
        if (!failed && finish(mt, q, c) < 0) failed = 1;
        q->finished = 1;
        if (!q->in_order) free_cq(q);
    }
    free(finished);
    if (failed && !PyErr_Occurred()) PyErr_NoMemory();
    return failed ? -1 : 0;
}

/* Forget the cached keys of minutes judged or no longer held as they were. */
static int prune_groups(matcher_t *mt, PyObject *keys, PyObject *judged) {
    long long minute = 0;
    int have = 0;
    PyObject *current = NULL;
    for (size_t i = 0; i < mt->groups_cap; i++) {
        centry_t **at = &mt->groups[i];
        while (*at) {
            centry_t *e = *at;
            if (!have || e->minute != minute) {
                PyObject *m = PyLong_FromLongLong(e->minute);
                if (!m) return -1;
                int late = PySequence_Contains(judged, m);
                current = late == 0 ? PyDict_GetItemWithError(keys, m) : NULL;
                Py_DECREF(m);
                if (late < 0 || PyErr_Occurred()) return -1;
                minute = e->minute;
                have = 1;
            }
            if (current != e->held) {
                *at = e->next;
                mt->ngroups--;
                free_centry(e);
            } else {
                at = &e->next;
            }
        }
    }
    return 0;
}

static int flush_sums(ctx_t *c) {
    for (size_t i = 0; i < c->tally.len; i++) {
        slot_t *s = &c->tally.items[i];
        PyObject *m = PyLong_FromLongLong(s->k[0]);
        PyObject *per = m ? inner(c->tallies, m) : NULL;
        PyObject *slot = per ? Py_BuildValue("(OLLL)", c->users, s->k[1], s->k[2], s->k[3]) : NULL;
        int failed = !slot || bump(per, slot, s->count) < 0;
        Py_XDECREF(m);
        Py_XDECREF(slot);
        if (failed) return -1;
    }
    for (int which = 0; which < 2; which++) {
        sums_t *sums = which ? &c->race_ttl : &c->race_minutes;
        PyObject *dict = which ? c->race_ttls : c->races;
        for (size_t i = 0; i < sums->len; i++) {
            PyObject *k = PyLong_FromLongLong(sums->items[i].k[0]);
            int failed = !k || bump(dict, k, sums->items[i].count) < 0;
            Py_XDECREF(k);
            if (failed) return -1;
        }
    }
    return 0;
}

static PyObject *scan_match(PyObject *self, PyObject *args) {
    PyObject *data;
    Py_ssize_t offset, limit, number;
    int big, nano, linktype, keep;
    unsigned port;
    double window;
    PyObject *st, *counts;
    ctx_t c;
    memset(&c, 0, sizeof c);
    if (!PyArg_ParseTuple(args, "O!nppinnIdO!O!O!OO!O!(ddd)pO!", &PyBytes_Type, &data, &offset,
                          &big, &nano,
                          &linktype, &limit, &number, &port, &window, &PyList_Type, &st,
                          &PyDict_Type, &c.keys, &PyDict_Type, &c.tallies, &c.judged,
                          &PyDict_Type, &c.races, &PyDict_Type, &c.race_ttls, &c.real0,
                          &c.scale, &c.at0, &keep, &PyList_Type, &counts))
        return NULL;
    c.keep = keep;
    Py_ssize_t link = link_length(linktype);
    if (link < 0 || PyList_GET_SIZE(st) != 3 || offset < 0 || offset > PyBytes_GET_SIZE(data)) {
        return link < 0 ? PyErr_Format(PyExc_ValueError, "link type %d is not read", linktype)
                        : PyErr_Format(PyExc_ValueError, "bad matcher state or offset");
    }
    matcher_t *mt = NULL;
    PyObject *capsule = PyList_GET_ITEM(st, 0);
    if (capsule == Py_None) {
        mt = calloc(1, sizeof *mt);
        capsule = mt ? PyCapsule_New(mt, "wallwatch.matcher", matcher_free) : NULL;
        if (!capsule) {
            free(mt);
            return mt ? NULL : PyErr_NoMemory();
        }
        if (PyList_SetItem(st, 0, capsule) < 0) return NULL;
    } else {
        mt = PyCapsule_GetPointer(capsule, "wallwatch.matcher");
        if (!mt) return NULL;
    }
    if (mt->data != data) { /* replies point into the data: one capture's bytes throughout */
        if (mt->nopen || mt->ndone || mt->order_len > mt->head)
            return PyErr_Format(PyExc_ValueError, "scan_match: queries are open over other data");
        Py_XSETREF(mt->data, Py_NewRef(data));
    }
    /* The cyclic collector off while the batch is made: nothing here forms a cycle. */
    int gc_was = PyGC_Disable();
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), seen = 0;
    int cut = 0, final = 0, have_last = 0;
    double last_t = 0;
    PyObject *fallback = PyList_New(0);
    c.fresh = PyList_New(0);
    c.users = PyUnicode_FromString("users");
    if (!fallback || !c.fresh || !c.users || prune_groups(mt, c.keys, c.judged) < 0) goto fail;
    while (seen < limit) {
        pkt_t p;
        int got = next_record(d, n, &offset, big, nano, linktype, link, &p);
        if (got == 0) break;
        if (got < 0) { cut = 1; break; }
        seen++;
        if (p.kind == 6) {
            if (append(fallback, Py_BuildValue("(dy#n)", p.t, (const char *)p.rec, p.reclen,
                                               seen)) < 0)
                goto fail;
            continue;
        }
        if (p.kind != 4) continue;
        have_last = 1;
        last_t = p.t;
        if (p.sport != port && p.dport != port) continue; /* not DNS */
        unsigned txid, flags, qtype;
        char name[256];
        Py_ssize_t w;
        if (question(p.payload, p.plen, &txid, &flags, name, &w, &qtype) < 0) {
            if (append(fallback, packet_tuple(&p, seen)) < 0) goto fail;
            continue;
        }
        if (PyLong_AsSsize_t(PyList_GET_ITEM(st, 1)) < 0) {
            PyObject *fn = PyLong_FromSsize_t(number + seen), *ft = PyFloat_FromDouble(p.t);
            if (!fn || !ft || PyList_SetItem(st, 1, fn) < 0 || PyList_SetItem(st, 2, ft) < 0) {
                goto fail;
            }
        }
        if (!(flags & 0x8000) && p.dport == port) { /* a query */
            cq_t *q = calloc(1, sizeof *q);
            if (!q) { PyErr_NoMemory(); goto fail; }
            q->num = number + seen; q->t = p.t;
            q->client = p.src; q->cport = p.sport; q->server = p.dst; q->sport = p.dport;
            q->txid = txid; q->qtype = qtype; q->ttl = (int)p.ttl;
            q->qlen = w;
            memcpy(q->qname, name, (size_t)w);
            q->hash = cq_hash(q->client, q->cport, q->server, q->sport, txid, qtype, name, w);
            cq_t *old = open_find(mt, q->hash, q->client, q->cport, q->server, q->sport, txid,
                                  qtype, name, w);
            if (old) { /* asked again before its window closed: the old one is done */
                open_remove(mt, old);
                if (push(&mt->done, &mt->ndone, &mt->done_cap, old) < 0) { free_cq(q); PyErr_NoMemory(); goto fail; }
            }
            if (open_insert(mt, q) < 0 || push(&mt->order, &mt->order_len, &mt->order_cap, q) < 0) {
                if (q->live) open_remove(mt, q);
                free_cq(q);
                PyErr_NoMemory();
                goto fail;
            }
            q->in_order = 1;
        } else if (p.sport != port) {
            continue; /* not DNS (a query to another port): skipped before any expiry */
        } else { /* a reply */
            uint64_t h = cq_hash(p.dst, p.dport, p.src, p.sport, txid, qtype, name, w);
            cq_t *q = open_find(mt, h, p.dst, p.dport, p.src, p.sport, txid, qtype, name, w);
            if (!q) { /* its query was not captured: a record of its own */
                q = calloc(1, sizeof *q);
                if (!q) { PyErr_NoMemory(); goto fail; }
                q->num = number + seen; q->t = p.t;
                q->client = p.dst; q->cport = p.dport; q->server = p.src; q->sport = p.sport;
                q->txid = txid; q->qtype = qtype; q->ttl = -1;
                q->qlen = w;
                memcpy(q->qname, name, (size_t)w);
                q->hash = h;
                if (push(&mt->done, &mt->ndone, &mt->done_cap, q) < 0) { free_cq(q); PyErr_NoMemory(); goto fail; }
            }
            if (grow((void **)&q->rep, &q->caprep, (size_t)q->nrep + 1, sizeof *q->rep, 1) < 0) {
                PyErr_NoMemory();
                goto fail;
            }
            crep_t *r = &q->rep[q->nrep];
            memset(r, 0, sizeof *r);
            r->payload = p.payload;
            r->plen = p.plen;
            q->nrep++;
            r->t = p.t; r->src = p.src; r->sport = p.sport; r->ttl = p.ttl; r->ip_id = p.ip_id;
            r->df = p.df;
            csum_t sm;
            char rname[256];
            Py_ssize_t rw = 0;
            int read = read_summary(p.payload, p.plen, &sm, rname, &rw);
            if (read < 0) { free(sm.addrs); goto fail; }
            r->ok = read;
            r->flags = sm.flags; r->rcode = sm.rcode; r->least_ttl = sm.ttl; r->ede = sm.ede;
            r->naddr = read ? sm.naddr : 0;
            r->addrs = sm.addrs;
        }
        if (mt->ndone > 64 ||
            (mt->head < mt->order_len && mt->order[mt->head]->t < p.t - window - 1.0)) {
            if (expire(mt, p.t - window, 0, &c) < 0) goto fail;
        }
    }
    if (cut || offset == n) {
        final = 1;
        if (expire(mt, 0, 1, &c) < 0) goto fail;
        mt->order_len = mt->head = 0;
    }
    if (flush_sums(&c) < 0) goto fail;
    PyObject *was = PyList_GetItem(counts, 0);
    PyObject *now = was ? PyLong_FromLongLong(PyLong_AsLongLong(was) + c.repeats) : NULL;
    if (!now || PyList_SetItem(counts, 0, now) < 0) goto fail;
    sums_free(&c.tally);
    sums_free(&c.race_minutes);
    sums_free(&c.race_ttl);
    Py_DECREF(c.users);
    if (gc_was) PyGC_Enable();
    PyObject *last = have_last ? PyFloat_FromDouble(last_t) : Py_NewRef(Py_None);
    return Py_BuildValue("(NNnnNNN)", c.fresh, fallback, offset, seen, PyBool_FromLong(cut),
                         PyBool_FromLong(final), last);
fail:
    sums_free(&c.tally);
    sums_free(&c.race_minutes);
    sums_free(&c.race_ttl);
    if (gc_was) PyGC_Enable();
    Py_XDECREF(c.fresh);
    Py_XDECREF(c.users);
    Py_XDECREF(fallback);
    return NULL;
}

static PyMethodDef methods[] = {
    {"summary", summary, METH_O, "The header, question, addresses, TTL and EDE of a DNS message."},
    {"scan_pcap", scan_pcap, METH_VARARGS, "UDP-over-IPv4 packets of classic pcap records."},
    {"dnstap_answer", dnstap_answer, METH_O, "The answer a dnstap frame holds, summarized."},
    {"dnstap_group", dnstap_group, METH_VARARGS, "Passive's grouping loop over dnstap frames."},
    {"scan_match", scan_match, METH_VARARGS, "Passive's reading and matching of a pcap file."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
