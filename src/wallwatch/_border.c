/* wallwatch._border: the lab border's forwarding in C (recvmmsg/sendmmsg on packet sockets).

Why: the border reads every IPv4 frame crossing it, lowers its TTL by the emulated hops,
and sends it on after the path's delay; in Python that cost ~15 us a frame, three system
calls each, and held the injector to ~36k forged replies/s (docs/performance.md). Here one
object, `Router`, reads both sides' frames in batches, routes and rewrites them as
`wallwatch.lab.border.Border` does (the same drops, the same RFC 1624 checksum update),
holds the forwarded frames for the delay (a FIFO: the delay is one constant) and sends the
due ones in batches. The DNS queries among the frames are handed to Python, whose
injectors forge the replies (their bytes are built in one place, wallwatch.lab.forge);
the forged frames come back to be sent in one batch.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define FRAME 65536
#define MAXHOSTS 65536

typedef struct {
    double when;
    int side;
    int len;
    unsigned char *frame;
} held_t;

typedef struct {
    PyObject_HEAD
    int fd[2];                 /* 0: inside, 1: outside */
    unsigned char mac[2][6];
    uint32_t own[2];
    uint32_t net, mask;
    int hops;
    double delay;
    /* the next hop's MAC by destination address: open addressing, 0.0.0.0 marks a free slot */
    size_t hmask;
    uint32_t *host_ip;
    unsigned char (*host_mac)[6];
    held_t *held;              /* ring of frames waiting for their delay */
    size_t head, tail, cap;
    long long forwarded, expired, no_route, forged, queries_seen;
    unsigned char *rbuf;
    /* forged frames waiting for the next flush(): one batch per side */
    unsigned char (*forged_buf)[2][64][14 + 28 + 1500];
    int nforged[2], forged_len[2][64];
} Router;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int Router_init(Router *r, PyObject *args, PyObject *kw) {
    const char *m0, *m1, *own0, *own1;
    Py_ssize_t l0, l1, lo0, lo1;
    unsigned int net, mask;
    PyObject *macs;
    if (!PyArg_ParseTuple(args, "iiy#y#y#y#IIidO!", &r->fd[0], &r->fd[1], &m0, &l0, &m1, &l1, &own0,
                          &lo0, &own1, &lo1, &net, &mask, &r->hops, &r->delay, &PyDict_Type, &macs))
        return -1;
    if (l0 != 6 || l1 != 6 || lo0 != 4 || lo1 != 4) {
        PyErr_SetString(PyExc_ValueError, "MACs of 6 bytes and IPv4 addresses of 4");
        return -1;
    }
    memcpy(r->mac[0], m0, 6);
    memcpy(r->mac[1], m1, 6);
    memcpy(&r->own[0], own0, 4);
    memcpy(&r->own[1], own1, 4);
    r->net = net;
    r->mask = mask;
    Py_ssize_t hosts = PyDict_Size(macs);
    if (hosts > MAXHOSTS) {
        PyErr_SetString(PyExc_ValueError, "at most 65536 hosts");
        return -1;
    }
    size_t cap = 64;
    while (cap < (size_t)hosts * 4) cap *= 2;
    r->hmask = cap - 1;
    r->host_ip = calloc(cap, sizeof(uint32_t));
    r->host_mac = calloc(cap, 6);
    if (!r->host_ip || !r->host_mac) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(macs, &pos, &k, &v)) {
        if (!PyBytes_Check(k) || PyBytes_GET_SIZE(k) != 4 || !PyBytes_Check(v) || PyBytes_GET_SIZE(v) != 6) {
            PyErr_SetString(PyExc_ValueError, "macs: {4-byte address: 6-byte MAC}");
            return -1;
        }
        uint32_t ip;
        memcpy(&ip, PyBytes_AS_STRING(k), 4);
        if (!ip) continue; /* 0.0.0.0 is no host */
        size_t i = (ip * 2654435761u) & r->hmask;
        while (r->host_ip[i] && r->host_ip[i] != ip) i = (i + 1) & r->hmask;
        r->host_ip[i] = ip;
        memcpy(r->host_mac[i], PyBytes_AS_STRING(v), 6);
    }
    r->rbuf = malloc((size_t)BATCH * FRAME);
    r->forged_buf = malloc(sizeof *r->forged_buf);
    if (!r->rbuf || !r->forged_buf) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Router_dealloc(Router *r) {
    for (size_t i = r->head; i < r->tail; i++) free(r->held[i % r->cap].frame);
    free(r->held);
    free(r->rbuf);
    free(r->forged_buf);
    free(r->host_ip);
    free(r->host_mac);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int hold(Router *r, double when, int side, const unsigned char *dst_mac, const unsigned char *packet,
                int len, int ttl) {
    if (r->tail - r->head == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 4096;
        held_t *h = malloc(cap * sizeof(held_t));
        if (!h) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = r->head; i < r->tail; i++) h[i - r->head] = r->held[i % r->cap];
        free(r->held);
        r->held = h;
        r->tail -= r->head;
        r->head = 0;
        r->cap = cap;
    }
    unsigned char *f = malloc(14 + len);
    if (!f) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(f, dst_mac, 6);
    memcpy(f + 6, r->mac[side], 6);
    f[12] = 0x08;
    f[13] = 0x00;
    memcpy(f + 14, packet, len);
    /* RFC 1624 incremental update: only the TTL byte of the TTL/protocol word changed. */
    unsigned char *ip = f + 14;
    uint32_t old_word = (ip[8] << 8) | ip[9], new_word = ((unsigned)ttl << 8) | ip[9];
    uint32_t sum = (~((ip[10] << 8) | ip[11]) & 0xFFFF) + (~old_word & 0xFFFF) + new_word;
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    ip[8] = (unsigned char)ttl;
    ip[10] = (~sum >> 8) & 0xFF;
    ip[11] = ~sum & 0xFF;
    held_t *h = &r->held[r->tail++ % r->cap];
    h->when = when;
    h->side = side;
    h->len = 14 + len;
    h->frame = f;
    return 0;
}

