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

/* The summary tuple of message m[0:n]; Py_None (a new reference) when declined. */
static PyObject *summarize(const unsigned char *m, Py_ssize_t n) {
    PyObject *result = NULL, *addresses = NULL, *qname = NULL;
    if (n < 12) goto decline;
    unsigned id = rd16(m), flags = rd16(m + 2), qd = rd16(m + 4), an = rd16(m + 6),
             ns = rd16(m + 8), ar = rd16(m + 10);
    if (qd < 1) goto decline;
    char name[256];
    Py_ssize_t w;
    unsigned qtype;
    Py_ssize_t off = read_question(m, n, name, &w, &qtype);
    if (off < 0) goto decline;
    for (unsigned i = 1; i < qd; i++) {
        off = skip_name(m, n, off);
        if (off < 0 || off + 4 > n) goto decline;
        off += 4;
    }
    addresses = PyList_New(0);
    if (!addresses) goto fail;
    long min_ttl = -1, ede = -1;
    unsigned rcode = flags & 0xF;
    unsigned total = an + ns + ar;
    for (unsigned i = 0; i < total; i++) {
        off = skip_name(m, n, off);
        if (off < 0 || off + 10 > n) goto decline;
        unsigned rtype = rd16(m + off), rclass = rd16(m + off + 2);
        uint32_t ttl = rd32(m + off + 4);
        unsigned rdlen = rd16(m + off + 8);
        off += 10;
        if (off + rdlen > n) goto decline;
        (void)rclass;
        if (i < an && ((rtype == 1 && rdlen == 4) || (rtype == 28 && rdlen == 16))) {
            char text[64];
            if (rtype == 1)
                snprintf(text, sizeof text, "%u.%u.%u.%u", m[off], m[off + 1], m[off + 2],
                         m[off + 3]);
            else {
                /* RFC 5952 text, as Python's ipaddress/inet_ntop write it. */
                unsigned g[8];
                for (int k = 0; k < 8; k++) g[k] = rd16(m + off + 2 * k);
                /* IPv4-compatible and -mapped forms print a dotted tail: the full parser's. */
                if (!g[0] && !g[1] && !g[2] && !g[3] && !g[4] && (g[5] == 0 || g[5] == 0xFFFF))
                    goto decline;
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
                for (int k = 0; k < 8; k++) {
                    if (k == best) {
                        t += snprintf(text + t, sizeof text - t, k == 0 ? "::" : ":");
                        k += best_len - 1;
                        continue;
                    }
                    t += snprintf(text + t, sizeof text - t, "%x%s", g[k], k < 7 ? ":" : "");
                }
            }
            PyObject *s = PyUnicode_FromString(text);
            if (!s || PyList_Append(addresses, s) < 0) {
                Py_XDECREF(s);
                goto fail;
            }
            Py_DECREF(s);
            if (min_ttl < 0 || (long)ttl < min_ttl) min_ttl = (long)ttl;
        } else if (i >= an + ns && rtype == 41) {
            rcode |= (ttl >> 24) << 4;
            Py_ssize_t o = off, end = off + rdlen;
            while (o + 4 <= end) {
                unsigned code = rd16(m + o), olen = rd16(m + o + 2);
                if (o + 4 + olen > end) goto decline;
                if (code == 15 && olen >= 2 && ede < 0) ede = rd16(m + o + 4);
                o += 4 + olen;
            }
        }
        off += rdlen;
    }
    if (off != n) goto decline; /* trailing data: the full parser names it */
    qname = PyUnicode_DecodeASCII(name, w, NULL);
    if (!qname) goto fail;
    PyObject *tuple = PyList_AsTuple(addresses);
    if (!tuple) goto fail;
    result = Py_BuildValue("(IIINIIIINll)", id, flags, rcode, qname, qtype, an, ns, ar, tuple,
                           min_ttl, ede);
    qname = NULL; /* stolen by N */
    Py_DECREF(addresses);
    return result;
decline:
    Py_XDECREF(addresses);
    Py_XDECREF(qname);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(addresses);
    Py_XDECREF(qname);
    return NULL;
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
    int gc_was = PyGC_Disable(); /* as in match_batch: no cycles made here */
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

static PyObject *scan_pcap(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset, limit;
    int big, nano, linktype;
    if (!PyArg_ParseTuple(args, "y*nppin", &view, &offset, &big, &nano, &linktype, &limit))
        return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len;
    PyObject *packets = PyList_New(0);
    if (!packets) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t seen = 0;
    int cut = 0;
    Py_ssize_t link;
    switch (linktype) {
    case 1: link = 14; break;        /* Ethernet */
    case 101: case 12: case 14: link = 0; break; /* raw IP */
    case 113: link = 16; break;      /* Linux cooked v1 */
    case 276: link = 20; break;      /* Linux cooked v2 */
    case 0: case 108: link = 4; break; /* BSD loopback */
    default:
        Py_DECREF(packets);
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "link type %d is not read", linktype);
        return NULL;
    }
    int gc_was = PyGC_Disable(); /* tuples of numbers, strings and bytes: no cycles */
    while (PyList_GET_SIZE(packets) < limit) {
        if (offset == n) break;
        if (offset + 16 > n) { cut = 1; break; }
        const unsigned char *h = d + offset;
        uint32_t sec = big ? rd32(h) : rd32le(h), frac = big ? rd32(h + 4) : rd32le(h + 4),
                 caplen = big ? rd32(h + 8) : rd32le(h + 8);
        if (offset + 16 + (Py_ssize_t)caplen > n) { cut = 1; break; }
        const unsigned char *p = h + 16;
        Py_ssize_t len = caplen;
        offset += 16 + caplen;
        seen++;
        if (len < link + 20) continue;
        double t = (double)sec + (double)frac / (nano ? 1e9 : 1e6);
        int v6 = 0;
        if (linktype == 1) {
            unsigned type = rd16(p + 12);
            Py_ssize_t at = 14;
            if (type == 0x8100 && len >= 18 + 20) { type = rd16(p + 16); at = 18; }
            v6 = type == 0x86DD;
            if (type != 0x0800 && !v6) continue;
            p += at; len -= at;
        } else {
            p += link; len -= link;
            v6 = (p[0] >> 4) == 6;
        }
        PyObject *item;
        if (v6) { /* IPv6: the whole record, for the caller's full reader */
            item = Py_BuildValue("(dy#n)", t, (const char *)(h + 16), (Py_ssize_t)caplen, seen);
            if (append(packets, item) < 0) goto fail;
            continue;
        }
        if ((p[0] >> 4) != 4) continue;
        Py_ssize_t ihl = (p[0] & 0xF) * 4;
        unsigned total = rd16(p + 2);
        if (ihl < 20 || len < ihl + 8 || p[9] != 17) continue;
        unsigned frag = rd16(p + 6);
        if (frag & 0x3FFF) continue; /* more fragments, or an offset */
        if (total >= ihl + 8 && total < len) len = total; /* Ethernet padding */
        const unsigned char *u = p + ihl;
        unsigned ulen = rd16(u + 4);
        Py_ssize_t plen = len - ihl - 8;
        if (ulen >= 8 && (Py_ssize_t)ulen - 8 < plen) plen = ulen - 8;
        char src[16], dst[16];
        snprintf(src, sizeof src, "%u.%u.%u.%u", p[12], p[13], p[14], p[15]);
        snprintf(dst, sizeof dst, "%u.%u.%u.%u", p[16], p[17], p[18], p[19]);
        item = Py_BuildValue("(dssIIIIOy#n)", t, src, dst, rd16(u), rd16(u + 2), (unsigned)p[8],
                             rd16(p + 4), (frag & 0x4000) ? Py_True : Py_False,
                             (const char *)(u + 8), plen, seen);
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

/* dict[key] += 1 for a dict of ints (Python's d[k] = d.get(k, 0) + 1). */
static int bump(PyObject *dict, PyObject *key) {
    PyObject *was = PyDict_GetItemWithError(dict, key);
    if (was == NULL && PyErr_Occurred()) return -1;
    PyObject *now = PyLong_FromLongLong(was ? PyLong_AsLongLong(was) + 1 : 1);
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

/* Group one finished query (a list: number, t, client, cport, server, sport, txid, qname,
   qtype, ip_ttl, replies) as Passive._queries does for a capture file; append it to
   fresh unless it repeats an answer held this minute. */
static int finish(PyObject *q, PyObject *fresh, PyObject *keys, PyObject *tallies,
                  PyObject *judged, PyObject *races, PyObject *race_ttls, double real0,
                  double scale, double at0, int keep_clients, long long *repeats) {
    PyObject *replies = PyList_GET_ITEM(q, 10);
    Py_ssize_t count = PyList_GET_SIZE(replies);
    int groupable = count > 0;
    for (Py_ssize_t i = 0; i < count && groupable; i++)
        groupable = PyTuple_GET_ITEM(PyList_GET_ITEM(replies, i), 7) != Py_None;
    if (!groupable) return append(fresh, PyTuple_Pack(2, q, Py_None));
    PyObject *rkeys = PyTuple_New(count), *distinct = PySet_New(NULL);
    if (!rkeys || !distinct) { Py_XDECREF(rkeys); Py_XDECREF(distinct); return -1; }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *read = PyTuple_GET_ITEM(PyList_GET_ITEM(replies, i), 7);
        PyObject *addresses = PyTuple_GET_ITEM(read, 8);
        PyObject *list = PySequence_List(addresses);
        if (!list || PyList_Sort(list) < 0 || PySet_Add(distinct, addresses) < 0) {
            Py_XDECREF(list); Py_DECREF(rkeys); Py_DECREF(distinct); return -1;
        }
        PyObject *sorted = PyList_AsTuple(list);
        Py_DECREF(list);
        PyObject *aa = PyLong_FromLong(PyLong_AsLong(PyTuple_GET_ITEM(read, 1)) & 0x0400);
        PyObject *rkey = sorted && aa ? PyTuple_Pack(3, PyTuple_GET_ITEM(read, 2), sorted, aa)
                                      : NULL;
        Py_XDECREF(sorted);
        Py_XDECREF(aa);
        if (!rkey) { Py_DECREF(rkeys); Py_DECREF(distinct); return -1; }
        PyTuple_SET_ITEM(rkeys, i, rkey);
    }
    PyObject *packets = PyUnicode_FromString("packets"), *users = PyUnicode_FromString("users");
    PyObject *key = packets && users
        ? PyTuple_Pack(8, packets, users, PyList_GET_ITEM(q, 4), PyList_GET_ITEM(q, 5),
                       PyList_GET_ITEM(q, 7), PyList_GET_ITEM(q, 8),
                       keep_clients ? PyList_GET_ITEM(q, 2) : Py_None, rkeys)
        : NULL;
    Py_XDECREF(packets);
    Py_DECREF(rkeys);
    double start = at0 + (PyFloat_AsDouble(PyList_GET_ITEM(q, 1)) - real0) * scale;
    PyObject *minute = key ? PyLong_FromLongLong(floordiv((long long)start, 60)) : NULL;
    int failed = !minute;
    int late = failed ? 0 : PySequence_Contains(judged, minute);
    failed = failed || late < 0;
    PyObject *held = failed || late ? NULL : inner(keys, minute);
    failed = failed || (!late && !held);
    PyObject *entry = failed || late ? NULL : PyDict_GetItemWithError(held, key);
    failed = failed || PyErr_Occurred() != NULL;
    if (!failed && entry != NULL) { /* a repeat: counted on its record */
        PyObject *n = PyLong_FromLong(PyLong_AsLong(PyList_GET_ITEM(entry, 1)) + 1);
        failed = !n || PyList_SetItem(entry, 1, n) < 0;
        PyObject *first = PyTuple_GET_ITEM(PyList_GET_ITEM(replies, 0), 7);
        PyObject *slot = failed ? NULL : PyTuple_Pack(4, users, PyTuple_GET_ITEM(first, 2),
                                                      PyTuple_GET_ITEM(first, 9),
                                                      PyTuple_GET_ITEM(first, 10));
        PyObject *per = slot ? inner(tallies, minute) : NULL;
        failed = failed || !per || bump(per, slot) < 0;
        Py_XDECREF(slot);
        if (!failed && count > 1 && PySet_GET_SIZE(distinct) >= 2) {
            PyObject *ttl = PyTuple_GET_ITEM(PyList_GET_ITEM(replies, 0), 3);
            failed = bump(races, minute) < 0 || (ttl != Py_None && bump(race_ttls, ttl) < 0);
        }
        (*repeats)++;
    } else if (!failed) {
        if (!late) {
            PyObject *placeholder = Py_BuildValue("[ii]", -1, 1);
            failed = !placeholder || PyDict_SetItem(held, key, placeholder) < 0;
            Py_XDECREF(placeholder);
        }
        failed = failed || append(fresh, PyTuple_Pack(2, q, key)) < 0;
    }
    Py_XDECREF(users);
    Py_XDECREF(key);
    Py_XDECREF(minute);
    Py_DECREF(distinct);
    return failed ? -1 : 0;
}

/* Finish the queries asked before ``before`` (and st's done list), in capture order. */
static int expire(PyObject *st, double before, PyObject *fresh, PyObject *keys, PyObject *tallies,
                  PyObject *judged, PyObject *races, PyObject *race_ttls, double real0,
                  double scale, double at0, int keep_clients, long long *repeats) {
    PyObject *open = PyList_GET_ITEM(st, 0), *order = PyList_GET_ITEM(st, 1);
    Py_ssize_t head = PyLong_AsSsize_t(PyList_GET_ITEM(st, 2));
    PyObject *finished = PyList_GET_ITEM(st, 3);
    Py_INCREF(finished);
    PyObject *empty = PyList_New(0);
    if (!empty || PyList_SetItem(st, 3, empty) < 0) { Py_DECREF(finished); return -1; }
    while (head < PyList_GET_SIZE(order)) {
        PyObject *q = PyList_GET_ITEM(order, head);
        if (PyFloat_AsDouble(PyList_GET_ITEM(q, 1)) >= before) break;
        head++;
        PyObject *key = PyTuple_Pack(7, PyList_GET_ITEM(q, 2), PyList_GET_ITEM(q, 3),
                                     PyList_GET_ITEM(q, 4), PyList_GET_ITEM(q, 5),
                                     PyList_GET_ITEM(q, 6), PyList_GET_ITEM(q, 7),
                                     PyList_GET_ITEM(q, 8));
        if (!key) { Py_DECREF(finished); return -1; }
        PyObject *current = PyDict_GetItemWithError(open, key);
        int failed = current == q && (PyDict_DelItem(open, key) < 0 || PyList_Append(finished, q) < 0);
        Py_DECREF(key);
        if (failed || PyErr_Occurred()) { Py_DECREF(finished); return -1; }
    }
    if (head > 4096 || head == PyList_GET_SIZE(order)) { /* drop what was walked */
        if (PyList_SetSlice(order, 0, head, NULL) < 0) { Py_DECREF(finished); return -1; }
        head = 0;
    }
    PyObject *h = PyLong_FromSsize_t(head);
    if (!h || PyList_SetItem(st, 2, h) < 0) { Py_DECREF(finished); return -1; }
    /* capture order: by number (stable, as Python's sort) */
    PyObject *sorted = PyObject_CallMethod(finished, "sort", "()");
    Py_XDECREF(sorted);
    if (!sorted) { Py_DECREF(finished); return -1; }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(finished); i++)
        if (finish(PyList_GET_ITEM(finished, i), fresh, keys, tallies, judged, races, race_ttls,
                   real0, scale, at0, keep_clients, repeats) < 0) {
            Py_DECREF(finished);
            return -1;
        }
    Py_DECREF(finished);
    return 0;
}

/* match_batch(packets, number, port, window, st, keys, tallies, judged, races, race_ttls,
 *             clock, keep_clients, counts, final) -> (fresh, fallback)
 *
 * Passive.read_pcap's matching and grouping over a batch of scan_pcap's packets: each
 * IPv4 query and its replies, as wallwatch.interop.pcap.Matcher (window) matches them
 * and Passive._queries groups them (its Python twin, run on the same file by
 * tests/test_fastwire.py). Packets whose question is not plain labels, and IPv6 ones,
 * are returned in ``fallback`` for the Python matcher. st = [open, order, head, done,
 * first_number, first_t] persists between calls; fresh holds (query list, key or None).
 * counts gains repeats at [0]. ``final``: the input ended, every open query finishes.
 */
static PyObject *match_batch(PyObject *self, PyObject *args) {
    PyObject *packets, *st, *keys, *tallies, *judged, *races, *race_ttls, *counts;
    Py_ssize_t number;
    unsigned port;
    double window, real0, scale, at0;
    int keep_clients, final;
    if (!PyArg_ParseTuple(args, "O!nIdO!O!O!OO!O!(ddd)pO!p", &PyList_Type, &packets, &number,
                          &port, &window, &PyList_Type, &st, &PyDict_Type, &keys, &PyDict_Type,
                          &tallies, &judged, &PyDict_Type, &races, &PyDict_Type, &race_ttls,
                          &real0, &scale, &at0, &keep_clients, &PyList_Type, &counts, &final))
        return NULL;
    if (PyList_GET_SIZE(st) != 6) return PyErr_Format(PyExc_ValueError, "bad matcher state");
    PyObject *open = PyList_GET_ITEM(st, 0), *order = PyList_GET_ITEM(st, 1);
    /* The cyclic collector off while the batch is made: nothing here forms a cycle, and a
       heap of open queries made each collection cost more than matching (3x measured). */
    int gc_was = PyGC_Disable();
    PyObject *fresh = PyList_New(0), *fallback = PyList_New(0);
    long long repeats = 0;
    if (!fresh || !fallback) goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(packets); i++) {
        PyObject *packet = PyList_GET_ITEM(packets, i);
        if (PyTuple_GET_SIZE(packet) != 10) { /* IPv6: the Python matcher's */
            if (PyList_Append(fallback, packet) < 0) goto fail;
            continue;
        }
        unsigned sport = (unsigned)PyLong_AsLong(PyTuple_GET_ITEM(packet, 3)),
                 dport = (unsigned)PyLong_AsLong(PyTuple_GET_ITEM(packet, 4));
        if (sport != port && dport != port) continue; /* not DNS */
        PyObject *payload = PyTuple_GET_ITEM(packet, 8);
        const unsigned char *m = (const unsigned char *)PyBytes_AS_STRING(payload);
        Py_ssize_t n = PyBytes_GET_SIZE(payload);
        unsigned txid, flags, qtype;
        char name[256];
        Py_ssize_t w;
        if (question(m, n, &txid, &flags, name, &w, &qtype) < 0) {
            if (PyList_Append(fallback, packet) < 0) goto fail;
            continue;
        }
        PyObject *t = PyTuple_GET_ITEM(packet, 0);
        if (PyLong_AsSsize_t(PyList_GET_ITEM(st, 4)) < 0) {
            PyObject *fn = PyLong_FromSsize_t(number + PyLong_AsSsize_t(PyTuple_GET_ITEM(packet, 9)));
            if (!fn || PyList_SetItem(st, 4, fn) < 0) goto fail;
            Py_INCREF(t);
            if (PyList_SetItem(st, 5, t) < 0) goto fail;
        }
        PyObject *src = PyTuple_GET_ITEM(packet, 1), *dst = PyTuple_GET_ITEM(packet, 2);
        PyObject *qname = PyUnicode_DecodeASCII(name, w, NULL);
        PyObject *num = PyLong_FromSsize_t(number + PyLong_AsSsize_t(PyTuple_GET_ITEM(packet, 9)));
        PyObject *ptxid = PyLong_FromUnsignedLong(txid), *pqtype = PyLong_FromUnsignedLong(qtype);
        int failed = !qname || !num || !ptxid || !pqtype;
        if (!failed && !(flags & 0x8000) && dport == port) { /* a query */
            PyObject *key = PyTuple_Pack(7, src, PyTuple_GET_ITEM(packet, 3), dst,
                                         PyTuple_GET_ITEM(packet, 4), ptxid, qname, pqtype);
            PyObject *q = Py_BuildValue("[OOOOOOOOOO[]]", num, t, src, PyTuple_GET_ITEM(packet, 3),
                                        dst, PyTuple_GET_ITEM(packet, 4), ptxid, qname, pqtype,
                                        PyTuple_GET_ITEM(packet, 5));
            failed = !key || !q;
            if (!failed) {
                PyObject_GC_UnTrack(q); /* strings, numbers and a list of tuples: no cycle */
                PyObject *old = PyDict_GetItemWithError(open, key);
                if (old != NULL) {
                    failed = PyList_Append(PyList_GET_ITEM(st, 3), old) < 0 ||
                             PyDict_DelItem(open, key) < 0;
                }
                failed = failed || PyErr_Occurred() || PyDict_SetItem(open, key, q) < 0 ||
                         PyList_Append(order, q) < 0;
            }
            Py_XDECREF(key);
            Py_XDECREF(q);
        } else if (!failed && sport != port) {
            /* not DNS (a query to another port): skipped before any expiry, as in Python */
            Py_DECREF(qname);
            Py_DECREF(num);
            Py_DECREF(ptxid);
            Py_DECREF(pqtype);
            continue;
        } else if (!failed) { /* a reply */
            PyObject *key = PyTuple_Pack(7, dst, PyTuple_GET_ITEM(packet, 4), src,
                                         PyTuple_GET_ITEM(packet, 3), ptxid, qname, pqtype);
            PyObject *q = key ? PyDict_GetItemWithError(open, key) : NULL;
            failed = !key || PyErr_Occurred();
            if (!failed && q == NULL) { /* its query was not captured: a record of its own */
                q = Py_BuildValue("[OOOOOOOOOO[]]", num, t, dst, PyTuple_GET_ITEM(packet, 4), src,
                                  PyTuple_GET_ITEM(packet, 3), ptxid, qname, pqtype, Py_None);
                failed = !q || PyList_Append(PyList_GET_ITEM(st, 3), q) < 0;
                Py_XDECREF(q);
            }
            PyObject *read = failed ? NULL : summarize(m, n);
            PyObject *reply = read ? Py_BuildValue("(OOOOOOOO)", t, src, PyTuple_GET_ITEM(packet, 3),
                                                   PyTuple_GET_ITEM(packet, 5),
                                                   PyTuple_GET_ITEM(packet, 6),
                                                   PyTuple_GET_ITEM(packet, 7), payload, read)
                                   : NULL;
            Py_XDECREF(read);
            failed = failed || !reply || PyList_Append(PyList_GET_ITEM(q, 10), reply) < 0;
            Py_XDECREF(reply);
            Py_XDECREF(key);
        }
        Py_XDECREF(qname);
        Py_XDECREF(num);
        Py_XDECREF(ptxid);
        Py_XDECREF(pqtype);
        if (failed) goto fail;
        double now = PyFloat_AsDouble(t);
        Py_ssize_t head = PyLong_AsSsize_t(PyList_GET_ITEM(st, 2));
        if (PyList_GET_SIZE(PyList_GET_ITEM(st, 3)) > 64 ||
            (head < PyList_GET_SIZE(order) &&
             PyFloat_AsDouble(PyList_GET_ITEM(PyList_GET_ITEM(order, head), 1)) < now - window - 1.0)) {
            if (expire(st, now - window, fresh, keys, tallies, judged, races, race_ttls, real0,
                       scale, at0, keep_clients, &repeats) < 0)
                goto fail;
        }
    }
    if (final) {
        /* every open query, as the Python matcher's flush: done first, then the rest */
        PyObject *values = PyDict_Values(open);
        if (!values) goto fail;
        int failed = PyList_SetSlice(PyList_GET_ITEM(st, 3), PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, values) < 0;
        Py_DECREF(values);
        PyDict_Clear(open);
        failed = failed || PyList_SetSlice(order, 0, PY_SSIZE_T_MAX, NULL) < 0;
        PyObject *zero = PyLong_FromLong(0);
        failed = failed || !zero || PyList_SetItem(st, 2, zero) < 0;
        if (failed || expire(st, -1e300, fresh, keys, tallies, judged, races, race_ttls, real0, scale,
                             at0, keep_clients, &repeats) < 0)
            goto fail;
    }
    PyObject *was = PyList_GetItem(counts, 0);
    PyObject *now = was ? PyLong_FromLongLong(PyLong_AsLongLong(was) + repeats) : NULL;
    if (!now || PyList_SetItem(counts, 0, now) < 0) goto fail;
    if (gc_was) PyGC_Enable();
    return Py_BuildValue("(NN)", fresh, fallback);
fail:
    if (gc_was) PyGC_Enable();
    Py_XDECREF(fresh);
    Py_XDECREF(fallback);
    return NULL;
}

static PyMethodDef methods[] = {
    {"summary", summary, METH_O, "The header, question, addresses, TTL and EDE of a DNS message."},
    {"scan_pcap", scan_pcap, METH_VARARGS, "UDP-over-IPv4 packets of classic pcap records."},
    {"dnstap_answer", dnstap_answer, METH_O, "The answer a dnstap frame holds, summarized."},
    {"dnstap_group", dnstap_group, METH_VARARGS, "Passive's grouping loop over dnstap frames."},
    {"match_batch", match_batch, METH_VARARGS, "Passive's matching loop over captured packets."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
