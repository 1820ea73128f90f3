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

/* The summary tuple of message m[0:n]; Py_None (a new reference) when declined. */
static PyObject *summarize(const unsigned char *m, Py_ssize_t n) {
    PyObject *result = NULL, *addresses = NULL, *qname = NULL;
    if (n < 12) goto decline;
    unsigned id = rd16(m), flags = rd16(m + 2), qd = rd16(m + 4), an = rd16(m + 6),
             ns = rd16(m + 8), ar = rd16(m + 10);
    if (qd < 1) goto decline;
    /* The question name: plain labels only. */
    char name[256];
    Py_ssize_t off = 12, w = 0;
    for (;;) {
        if (off >= n) goto decline;
        unsigned len = m[off++];
        if (len == 0) break;
        if (len > 63 || off + len > n || w + len + 1 > 255) goto decline;
        if (w) name[w++] = '.';
        for (unsigned i = 0; i < len; i++) {
            unsigned char c = m[off + i];
            if (c >= 'A' && c <= 'Z') c += 32;
            else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
                goto decline;
            name[w++] = (char)c;
        }
        off += len;
    }
    if (off + 4 > n) goto decline;
    unsigned qtype = rd16(m + off);
    off += 4;
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
    return Py_BuildValue("(NnN)", fresh, offset, PyBool_FromLong(control));
fail:
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
    return Py_BuildValue("(NnnN)", packets, offset, seen, PyBool_FromLong(cut));
fail:
    Py_DECREF(packets);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"summary", summary, METH_O, "The header, question, addresses, TTL and EDE of a DNS message."},
    {"scan_pcap", scan_pcap, METH_VARARGS, "UDP-over-IPv4 packets of classic pcap records."},
    {"dnstap_answer", dnstap_answer, METH_O, "The answer a dnstap frame holds, summarized."},
    {"dnstap_group", dnstap_group, METH_VARARGS, "Passive's grouping loop over dnstap frames."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