/* One frame read on `came` (0 inside, 1 outside), routed as Border.handle routes it. */
static int handle(Router *r, int came, const unsigned char *frame, int len, double now, PyObject *queries) {
    const unsigned char *p = frame + 14;
    int plen = len - 14;
    int ihl = (p[0] & 0x0F) * 4;
    int ttl = p[8], proto = p[9];
    uint32_t dst;
    memcpy(&dst, p + 16, 4);
    if (dst == r->own[0] || dst == r->own[1]) return 0;
    int inbound = (ntohl(dst) & r->mask) == r->net;
    int out = inbound ? 0 : 1;
    if (out == came) return 0;
    if (ttl < r->hops) {
        r->expired++;
        return 0;
    }
    int tap_ttl = ttl - (r->hops - 1);
    int fragment = ((p[6] << 8) | p[7]) & 0x3FFF;
    if (proto == 17 && !fragment && plen >= ihl + 8) {
        int sport = (p[ihl] << 8) | p[ihl + 1], dport = (p[ihl + 2] << 8) | p[ihl + 3];
        if (dport == 53) {
            r->queries_seen++;
            PyObject *item = Py_BuildValue("(iy#y#iii)", came, frame + 6, (Py_ssize_t)6, p,
                                           (Py_ssize_t)plen, ihl, sport, tap_ttl);
            if (!item || PyList_Append(queries, item)) {
                Py_XDECREF(item);
                return -1;
            }
            Py_DECREF(item);
        }
    }
    int fttl = ttl - r->hops;
    if (fttl < 1) {
        r->expired++;
        return 0;
    }
    size_t h = (dst * 2654435761u) & r->hmask;
    while (r->host_ip[h] && r->host_ip[h] != dst) h = (h + 1) & r->hmask;
    if (!dst || !r->host_ip[h]) {
        r->no_route++;
        return 0;
    }
    if (hold(r, now + r->delay, out, r->host_mac[h], p, plen, fttl)) return -1;
    r->forwarded++;
    return 0;
}

/* pump() -> [(side, client MAC, IP packet, ihl, sport, tap TTL), ...]: read both sides,
   route, hold what is forwarded, and return the DNS queries for the injectors. */
static PyObject *Router_pump(Router *r, PyObject *unused) {
    PyObject *queries = PyList_New(0);
    if (!queries) return NULL;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_ll from[BATCH];
    double now = monotonic();
    for (int side = 0; side < 2; side++) {
        for (int rounds = 0; rounds < 64; rounds++) {
            for (int j = 0; j < BATCH; j++) {
                iov[j].iov_base = r->rbuf + (size_t)j * FRAME;
                iov[j].iov_len = FRAME;
                memset(&msgs[j].msg_hdr, 0, sizeof msgs[j].msg_hdr);
                msgs[j].msg_hdr.msg_iov = &iov[j];
                msgs[j].msg_hdr.msg_iovlen = 1;
                msgs[j].msg_hdr.msg_name = &from[j];
                msgs[j].msg_hdr.msg_namelen = sizeof from[j];
                from[j].sll_pkttype = PACKET_HOST; /* what a socket without link addresses gives */
            }
            int n = recvmmsg(r->fd[side], msgs, BATCH, MSG_DONTWAIT, NULL);
            if (n < 0) {
                if (errno == EINTR) continue;
                break; /* EAGAIN, or an error the next poll shows again */
            }
            for (int j = 0; j < n; j++) {
                const unsigned char *f = iov[j].iov_base;
                int len = (int)msgs[j].msg_len;
                if (from[j].sll_pkttype == PACKET_OUTGOING || len < 34 || len > FRAME ||
                    (msgs[j].msg_hdr.msg_flags & MSG_TRUNC) || memcmp(f, r->mac[side], 6))
                    continue;
                if (handle(r, side, f, len, now, queries)) {
                    Py_DECREF(queries);
                    return NULL;
                }
            }
            if (n < BATCH) break;
        }
    }
    return queries;
}

static void send_frames(int fd, struct iovec *iov, int n) {
    struct mmsghdr msgs[BATCH];
    for (int done = 0; done < n;) {
        int m = n - done < BATCH ? n - done : BATCH;
        for (int j = 0; j < m; j++) {
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].msg_hdr.msg_iov = &iov[done + j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        int s = sendmmsg(fd, msgs, m, 0);
        if (s < 0 && errno == EINTR) continue;
        done += s > 0 ? s : 1; /* a frame the kernel refuses is dropped, as the Python border drops it */
    }
}

/* flush() -> seconds to the next held frame's time, or -1: send the frames now due. */
static void send_forged_now(Router *r) {
    for (int side = 0; side < 2; side++) {
        struct iovec iov[BATCH];
        for (int j = 0; j < r->nforged[side]; j++) {
            iov[j].iov_base = (*r->forged_buf)[side][j];
            iov[j].iov_len = r->forged_len[side][j];
        }
        if (r->nforged[side]) send_frames(r->fd[side], iov, r->nforged[side]);
        r->nforged[side] = 0;
    }
}

static PyObject *Router_flush(Router *r, PyObject *unused) {
    send_forged_now(r); /* the forgeries first: they race the genuine answer */
    double now = monotonic();
    for (;;) {
        struct iovec iov[2][BATCH];
        int n[2] = {0, 0};
        size_t first = r->head;
        while (r->head < r->tail && n[0] < BATCH && n[1] < BATCH) {
            held_t *h = &r->held[r->head % r->cap];
            if (h->when > now) break;
            iov[h->side][n[h->side]].iov_base = h->frame;
            iov[h->side][n[h->side]].iov_len = h->len;
            n[h->side]++;
            r->head++;
        }
        for (int side = 0; side < 2; side++)
            if (n[side]) send_frames(r->fd[side], iov[side], n[side]);
        for (size_t i = first; i < r->head; i++) free(r->held[i % r->cap].frame);
        if (r->head == first || (n[0] < BATCH && n[1] < BATCH)) break;
    }
    if (r->head == r->tail) return PyFloat_FromDouble(-1);
    double wait = r->held[r->head % r->cap].when - now;
    return PyFloat_FromDouble(wait > 0 ? wait : 0);
}

/* The IPv4 header's checksum (RFC 1071). */
static unsigned checksum(const unsigned char *h, int n) {
    uint32_t sum = 0;
    for (int i = 0; i + 1 < n; i += 2) sum += (h[i] << 8) | h[i + 1];
    while (sum > 0xFFFF) sum = (sum & 0xFFFF) + (sum >> 16);
    return ~sum & 0xFFFF;
}

/* frame(dst_mac, src_mac, src_ip, dst_ip, sport, dport, payload, ttl, ip_id, df) -> bytes:
   an Ethernet frame holding the UDP datagram, as border.ip_packet and udp_datagram build
   its IP and UDP headers (UDP checksum 0: optional in IPv4). */
static int build_frame(unsigned char *f, const char *dmac, const char *smac, const char *src, const char *dst,
                       int sport, int dport, const char *payload, Py_ssize_t plen, int ttl, int ip_id, int df) {
    int total = 20 + 8 + (int)plen;
    memcpy(f, dmac, 6);
    memcpy(f + 6, smac, 6);
    f[12] = 0x08;
    f[13] = 0x00;
    unsigned char *ip = f + 14;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2] = total >> 8;
    ip[3] = total & 0xFF;
    ip[4] = (ip_id >> 8) & 0xFF;
    ip[5] = ip_id & 0xFF;
    ip[6] = df ? 0x40 : 0;
    ip[7] = 0;
    ip[8] = (unsigned char)ttl;
    ip[9] = 17;
    ip[10] = ip[11] = 0;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    unsigned c = checksum(ip, 20);
    ip[10] = c >> 8;
    ip[11] = c & 0xFF;
    unsigned char *u = ip + 20;
    u[0] = sport >> 8;
    u[1] = sport & 0xFF;
    u[2] = dport >> 8;
    u[3] = dport & 0xFF;
    u[4] = (8 + plen) >> 8;
    u[5] = (8 + plen) & 0xFF;
    u[6] = u[7] = 0;
    memcpy(u + 8, payload, plen);
    return 14 + total;
}

static PyObject *py_frame(PyObject *self, PyObject *args) {
    const char *dmac, *smac, *src, *dst, *payload;
    Py_ssize_t ld, ls, l1, l2, plen;
    int sport, dport, ttl, ip_id, df;
    if (!PyArg_ParseTuple(args, "y#y#y#y#iiy#iip", &dmac, &ld, &smac, &ls, &src, &l1, &dst, &l2, &sport,
                          &dport, &payload, &plen, &ttl, &ip_id, &df))
        return NULL;
    if (ld != 6 || ls != 6 || l1 != 4 || l2 != 4 || plen > 65000) {
        PyErr_SetString(PyExc_ValueError, "MACs of 6 bytes, addresses of 4, a payload under 65000");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, 14 + 28 + plen);
    if (!out) return NULL;
    build_frame((unsigned char *)PyBytes_AS_STRING(out), dmac, smac, src, dst, sport, dport, payload, plen,
                ttl, ip_id, df);
    return out;
}

/* send_forged(side, client_mac, query_src, query_dst, sport, [(payload, ttl, ip_id, df), ...]):
   the injectors' replies to one query, framed back to the querier; they leave together with
   the other queries' at the next flush() (one system call a batch, not a reply). */
static PyObject *Router_send_forged(Router *r, PyObject *args) {
    int side, sport;
    const char *cmac, *qsrc, *qdst;
    Py_ssize_t lm, l1, l2;
    PyObject *replies;
    if (!PyArg_ParseTuple(args, "iy#y#y#iO!", &side, &cmac, &lm, &qsrc, &l1, &qdst, &l2, &sport, &PyList_Type,
                          &replies))
        return NULL;
    if (side < 0 || side > 1 || lm != 6 || l1 != 4 || l2 != 4) {
        PyErr_SetString(PyExc_ValueError, "a side, a MAC of 6 bytes, addresses of 4");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(replies);
    for (Py_ssize_t k = 0; k < n; k++) {
        const char *payload;
        Py_ssize_t plen;
        int ttl, ip_id, df;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(replies, k), "y#iip", &payload, &plen, &ttl, &ip_id, &df))
            return NULL;
        if (plen > 1500 - 28) {
            PyErr_SetString(PyExc_ValueError, "a forged payload longer than the lab's MTU");
            return NULL;
        }
        if (r->nforged[side] == BATCH) send_forged_now(r);
        int j = r->nforged[side]++;
        /* the reply leaves from the queried address to the querier */
        r->forged_len[side][j] = build_frame((*r->forged_buf)[side][j], cmac, (const char *)r->mac[side], qdst,
                                             qsrc, 53, sport, payload, plen, ttl, ip_id, df);
    }
    r->forged += n;
    Py_RETURN_NONE;
}

static PyObject *Router_counts(Router *r, PyObject *unused) {
    return Py_BuildValue("{sLsLsLsLsL}", "forwarded", r->forwarded, "expired", r->expired, "no_route",
                         r->no_route, "forged", r->forged, "queries_seen", r->queries_seen);
}

static PyMethodDef Router_methods[] = {
    {"pump", (PyCFunction)Router_pump, METH_NOARGS, "Read, route and hold frames; return the DNS queries."},
    {"flush", (PyCFunction)Router_flush, METH_NOARGS, "Send the held frames now due; seconds to the next."},
    {"send_forged", (PyCFunction)Router_send_forged, METH_VARARGS, "Frame and send the forged replies to one query."},
    {"counts", (PyCFunction)Router_counts, METH_NOARGS, "The router's counters."},
    {NULL},
};

static PyTypeObject RouterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "wallwatch._border.Router",
    .tp_basicsize = sizeof(Router),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The lab border's forwarding over two packet sockets.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Router_init,
    .tp_dealloc = (destructor)Router_dealloc,
    .tp_methods = Router_methods,
};

static PyMethodDef methods[] = {
    {"frame", py_frame, METH_VARARGS, "An Ethernet frame holding an IPv4 UDP datagram."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_border", NULL, -1, methods};

PyMODINIT_FUNC PyInit__border(void) {
    if (PyType_Ready(&RouterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Router", (PyObject *)&RouterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
