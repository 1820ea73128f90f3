/* wallwatch._probeloop: the prober's UDP hot loop in C (sendmmsg/recvmmsg batches).

Why: in Python the per-query bookkeeping (IDs, matching, the collection window, expiry)
and the encoding of each record cost ~45 us a query, a quarter of what a C client does
on the same machine (docs/performance.md). Here one object, `Sweep`, owns the capturing
IPv4 sockets' traffic: it sends batches of queries, reads batches of replies with their
IP TTL and kernel time, matches them by (socket, source, port, DNS ID), keeps each query
open for the window after its first reply, retries after silence, and writes the record
of a finished query as the JSON line msgspec would write for `records.Measurement`.

What it does not do is handed back to Python, which keeps the one definition of it:
  - a finished query whose record is not plain (an ICMP error, a stream reply, a failed
    send, a reply the C reader declines: anything but a well-formed message whose names
    need no escaping and whose answers are A, AAAA, NS, CNAME, PTR or DNAME) comes back
    as its raw parts and is built by `wallwatch.probe.engine` with `parse_reply`;
  - a reply that matches no open query comes back raw (the stray budget and its record
    are Python's);
  - a truncated reply asks Python to run the TCP retry, whose reply Python hands back.
The record bytes are compared with msgspec's over live traffic and over generated
packets (tests/test_probeloop.py).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAXATT 16
#define RBATCH 32
#define RSIZE 65536
#define SBATCH 64
#define MAXFDS 64

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

/* ---------------------------------------------------------------- output buffer */

typedef struct {
    char *p;
    size_t n, cap;
    int fixed; /* p is the caller's (LOCAL_BUF): grown onto the heap, never freed */
} buf_t;

/* A buffer that starts in `size` bytes on the stack: a reply's name and answers fit,
   and each used to cost a 64 KiB malloc and free per reply. */
#define LOCAL_BUF(name, size) \
    char name##_mem[size];    \
    buf_t name = {name##_mem, 0, size, 1}

static int grow_slow(buf_t *b, size_t more) {
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->n + more) cap *= 2;
    char *p = b->fixed ? malloc(cap) : realloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->fixed && b->n) memcpy(p, b->p, b->n);
    b->fixed = 0;
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_release(buf_t *b) {
    if (!b->fixed) free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    b->fixed = 0;
}

/* Room for `more` bytes. Inlined, as put is: a record is some forty small writes, and
   calls to a grow and a memcpy for each were a fifth of the C loop's instructions. */
#define INLINE static inline __attribute__((always_inline))

INLINE int grow(buf_t *b, size_t more) {
    return __builtin_expect(b->n + more <= b->cap, 1) ? 0 : grow_slow(b, more);
}

INLINE int put(buf_t *b, const void *s, size_t n) {
    if (grow(b, n)) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

#define PUTS(b, s) put((b), (s), sizeof(s) - 1)

INLINE int put_bytes(buf_t *b, PyObject *o) { return put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o)); }

static const char DIGITS2[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal digits written straight into the buffer, counted first. */
static int put_int(buf_t *b, long long v) {
    if (grow(b, 21)) return -1;
    char *o = b->p + b->n;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    if (v < 0) *o++ = '-';
    int nd = 1;
    for (unsigned long long p10 = 10; nd < 20 && u >= p10; p10 *= 10) nd++;
    char *q = o + nd;
    while (u >= 100) { /* two digits a division */
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        *--q = DIGITS2[d + 1];
        *--q = DIGITS2[d];
    }
    if (u >= 10) {
        *--q = DIGITS2[u * 2 + 1];
        *--q = DIGITS2[u * 2];
    } else {
        *--q = (char)('0' + u);
    }
    b->n = (size_t)(o + nd - b->p);
    return 0;
}

/* A float as msgspec writes it: the shortest digits that read back (Python's repr),
   fixed notation for decimal exponents -5 to 15, else `1.5e-7` / `1e16` (no `+`, no
   leading zeros in the exponent). */
static int put_float(buf_t *b, double x) {
    char *r = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!r) return -1;
    char *e = strchr(r, 'e');
    int rc;
    if (!e) {
        rc = put(b, r, strlen(r));
    } else {
        int exp = atoi(e + 1);
        char digits[32];
        size_t nd = 0;
        const char *s = r;
        char sign = 0;
        if (*s == '-') {
            sign = 1;
            s++;
        }
        if (exp == -5) {
            for (const char *q = s; q < e && nd < sizeof digits; q++)
                if (*q != '.') digits[nd++] = *q;
            rc = (sign ? put(b, "-", 1) : 0) || PUTS(b, "0.0000") || put(b, digits, nd);
        } else {
            char tmp[16];
            int k = snprintf(tmp, sizeof tmp, "e%d", exp);
            rc = put(b, r, e - r) || put(b, tmp, k);
        }
    }
    PyMem_Free(r);
    return rc ? -1 : 0;
}

/* A time given in nanoseconds, as msgspec writes the float ns / 1e9. For 10 us <= |x| <
   2^22 s the shortest decimal that reads back to that float is the nanosecond count with
   nine decimals (trailing zeros dropped): two decimals of nine places differ by >= 1e-9,
   more than the float's spacing there, so no shorter one reads back. No division and
   no shortest-digits search, then; other values take put_float. */
static int put_ns(buf_t *b, long long ns) {
    unsigned long long u = ns < 0 ? 0ULL - (unsigned long long)ns : (unsigned long long)ns;
    if (u < 10000 || u >= 4000000000000000ULL) return put_float(b, ns / 1e9);
    if ((ns < 0 && put(b, "-", 1)) || put_int(b, (long long)(u / 1000000000ULL)) || grow(b, 10)) return -1;
    char *o = b->p + b->n;
    *o++ = '.';
    unsigned frac = (unsigned)(u % 1000000000ULL);
    o[8] = (char)('0' + frac % 10);
    frac /= 10;
    for (int i = 7; i > 0; i -= 2) { /* the other eight, two a division */
        unsigned d = frac % 100 * 2;
        frac /= 100;
        o[i] = DIGITS2[d + 1];
        o[i - 1] = DIGITS2[d];
    }
    int k = 9;
    while (k > 1 && o[k - 1] == '0') k--;
    b->n = (size_t)(o + k - b->p);
    return 0;
}

/* inet_ntop's dotted quad without its printf: a reply's source is written per reply. */
static size_t ip4_text(uint32_t ip, char *out) {
    const unsigned char *b = (const unsigned char *)&ip;
    char *o = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100) *o++ = (char)('0' + v / 100);
        if (v >= 10) *o++ = (char)('0' + v / 10 % 10);
        *o++ = (char)('0' + v % 10);
        if (i < 3) *o++ = '.';
    }
    *o = 0;
    return o - out;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int put_b64(buf_t *b, const unsigned char *s, size_t n) {
    if (grow(b, (n + 2) / 3 * 4)) return -1;
    char *o = b->p + b->n;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (s[i] << 16) | (s[i + 1] << 8) | s[i + 2];
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = s[i] << 16;
        if (i + 1 < n) v |= s[i + 1] << 8;
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->n = o - b->p;
    return 0;
}

/* ---------------------------------------------------------------- the reply reader */

/* Bytes a name's text holds unescaped, as wallwatch.wire renders names (and which JSON
   needs not escape): printable ASCII but `"().;\@$`. */
static unsigned char PLAIN[256];

static void init_plain(void) {
    for (int c = 0x21; c < 0x7F; c++) PLAIN[c] = strchr("\"().;\\@$", c) == NULL;
}

/* Read the name at *off: its text (when `text` is given) and the offset after it.
   Returns 0, or -1 for anything wire.py would not render plainly or would call
   malformed (the caller then declines the whole message). `steps` is the message's
   work budget, spent as wire.py spends it or faster (no memo here), so a name this
   reader accepts is one wire.py accepts too. */
static int read_name(const unsigned char *m, size_t n, size_t *off, buf_t *text, long *steps,
                     int need_plain) {
    size_t o = *off, end = 0, limit = *off, length = 1;
    int jumped = 0, labels = 0;
    for (;;) {
        if (o >= n) return -1;
        unsigned c = m[o];
        if (c == 0) {
            o++;
            break;
        }
        if (--*steps < 0) return -1;
        if ((c & 0xC0) == 0xC0) {
            if (o + 1 >= n) return -1;
            size_t target = ((c & 0x3F) << 8) | m[o + 1];
            if (target >= limit) return -1;
            if (!jumped) end = o + 2;
            jumped = 1;
            limit = o = target;
            continue;
        }
        if (c & 0xC0) return -1;
        if (o + 1 + c > n) return -1;
        length += c + 1;
        if (length > 255) return -1;
        if (need_plain)
            for (size_t i = o + 1; i < o + 1 + c; i++)
                if (!PLAIN[m[i]]) return -1;
        if (text && put(text, m + o + 1, c)) return -2;
        if (text && PUTS(text, ".")) return -2;
        labels++;
        o += 1 + c;
    }
    if (need_plain && labels == 0) return -1; /* the root renders as ".", not joined */
    *off = jumped ? end : o;
    return 0;
}

typedef struct {
    PyObject *udp;        /* "udp" as JSON */
    PyObject *types[6];   /* answer_type JSON of A, AAAA, NS, CNAME, PTR, DNAME */
} names_t;

static int type_slot(unsigned t) {
    switch (t) {
    case 1: return 0;
    case 28: return 1;
    case 2: return 2;
    case 5: return 3;
    case 12: return 4;
    case 39: return 5;
    }
    return -1;
}

/* One reply as the JSON of records.Response, or 1 (declined: Python builds it) or -1
   (error set). `ancount_out` and `rcode_out` feed the measurement's failure. */
static int encode_response(buf_t *b, const names_t *nm, const unsigned char *m, size_t n,
                           const char *src, int sport, int ttl, long long t_ns, long long rtt_ns, int attempt,
                           int qtype_want, const unsigned char *qwire, size_t qwire_n,
                           int *rcode_out, int *ancount_out) {
    if (n < 12) return 1;
    unsigned id = (m[0] << 8) | m[1], flags = (m[2] << 8) | m[3];
    unsigned qd = (m[4] << 8) | m[5], an = (m[6] << 8) | m[7], ns = (m[8] << 8) | m[9],
             ar = (m[10] << 8) | m[11];
    if (qd != 1) return 1;
    long steps = 64 + (long)n;
    size_t start = b->n, off = 12;
    /* The question, written where the record wants it after the header fields. */
    LOCAL_BUF(qname, 272);
    int rc = 1;
    if (read_name(m, n, &off, &qname, &steps, 1) || off + 4 > n) goto out;
    size_t qname_end = off;
    /* a compressed question name is matched as wire.py matches it: by its bytes */
    int mismatch = 0;
    unsigned qtype = (m[off] << 8) | m[off + 1];
    if ((int)qtype != qtype_want || qname_end - 12 != qwire_n) {
        mismatch = 1;
    } else {
        for (size_t i = 0; i < qwire_n; i++) {
            unsigned char c = m[12 + i];
            if (c >= 'A' && c <= 'Z') c += 32;
            if (c != qwire[i]) {
                mismatch = 1;
                break;
            }
        }
    }
    off += 4;
    int rcode = flags & 0xF, edns = 0;
    LOCAL_BUF(answers, 1024);
    unsigned total = an + ns + ar;
    for (unsigned i = 0; i < total; i++) {
        int in_answer = i < an;
        if (in_answer && answers.n && PUTS(&answers, ",")) goto err;
        if (in_answer) {
            if (PUTS(&answers, "{\"answer_type\":")) goto err;
        }
        /* owner: the usual pointer to the question name, or read */
        LOCAL_BUF(owner, 272);
        if (off + 2 <= n && m[off] == 0xC0 && m[off + 1] == 0x0C) {
            off += 2;
            if (put(&owner, qname.p, qname.n)) goto err_owner;
        } else {
            int r = read_name(m, n, &off, in_answer ? &owner : NULL, &steps, in_answer);
            if (r == -2) goto err_owner;
            if (r) {
                buf_release(&owner);
                goto decline_answers;
            }
        }
        if (off + 10 > n) {
            buf_release(&owner);
            goto decline_answers;
        }
        unsigned rtype = (m[off] << 8) | m[off + 1];
        unsigned rclass = (m[off + 2] << 8) | m[off + 3];
        uint32_t rttl = ((uint32_t)m[off + 4] << 24) | (m[off + 5] << 16) | (m[off + 6] << 8) | m[off + 7];
        size_t rdlen = (m[off + 8] << 8) | m[off + 9];
        off += 10;
        if (off + rdlen > n) {
            buf_release(&owner);
            goto decline_answers;
        }
        if (in_answer) {
            int slot = type_slot(rtype);
            if (slot < 0) {
                buf_release(&owner);
                goto decline_answers;
            }
            if (put_bytes(&answers, nm->types[slot]) || PUTS(&answers, ",\"ttl\":") ||
                put_int(&answers, rttl) || PUTS(&answers, ",\"name\":\"") ||
                put(&answers, owner.p, owner.n))
                goto err_owner;
            buf_release(&owner);
            char addr[INET6_ADDRSTRLEN];
            if (rtype == 1 || rtype == 28) {
                /* Outside the Internet class the data is no address (wire.CLASS_IN). */
                if (rdlen != (rtype == 1 ? 4u : 16u) || rclass != 1) goto decline_answers;
                size_t alen;
                if (rtype == 1) {
                    uint32_t a4;
                    memcpy(&a4, m + off, 4);
                    alen = ip4_text(a4, addr);
                } else {
                    inet_ntop(AF_INET6, m + off, addr, sizeof addr);
                    alen = strlen(addr);
                }
                if ((rtype == 1 ? PUTS(&answers, "\",\"ipv4\":\"") : PUTS(&answers, "\",\"ipv6\":\"")) ||
                    put(&answers, addr, alen) || PUTS(&answers, "\"}"))
                    goto err;
            } else {
                size_t o2 = off;
                if (PUTS(&answers, "\",\"hostname\":\"")) goto err;
                int r = read_name(m, off + rdlen, &o2, &answers, &steps, 1);
                if (r == -2) goto err;
                if (r || o2 != off + rdlen) goto decline_answers;
                if (PUTS(&answers, "\"}")) goto err;
            }
        } else {
            buf_release(&owner);
            if (rtype == 41 && i >= an + ns) {
                edns = 1;
                rcode |= (rttl >> 24) << 4;
            }
        }
        off += rdlen;
        continue;
    err_owner:
        buf_release(&owner);
        goto err;
    }
    if (off != n) goto decline_answers;
    if (PUTS(b, "{\"t\":") || put_ns(b, t_ns) || PUTS(b, ",\"rtt\":") ||
        put_ns(b, rtt_ns) || PUTS(b, ",\"src\":\"") || put(b, src, strlen(src)) ||
        PUTS(b, "\",\"sport\":") || put_int(b, sport) || PUTS(b, ",\"ip_ttl\":"))
        goto err;
    if ((ttl >= 0 ? put_int(b, ttl) : PUTS(b, "null")) || PUTS(b, ",\"raw_response\":\"") ||
        put_b64(b, m, n) || PUTS(b, "\",\"engine\":") || put_bytes(b, nm->udp) ||
        PUTS(b, ",\"attempt\":") || put_int(b, attempt) ||
        PUTS(b, ",\"failure\":null,\"transaction_id\":") || put_int(b, id) ||
        PUTS(b, ",\"flags\":") || put_int(b, flags) || PUTS(b, ",\"rcode\":") ||
        put_int(b, rcode) || PUTS(b, ",\"qname\":\"") || put(b, qname.p, qname.n) ||
        PUTS(b, "\",\"qtype\":") || put_int(b, qtype) ||
        (edns ? PUTS(b, ",\"edns\":true") : PUTS(b, ",\"edns\":false")) ||
        PUTS(b, ",\"ancount\":") || put_int(b, an) || PUTS(b, ",\"nscount\":") ||
        put_int(b, ns) || PUTS(b, ",\"arcount\":") || put_int(b, ar) ||
        PUTS(b, ",\"answers\":[") || put(b, answers.p, answers.n) ||
        (mismatch ? PUTS(b, "],\"question_mismatch\":true") : PUTS(b, "],\"question_mismatch\":false")) ||
        PUTS(b, ",\"ip_id\":null,\"df\":null}"))
        goto err;
    *rcode_out = rcode;
    *ancount_out = an;
    rc = 0;
    buf_release(&answers);
    goto out;
decline_answers:
    buf_release(&answers);
    b->n = start;
    rc = 1;
    goto out;
err:
    buf_release(&answers);
    b->n = start;
    rc = -1;
out:
    buf_release(&qname);
    return rc;
}

/* ---------------------------------------------------------------- tables */

/* Open addressing, linear probing, deletion by backward shift. A key is the reply's
   (source address, source port, DNS ID) on one socket (`chan`). */
typedef struct {
    uint64_t key;
    int32_t chan, used;
    int64_t a, b;
} ent_t;

typedef struct {
    ent_t *e;
    size_t mask, n;
} tab_t;

static size_t home(uint64_t k, int chan, size_t mask) {
    k ^= (uint64_t)(chan + 1) * 0x9E3779B97F4A7C15ULL;
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k & mask;
}

static int tab_init(tab_t *t, size_t cap) {
    t->e = calloc(cap, sizeof(ent_t));
    if (!t->e) {
        PyErr_NoMemory();
        return -1;
    }
    t->mask = cap - 1;
    t->n = 0;
    return 0;
}

static ent_t *tab_find(tab_t *t, uint64_t key, int chan) {
    size_t i = home(key, chan, t->mask);
    for (;;) {
        ent_t *e = &t->e[i];
        if (!e->used) return NULL;
        if (e->key == key && e->chan == chan) return e;
        i = (i + 1) & t->mask;
    }
}

/* Insert or overwrite; with only_new, an existing key is left alone and 1 returned. */
static int tab_set(tab_t *t, uint64_t key, int chan, int64_t a, int64_t b, int only_new) {
    if ((t->n + 1) * 2 > t->mask + 1) {
        tab_t bigger;
        if (tab_init(&bigger, (t->mask + 1) * 2)) return -1;
        for (size_t i = 0; i <= t->mask; i++)
            if (t->e[i].used) tab_set(&bigger, t->e[i].key, t->e[i].chan, t->e[i].a, t->e[i].b, 0);
        free(t->e);
        *t = bigger;
    }
    size_t i = home(key, chan, t->mask);
    for (;;) {
        ent_t *e = &t->e[i];
        if (!e->used || (e->key == key && e->chan == chan)) {
            if (e->used && only_new) return 1;
            if (!e->used) t->n++;
            e->key = key;
            e->chan = chan;
            e->used = 1;
            e->a = a;
            e->b = b;
            return 0;
        }
        i = (i + 1) & t->mask;
    }
}

static int tab_put(tab_t *t, uint64_t key, int chan, int64_t a, int64_t b) {
    return tab_set(t, key, chan, a, b, 0);
}

static void tab_del(tab_t *t, ent_t *gone) {
    size_t i = gone - t->e, j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        if (!t->e[j].used) break;
        size_t k = home(t->e[j].key, t->e[j].chan, t->mask);
        if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) {
            t->e[i] = t->e[j];
            i = j;
        }
    }
    t->e[i].used = 0;
    t->n--;
}

static void tab_clear(tab_t *t) {
    if (t->n) memset(t->e, 0, (t->mask + 1) * sizeof(ent_t));
    t->n = 0;
}

/* FIFO of deadlines: the timeout and the window are the same for every query, so the
   order of the deadlines is the order of their pushes. */
typedef struct {
    double when;
    int32_t slot, attempt;
    uint32_t gen;
} qent_t;

typedef struct {
    qent_t *q;
    size_t head, tail, cap; /* cap a power of two; tail - head entries */
} ring_t;

static int ring_push(ring_t *r, double when, int slot, int attempt, uint32_t gen) {
    if (r->tail - r->head == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        qent_t *q = malloc(cap * sizeof(qent_t));
        if (!q) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = r->head; i < r->tail; i++) q[i - r->head] = r->q[i & (r->cap - 1)];
        free(r->q);
        r->q = q;
        r->tail -= r->head;
        r->head = 0;
        r->cap = cap;
    }
    qent_t *e = &r->q[r->tail++ & (r->cap - 1)];
    e->when = when;
    e->slot = slot;
    e->attempt = attempt;
    e->gen = gen;
    return 0;
}

static qent_t *ring_head(ring_t *r) { return r->head == r->tail ? NULL : &r->q[r->head & (r->cap - 1)]; }

/* ---------------------------------------------------------------- slots */

typedef struct {
    int64_t stamp;
    uint32_t src;
    int sport, ttl, attempt;
    size_t len;
    unsigned char *data;
} resp_t;

typedef struct {
    int64_t stamp;
    char offender[INET6_ADDRSTRLEN];
    int type, code, attempt;
} icmp_t;

#define QMAX 300

typedef struct {
    PyObject *query, *qfrag, *infrag;
    int qlen, namelen; /* the query after its ID is qbuf; its name starts at qbuf + 10 */
    int qtype, channel, natt, attempt, nresp, cresp, nicmp, cicmp, failure;
    uint32_t ip, gen;
    uint16_t port;
    uint16_t txid[MAXATT];
    int64_t sent_ns[MAXATT];
    int64_t t0_ns;
    resp_t *resp;
    resp_t inl; /* the first reply, held in the slot with its bytes when they fit */
    icmp_t *icmp;
    PyObject *extra;
    uint8_t used, answered, window_over, stream_pending, closed, tcp_got;
    /* not cleared when the slot is reused: written before they are read */
    unsigned char qbuf[QMAX];
    unsigned char idata[512];
} slot_t;

enum { FAIL_NONE, FAIL_HOST_UNREACHABLE, FAIL_UNKNOWN };

typedef struct {
    PyObject_HEAD
    int nfd, rr, retries, tcp_fallback;
    int fds[MAXFDS];
    int ports[MAXFDS];
    long long drops[MAXFDS];
    double window, timeout, rotated;
    int64_t start_ns;
    unsigned long long uid_counter, rng;
    PyObject *uid_prefix, *head, *mid, *k_ipttl, *k_input, *k_tail;
    PyObject *f_timeout, *f_noanswer, *f_nx, *f_refused, *f_servfail, *f_misbehaving;
    names_t nm;
    slot_t **pages; /* slots in pages of PAGE: their addresses never move */
    int nslots, *freelist, nfree, live;
    /* per slot, its generation while it awaits a first reply, else 0: expiry skips the
       answered without touching their (long since cold) slots */
    uint32_t *await_gen;
    tab_t pending, recent, recent_old;
    ring_t awaiting, collecting;
    long long outstanding, sent, responses, measurements, timeouts, retried, icmp, native_lines;
    buf_t out, tmp;
    long long out_lines;
    PyObject *fallbacks, *strays, *tc;
    unsigned char *rbuf;
    /* what start() needs to take a Query: see Sweep_start */
    PyObject *udp_engine, *kinds, *targets, *qtypes, *describe_target, *describe_qtype, *json;
    PyObject *last_target, *last_tinfo, *null;
    /* last_tinfo's fields, parsed once per target rather than per query (last_frag is
       borrowed: last_tinfo holds it) */
    PyObject *last_frag;
    uint32_t last_ip;
    int last_port;
    unsigned char qhead[10], opt[16];
    int optlen;
} Sweep;

static int64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint16_t random16(Sweep *s) {
    uint64_t x = s->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return (uint16_t)((x * 0x2545F4914F6CDD1DULL) >> 48);
}

static uint64_t key_of(uint32_t ip, int port, unsigned txid) {
    return ((uint64_t)ip << 32) | ((uint64_t)port << 16) | txid;
}

#define PAGE 1024
#define SLOT(s, i) (&(s)->pages[(i) / PAGE][(i) % PAGE])

static int slot_new(Sweep *s) {
    if (!s->nfree) {
        int pages = s->nslots / PAGE;
        slot_t **more = realloc(s->pages, (pages + 1) * sizeof(slot_t *));
        if (more) s->pages = more;
        int *freelist = realloc(s->freelist, (s->nslots + PAGE) * sizeof(int));
        if (freelist) s->freelist = freelist;
        uint32_t *await_gen = realloc(s->await_gen, (s->nslots + PAGE) * sizeof(uint32_t));
        if (await_gen) {
            s->await_gen = await_gen;
            memset(await_gen + s->nslots, 0, PAGE * sizeof(uint32_t));
        }
        slot_t *page = more && freelist && await_gen ? calloc(PAGE, sizeof(slot_t)) : NULL;
        if (!page) {
            PyErr_NoMemory();
            return -1;
        }
        s->pages[pages] = page;
        for (int i = s->nslots + PAGE - 1; i >= s->nslots; i--) s->freelist[s->nfree++] = i;
        s->nslots += PAGE;
    }
    int i = s->freelist[--s->nfree];
    slot_t *sl = SLOT(s, i);
    uint32_t gen = sl->gen + 1;
    memset(sl, 0, offsetof(slot_t, qbuf));
    sl->gen = gen;
    sl->used = 1;
    sl->attempt = -1;
    s->live++;
    return i;
}

static void slot_free(Sweep *s, int i) {
    slot_t *sl = SLOT(s, i);
    for (int k = 0; k < sl->nresp; k++)
        if (sl->resp[k].data != sl->idata) free(sl->resp[k].data);
    if (sl->resp != &sl->inl) free(sl->resp);
    free(sl->icmp);
    Py_CLEAR(sl->query);
    Py_CLEAR(sl->qfrag);
    Py_CLEAR(sl->infrag);
    Py_CLEAR(sl->extra);
    sl->resp = NULL;
    sl->icmp = NULL;
    sl->used = 0;
    s->await_gen[i] = 0;
    s->live--;
    s->freelist[s->nfree++] = i;
}

static PyObject *uid_text(Sweep *s, unsigned long long counter) {
    char hex[24];
    snprintf(hex, sizeof hex, "%08llx", counter);
    return PyUnicode_FromFormat("%U%s", s->uid_prefix, hex);
}

static PyObject *ip_str(uint32_t ip) {
    char t[INET_ADDRSTRLEN];
    return PyUnicode_FromStringAndSize(t, ip4_text(ip, t));
}

/* ---------------------------------------------------------------- closing a query */

static PyObject *fallback_tuple(Sweep *s, slot_t *sl, PyObject *uid, int64_t t_ns) {
    PyObject *txids = PyTuple_New(sl->natt), *sent = PyTuple_New(sl->natt);
    PyObject *resp = PyList_New(sl->nresp), *icmp = PyList_New(sl->nicmp);
    if (!txids || !sent || !resp || !icmp) goto fail;
    for (int k = 0; k < sl->natt; k++) {
        PyTuple_SET_ITEM(txids, k, PyLong_FromLong(sl->txid[k]));
        PyTuple_SET_ITEM(sent, k, PyLong_FromLongLong(sl->sent_ns[k]));
    }
    for (int k = 0; k < sl->nresp; k++) {
        resp_t *r = &sl->resp[k];
        PyObject *src = ip_str(r->src);
        PyObject *ttl = r->ttl >= 0 ? PyLong_FromLong(r->ttl) : Py_NewRef(Py_None);
        PyObject *item = src && ttl ? Py_BuildValue("(y#NiNLi)", r->data, (Py_ssize_t)r->len, src,
                                                    r->sport, ttl, (long long)r->stamp, r->attempt)
                                    : NULL;
        if (!item) {
            Py_XDECREF(src);
            Py_XDECREF(ttl);
            goto fail;
        }
        PyList_SET_ITEM(resp, k, item);
    }
    for (int k = 0; k < sl->nicmp; k++) {
        icmp_t *e = &sl->icmp[k];
        PyObject *item = Py_BuildValue("(Lsiii)", (long long)e->stamp, e->offender, e->type,
                                       e->code, e->attempt);
        if (!item) goto fail;
        PyList_SET_ITEM(icmp, k, item);
    }
    return Py_BuildValue("(OONNNNOddii)", sl->query, uid, txids, sent, resp, icmp,
                         sl->extra ? sl->extra : Py_None, sl->t0_ns / 1e9, t_ns / 1e9, s->ports[sl->channel],
                         sl->failure);
fail:
    Py_XDECREF(txids);
    Py_XDECREF(sent);
    Py_XDECREF(resp);
    Py_XDECREF(icmp);
    return NULL;
}

/* The record of a plain query into s->out; 1 when Python must build it. */
static int encode_measurement(Sweep *s, slot_t *sl, unsigned long long counter, int64_t t_ns) {
    buf_t *tmp = &s->tmp;
    tmp->n = 0;
    int first_rcode = -1, first_an = 0;
    for (int k = 0; k < sl->nresp; k++) {
        resp_t *r = &sl->resp[k];
        char src[INET_ADDRSTRLEN];
        ip4_text(r->src, src);
        if (k && PUTS(tmp, ",")) return -1;
        int rcode = 0, an = 0;
        int rc = encode_response(tmp, &s->nm, r->data, r->len, src, r->sport, r->ttl,
                                 r->stamp - s->start_ns, r->stamp - sl->sent_ns[r->attempt], r->attempt,
                                 sl->qtype, sl->qbuf + 10, sl->namelen, &rcode, &an);
        if (rc) return rc;
        if (k == 0) {
            first_rcode = rcode;
            first_an = an;
        }
    }
    PyObject *failure;
    if (first_rcode < 0) failure = s->f_timeout;
    else if (first_rcode == 3) failure = s->f_nx;
    else if (first_rcode == 5) failure = s->f_refused;
    else if (first_rcode == 2) failure = s->f_servfail;
    else if (first_rcode) failure = s->f_misbehaving;
    else if (!first_an) failure = s->f_noanswer;
    else failure = Py_None;
    buf_t *b = &s->out;
    char uid[24];
    int k = 0;
    int top = 28; /* %08llx: eight digits at least */
    while (top < 60 && counter >> (top + 4)) top += 4;
    for (int shift = top; shift >= 0; shift -= 4) uid[k++] = "0123456789abcdef"[(counter >> shift) & 15];
    if (put_bytes(b, s->head) || put(b, uid, k) || put_bytes(b, s->mid) || put_bytes(b, sl->qfrag) ||
        PUTS(b, ",\"transaction_id\":") || put_int(b, sl->natt ? sl->txid[0] : 0) ||
        PUTS(b, ",\"source_port\":") || put_int(b, s->ports[sl->channel]) || PUTS(b, ",\"t0\":") ||
        put_ns(b, sl->t0_ns) || PUTS(b, ",\"t\":") || put_ns(b, t_ns) || PUTS(b, ",\"failure\":") ||
        (failure == Py_None ? PUTS(b, "null") : put_bytes(b, failure)) || put_bytes(b, s->k_ipttl) ||
        put_int(b, sl->natt) || put_bytes(b, s->k_input) || put_bytes(b, sl->infrag) ||
        PUTS(b, ",\"responses\":[") || put(b, tmp->p, tmp->n) || PUTS(b, "]") ||
        put_bytes(b, s->k_tail))
        return -1;
    s->out_lines++;
    s->native_lines++;
    return 0;
}

static int finish(Sweep *s, int i) {
    slot_t *sl = SLOT(s, i);
    if (sl->closed) return 0;
    sl->closed = 1;
    unsigned long long counter = ++s->uid_counter;
    for (int k = 0; k < sl->natt; k++) {
        ent_t *e = tab_find(&s->pending, key_of(sl->ip, sl->port, sl->txid[k]), sl->channel);
        if (e && e->a == i) {
            tab_del(&s->pending, e);
            if (tab_put(&s->recent, key_of(sl->ip, sl->port, sl->txid[k]), sl->channel,
                        (int64_t)counter, sl->sent_ns[k]))
                return -1;
        }
    }
    int64_t t_ns = realtime_ns() - s->start_ns;
    int rc = 1;
    if (!sl->failure && !sl->nicmp && !sl->extra) {
        size_t mark = s->out.n;
        rc = encode_measurement(s, sl, counter, t_ns);
        if (rc) s->out.n = mark;
        if (rc < 0) return -1;
    }
    if (rc) {
        PyObject *uid = uid_text(s, counter);
        PyObject *item = uid ? fallback_tuple(s, sl, uid, t_ns) : NULL;
        Py_XDECREF(uid);
        if (!item || PyList_Append(s->fallbacks, item)) {
            Py_XDECREF(item);
            return -1;
        }
        Py_DECREF(item);
    }
    s->measurements++;
    slot_free(s, i);
    return 0;
}

/* ---------------------------------------------------------------- sending */

/* Give slot i a fresh ID and register it (the old IDs stay valid: a late reply to an
   earlier attempt still counts). */
static int arm(Sweep *s, int i, int64_t now_ns, double now) {
    slot_t *sl = SLOT(s, i);
    unsigned txid;
    int taken;
    do { /* an ID no open query to that server on that socket holds */
        txid = random16(s);
        taken = tab_set(&s->pending, key_of(sl->ip, sl->port, txid), sl->channel, i, 0, 1);
        if (taken < 0) return -1;
    } while (taken);
    s->await_gen[i] = sl->gen;
    sl->attempt++;
    sl->txid[sl->natt] = txid;
    sl->sent_ns[sl->natt] = now_ns;
    sl->natt++;
    return ring_push(&s->awaiting, now + s->timeout, i, sl->attempt, sl->gen);
}

static void read_errors(Sweep *s, int ch);

/* Send the armed slots `idx` (all on channel ch) in sendmmsg batches. A send that fails
   closes its query with the failure, as the Python loop does. */
static int send_batch(Sweep *s, int ch, const int *idx, int k) {
    struct mmsghdr msgs[SBATCH];
    struct iovec iov[SBATCH][2];
    struct sockaddr_in dst[SBATCH];
    unsigned char ids[SBATCH][2];
    int done = 0, refused = 0;
    while (done < k) {
        int m = k - done < SBATCH ? k - done : SBATCH;
        for (int j = 0; j < m; j++) {
            slot_t *sl = SLOT(s, idx[done + j]);
            uint16_t txid = sl->txid[sl->natt - 1];
            ids[j][0] = txid >> 8;
            ids[j][1] = txid & 0xFF;
            iov[j][0].iov_base = ids[j];
            iov[j][0].iov_len = 2;
            iov[j][1].iov_base = sl->qbuf;
            iov[j][1].iov_len = sl->qlen;
            memset(&dst[j], 0, sizeof dst[j]);
            dst[j].sin_family = AF_INET;
            dst[j].sin_addr.s_addr = sl->ip;
            dst[j].sin_port = htons(sl->port);
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].msg_hdr.msg_iov = iov[j];
            msgs[j].msg_hdr.msg_iovlen = 2;
            msgs[j].msg_hdr.msg_name = &dst[j];
            msgs[j].msg_hdr.msg_namelen = sizeof dst[j];
        }
        int r = sendmmsg(s->fds[ch], msgs, m, 0);
        if (r > 0) {
            done += r;
            s->sent += r;
            refused = 0;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == ECONNREFUSED && refused++ < 4) {
            /* A queued ICMP error of an earlier query surfaced on this send: read it
               (attributing it to that query) and send again. */
            read_errors(s, ch);
            continue;
        }
        int i = idx[done++];
        slot_t *sl = SLOT(s, i);
        sl->failure = (errno == ENETUNREACH || errno == EHOSTUNREACH) ? FAIL_HOST_UNREACHABLE : FAIL_UNKNOWN;
        s->outstanding--;
        if (finish(s, i)) return -1;
    }
    return 0;
}

static int send_slots(Sweep *s, int *idx, int k) {
    /* grouped by channel: at most MAXFDS groups */
    int *order = malloc(sizeof(int) * (k ? k : 1));
    if (!order) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = 0;
    for (int ch = 0; ch < s->nfd && !rc; ch++) {
        int m = 0;
        for (int j = 0; j < k; j++)
            if (SLOT(s, idx[j])->channel == ch) order[m++] = idx[j];
        if (m) rc = send_batch(s, ch, order, m);
    }
    free(order);
    return rc;
}

/* ---------------------------------------------------------------- receiving */

static int add_response(Sweep *s, int i, const unsigned char *data, size_t len,
                        uint32_t src, int sport, int ttl, int64_t stamp, int attempt) {
    slot_t *sl = SLOT(s, i);
    unsigned char *copy;
    if (sl->cresp == 0 && len <= sizeof sl->idata) {
        sl->resp = &sl->inl;
        sl->cresp = 1;
        copy = sl->idata;
    } else {
        if (sl->nresp == sl->cresp) {
            int cap = sl->cresp ? sl->cresp * 2 : 2;
            resp_t *r = malloc(cap * sizeof(resp_t));
            if (!r) {
                PyErr_NoMemory();
                return -1;
            }
            if (sl->nresp) memcpy(r, sl->resp, sl->nresp * sizeof(resp_t));
            if (sl->resp != &sl->inl) free(sl->resp);
            sl->resp = r;
            sl->cresp = cap;
        }
        copy = malloc(len ? len : 1);
        if (!copy) {
            PyErr_NoMemory();
            return -1;
        }
    }
    memcpy(copy, data, len);
    resp_t *r = &sl->resp[sl->nresp++];
    r->stamp = stamp;
    r->src = src;
    r->sport = sport;
    r->ttl = ttl;
    r->attempt = attempt;
    r->len = len;
    r->data = copy;
    return 0;
}

static int on_datagram(Sweep *s, int ch, const unsigned char *data, size_t len,
                       const struct sockaddr_in *from, int ttl, int64_t stamp, double now) {
    s->responses++;
    uint32_t src = from->sin_addr.s_addr;
    int sport = ntohs(from->sin_port);
    int txid = len >= 12 ? (data[0] << 8) | data[1] : -1;
    ent_t *e = txid >= 0 ? tab_find(&s->pending, key_of(src, sport, txid), ch) : NULL;
    if (!e) {
        /* unmatched: Python applies the stray budget and writes the record */
        PyObject *uid = Py_NewRef(Py_None);
        long long sent = 0;
        ent_t *known = txid < 0 ? NULL : tab_find(&s->recent, key_of(src, sport, txid), ch);
        if (!known && txid >= 0) known = tab_find(&s->recent_old, key_of(src, sport, txid), ch);
        if (known) {
            Py_DECREF(uid);
            uid = uid_text(s, (unsigned long long)known->a);
            if (!uid) return -1;
            sent = known->b;
        }
        PyObject *ip = ip_str(src);
        PyObject *ttlo = ttl >= 0 ? PyLong_FromLong(ttl) : Py_NewRef(Py_None);
        PyObject *item = ip && ttlo ? Py_BuildValue("(iy#NiNLNL)", s->ports[ch], data, (Py_ssize_t)len,
                                                    ip, sport, ttlo, (long long)stamp, uid, sent)
                                    : NULL;
        if (!item) {
            Py_XDECREF(ip);
            Py_XDECREF(ttlo);
            Py_DECREF(uid);
            return -1;
        }
        int rc = PyList_Append(s->strays, item);
        Py_DECREF(item);
        return rc;
    }
    int i = (int)e->a;
    slot_t *sl = SLOT(s, i);
    if (!stamp) stamp = realtime_ns();
    int attempt = 0;
    while (attempt < sl->natt && sl->txid[attempt] != txid) attempt++;
    if (add_response(s, i, data, len, src, sport, ttl, stamp, attempt)) return -1;
    if (!sl->answered) {
        sl->answered = 1;
        s->await_gen[i] = 0;
        s->outstanding--;
        if (ring_push(&s->collecting, now + s->window, i, 0, sl->gen)) return -1;
    }
    unsigned flags = (data[2] << 8) | data[3];
    if ((flags & 0x0200) && s->tcp_fallback && !sl->stream_pending && !sl->tcp_got && sl->natt < MAXATT) {
        /* truncated: Python runs the TCP retry and hands its reply back */
        unsigned tx = random16(s);
        int64_t now_ns = realtime_ns();
        sl->txid[sl->natt] = tx;
        sl->sent_ns[sl->natt] = now_ns;
        sl->natt++;
        sl->stream_pending = 1;
        s->sent++;
        PyObject *dest = ip_str(sl->ip);
        PyObject *item = dest ? Py_BuildValue("(iIiiLNiy#i)", i, sl->gen, tx, sl->natt - 1,
                                              (long long)now_ns, dest, sl->port, sl->qbuf,
                                              (Py_ssize_t)sl->qlen, sl->qtype)
                              : NULL;
        if (!item) {
            Py_XDECREF(dest);
            return -1;
        }
        int rc = PyList_Append(s->tc, item);
        Py_DECREF(item);
        if (rc) return -1;
    }
    return 0;
}

static void read_errors(Sweep *s, int ch) {
    unsigned char data[512];
    char ctl[512];
    for (int guard = 0; guard < 4096; guard++) {
        struct sockaddr_in dest;
        struct iovec iov = {data, sizeof data};
        struct msghdr msg = {0};
        msg.msg_name = &dest;
        msg.msg_namelen = sizeof dest;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl;
        msg.msg_controllen = sizeof ctl;
        ssize_t n = recvmsg(s->fds[ch], &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        int64_t stamp = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                stamp = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
            } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) {
                struct sock_extended_err ee;
                memcpy(&ee, CMSG_DATA(c), sizeof ee);
                if (ee.ee_origin != SO_EE_ORIGIN_ICMP && ee.ee_origin != SO_EE_ORIGIN_ICMP6) continue;
                s->icmp++;
                if (n < 2) continue;
                char offender[INET6_ADDRSTRLEN] = "";
                const unsigned char *raw = CMSG_DATA(c) + sizeof ee;
                size_t have = c->cmsg_len - CMSG_LEN(sizeof ee);
                if (c->cmsg_len >= CMSG_LEN(sizeof ee) + 2) {
                    sa_family_t fam;
                    memcpy(&fam, raw, sizeof fam);
                    if (fam == AF_INET && have >= 8) inet_ntop(AF_INET, raw + 4, offender, sizeof offender);
                    else if (fam == AF_INET6 && have >= 24) inet_ntop(AF_INET6, raw + 8, offender, sizeof offender);
                }
                unsigned txid = (data[0] << 8) | data[1];
                ent_t *e = tab_find(&s->pending, key_of(dest.sin_addr.s_addr, ntohs(dest.sin_port), txid), ch);
                if (!e) continue;
                slot_t *sl = SLOT(s, (int)e->a);
                if (sl->nicmp == sl->cicmp) {
                    int cap = sl->cicmp ? sl->cicmp * 2 : 2;
                    icmp_t *q = realloc(sl->icmp, cap * sizeof(icmp_t));
                    if (!q) continue; /* out of memory: the error is lost, the query is not */
                    sl->icmp = q;
                    sl->cicmp = cap;
                }
                icmp_t *x = &sl->icmp[sl->nicmp++];
                x->stamp = stamp ? stamp : realtime_ns();
                memcpy(x->offender, offender, sizeof offender);
                x->type = ee.ee_type;
                x->code = ee.ee_code;
                int attempt = 0;
                while (attempt < sl->natt && sl->txid[attempt] != txid) attempt++;
                x->attempt = attempt;
            }
        }
    }
}

static int drain(Sweep *s, int ch, double now) {
    struct mmsghdr msgs[RBATCH];
    struct iovec iov[RBATCH];
    struct sockaddr_in from[RBATCH];
    static char ctl[RBATCH][256];
    int count = 0, errors = 0;
    while (count < 4096) {
        for (int j = 0; j < RBATCH; j++) {
            iov[j].iov_base = s->rbuf + (size_t)j * RSIZE;
            iov[j].iov_len = RSIZE;
            memset(&msgs[j].msg_hdr, 0, sizeof msgs[j].msg_hdr);
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
            msgs[j].msg_hdr.msg_name = &from[j];
            msgs[j].msg_hdr.msg_namelen = sizeof from[j];
            msgs[j].msg_hdr.msg_control = ctl[j];
            msgs[j].msg_hdr.msg_controllen = sizeof ctl[j];
        }
        int r = recvmmsg(s->fds[ch], msgs, RBATCH, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            /* An ICMP error was queued (ECONNREFUSED, EHOSTUNREACH, ...). */
            read_errors(s, ch);
            if (++errors > 64) break;
            continue;
        }
        for (int j = 0; j < r; j++) {
            struct msghdr *h = &msgs[j].msg_hdr;
            int ttl = -1;
            int64_t stamp = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) {
                    memcpy(&ttl, CMSG_DATA(c), sizeof ttl);
                } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof ts);
                    stamp = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
                } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
                    uint32_t d;
                    memcpy(&d, CMSG_DATA(c), sizeof d);
                    s->drops[ch] = d;
                }
            }
            if (from[j].sin_family != AF_INET) continue;
            if (on_datagram(s, ch, iov[j].iov_base, msgs[j].msg_len, &from[j], ttl, stamp, now)) return -1;
        }
        count += r;
        if (r < RBATCH) break;
    }
    /* A sendmmsg that sent some datagrams and then met a queued ICMP error consumes the
       error without saying so; the error queue still holds it. One more system call
       per drain reads it (ICMP errors are rare; an empty queue answers EAGAIN at once). */
    read_errors(s, ch);
    return 0;
}

/* ---------------------------------------------------------------- expiry */

static int expire(Sweep *s, double now) {
    int resend[SBATCH];
    int nresend = 0;
    qent_t *q;
    while ((q = ring_head(&s->awaiting)) && q->when <= now) {
        qent_t e = *q;
        s->awaiting.head++;
        if (s->await_gen[e.slot] != e.gen) continue; /* answered, closed or reused */
        slot_t *sl = SLOT(s, e.slot);
        if (!sl->used || sl->gen != e.gen || sl->answered || sl->closed || sl->attempt != e.attempt) continue;
        if (sl->nicmp || e.attempt >= s->retries || sl->natt >= MAXATT - 1) {
            s->outstanding--;
            if (!sl->nicmp) s->timeouts++;
            if (finish(s, e.slot)) return -1;
        } else {
            s->retried++;
            if (arm(s, e.slot, realtime_ns(), now)) return -1;
            resend[nresend++] = e.slot;
            if (nresend == SBATCH) {
                if (send_slots(s, resend, nresend)) return -1;
                nresend = 0;
            }
        }
    }
    if (nresend && send_slots(s, resend, nresend)) return -1;
    while ((q = ring_head(&s->collecting)) && q->when <= now) {
        qent_t e = *q;
        s->collecting.head++;
        slot_t *sl = SLOT(s, e.slot);
        if (!sl->used || sl->gen != e.gen) continue;
        sl->window_over = 1;
        if (!sl->stream_pending && finish(s, e.slot)) return -1;
    }
    double every = 4 * s->window > 5.0 ? 4 * s->window : 5.0;
    if (now - s->rotated > every) {
        tab_t old = s->recent_old;
        s->recent_old = s->recent;
        s->recent = old;
        tab_clear(&s->recent);
        s->rotated = now;
    }
    return 0;
}

/* ---------------------------------------------------------------- the Python type */

static int take_bytes(PyObject *d, const char *k, PyObject **out) {
    PyObject *v = PyDict_GetItemString(d, k);
    if (!v || !PyBytes_Check(v)) {
        PyErr_Format(PyExc_ValueError, "strings[%s] must be bytes", k);
        return -1;
    }
    *out = Py_NewRef(v);
    return 0;
}

static int Sweep_init(Sweep *s, PyObject *args, PyObject *kw) {
    PyObject *fds, *ports, *strings;
    unsigned long long seed;
    long long start_ns;
    if (!PyArg_ParseTuple(args, "OOddipLKO!", &fds, &ports, &s->window, &s->timeout, &s->retries,
                          &s->tcp_fallback, &start_ns, &seed, &PyDict_Type, &strings))
        return -1;
    s->start_ns = start_ns;
    s->rng = seed | 1;
    Py_ssize_t n = PySequence_Size(fds);
    if (n < 1 || n > MAXFDS || PySequence_Size(ports) != n) {
        PyErr_SetString(PyExc_ValueError, "1 to 64 sockets, with their ports");
        return -1;
    }
    s->nfd = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PySequence_GetItem(fds, i), *p = PySequence_GetItem(ports, i);
        s->fds[i] = f ? (int)PyLong_AsLong(f) : -1;
        s->ports[i] = p ? (int)PyLong_AsLong(p) : -1;
        Py_XDECREF(f);
        Py_XDECREF(p);
        if (PyErr_Occurred()) return -1;
    }
    PyObject *types, *qhead, *opt;
    if (take_bytes(strings, "uid_prefix", &s->uid_prefix) || take_bytes(strings, "head", &s->head) ||
        take_bytes(strings, "mid", &s->mid) || take_bytes(strings, "ip_ttl", &s->k_ipttl) ||
        take_bytes(strings, "input", &s->k_input) || take_bytes(strings, "tail", &s->k_tail) ||
        take_bytes(strings, "udp", &s->nm.udp) ||
        take_bytes(strings, "generic_timeout", &s->f_timeout) ||
        take_bytes(strings, "no_answer", &s->f_noanswer) || take_bytes(strings, "nxdomain", &s->f_nx) ||
        take_bytes(strings, "refused", &s->f_refused) || take_bytes(strings, "servfail", &s->f_servfail) ||
        take_bytes(strings, "misbehaving", &s->f_misbehaving))
        return -1;
    /* the uid prefix is text in the records' uid strings */
    PyObject *prefix = PyUnicode_FromEncodedObject(s->uid_prefix, "ascii", "strict");
    if (!prefix) return -1;
    Py_SETREF(s->uid_prefix, prefix);
    types = PyDict_GetItemString(strings, "types");
    if (!types || !PyTuple_Check(types) || PyTuple_GET_SIZE(types) != 6) {
        PyErr_SetString(PyExc_ValueError, "strings[types]: the JSON of A, AAAA, NS, CNAME, PTR, DNAME");
        return -1;
    }
    for (int i = 0; i < 6; i++) s->nm.types[i] = Py_NewRef(PyTuple_GET_ITEM(types, i));
    qhead = PyDict_GetItemString(strings, "query_head");
    opt = PyDict_GetItemString(strings, "query_opt");
    if (!qhead || !PyBytes_Check(qhead) || PyBytes_GET_SIZE(qhead) != 10 || !opt || !PyBytes_Check(opt) ||
        PyBytes_GET_SIZE(opt) > (Py_ssize_t)sizeof s->opt) {
        PyErr_SetString(PyExc_ValueError, "strings[query_head] (10 bytes) and [query_opt] (at most 16)");
        return -1;
    }
    memcpy(s->qhead, PyBytes_AS_STRING(qhead), 10);
    s->optlen = (int)PyBytes_GET_SIZE(opt);
    memcpy(s->opt, PyBytes_AS_STRING(opt), s->optlen);
    static const char *hooks[] = {"udp_engine", "kinds", "describe_target", "describe_qtype", "json"};
    PyObject **slots[] = {&s->udp_engine, &s->kinds, &s->describe_target, &s->describe_qtype, &s->json};
    for (int i = 0; i < 5; i++) {
        PyObject *v = PyDict_GetItemString(strings, hooks[i]);
        if (!v) {
            PyErr_Format(PyExc_ValueError, "strings[%s] is missing", hooks[i]);
            return -1;
        }
        *slots[i] = Py_NewRef(v);
    }
    if (!PyDict_Check(s->kinds)) {
        PyErr_SetString(PyExc_ValueError, "strings[kinds] must be a dict");
        return -1;
    }
    s->targets = PyDict_New();
    s->qtypes = PyDict_New();
    s->null = PyBytes_FromString("null");
    if (!s->targets || !s->qtypes || !s->null) return -1;
    s->rbuf = malloc((size_t)RBATCH * RSIZE);
    s->fallbacks = PyList_New(0);
    s->strays = PyList_New(0);
    s->tc = PyList_New(0);
    if (!s->rbuf || !s->fallbacks || !s->strays || !s->tc) {
        PyErr_NoMemory();
        return -1;
    }
    if (tab_init(&s->pending, 4096) || tab_init(&s->recent, 4096) || tab_init(&s->recent_old, 4096))
        return -1;
    s->rotated = monotonic();
    return 0;
}

static void Sweep_dealloc(Sweep *s) {
    for (int i = 0; i < s->nslots; i++)
        if (SLOT(s, i)->used) slot_free(s, i);
    for (int p = 0; p < s->nslots / PAGE; p++) free(s->pages[p]);
    free(s->pages);
    free(s->freelist);
    free(s->await_gen);
    free(s->pending.e);
    free(s->recent.e);
    free(s->recent_old.e);
    free(s->awaiting.q);
    free(s->collecting.q);
    free(s->out.p);
    free(s->tmp.p);
    free(s->rbuf);
    Py_XDECREF(s->uid_prefix);
    Py_XDECREF(s->head);
    Py_XDECREF(s->mid);
    Py_XDECREF(s->k_ipttl);
    Py_XDECREF(s->k_input);
    Py_XDECREF(s->k_tail);
    Py_XDECREF(s->f_timeout);
    Py_XDECREF(s->f_noanswer);
    Py_XDECREF(s->f_nx);
    Py_XDECREF(s->f_refused);
    Py_XDECREF(s->f_servfail);
    Py_XDECREF(s->f_misbehaving);
    Py_XDECREF(s->nm.udp);
    for (int i = 0; i < 6; i++) Py_XDECREF(s->nm.types[i]);
    Py_XDECREF(s->fallbacks);
    Py_XDECREF(s->strays);
    Py_XDECREF(s->tc);
    Py_XDECREF(s->udp_engine);
    Py_XDECREF(s->kinds);
    Py_XDECREF(s->targets);
    Py_XDECREF(s->qtypes);
    Py_XDECREF(s->describe_target);
    Py_XDECREF(s->describe_qtype);
    Py_XDECREF(s->json);
    Py_XDECREF(s->last_target);
    Py_XDECREF(s->last_tinfo);
    Py_XDECREF(s->null);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* Whether ASCII text is JSON as it stands between quotes: no control byte, `"` or `\`
   (what msgspec writes unchanged). */
static int json_plain(const char *text, Py_ssize_t n) {
    const unsigned char *p = (const unsigned char *)text;
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] == '"' || p[i] == '\\' || p[i] == 0x7F) return 0;
    return 1;
}

/* JSON of a str: quoted as is when it is plain (json_plain), else msgspec's own bytes
   (s->json). */
static PyObject *json_str(Sweep *s, PyObject *text) {
    if (text == Py_None) return Py_NewRef(s->null);
    if (PyUnicode_Check(text) && PyUnicode_IS_ASCII(text)) {
        const unsigned char *p = PyUnicode_1BYTE_DATA(text);
        Py_ssize_t n = PyUnicode_GET_LENGTH(text);
        if (json_plain((const char *)p, n)) {
            PyObject *out = PyBytes_FromStringAndSize(NULL, n + 2);
            if (!out) return NULL;
            char *o = PyBytes_AS_STRING(out);
            o[0] = '"';
            memcpy(o + 1, p, n);
            o[n + 1] = '"';
            return out;
        }
    }
    return PyObject_CallOneArg(s->json, text);
}

/* The wire form of an ASCII lower-case host name into `out`; its length, or -1 for a
   name the Python loop should take (and report, if DNS cannot carry it). */
static int name_wire(PyObject *host, unsigned char *out, int room) {
    if (!PyUnicode_Check(host) || !PyUnicode_IS_ASCII(host)) return -1;
    const unsigned char *p = PyUnicode_1BYTE_DATA(host);
    Py_ssize_t n = PyUnicode_GET_LENGTH(host);
    if (n && p[n - 1] == '.') n--;
    if (n == 0 || n + 2 > 255 || n + 2 > room) return -1;
    int w = 0, start = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i == n || p[i] == '.') {
            int len = (int)i - start;
            if (len < 1 || len > 63) return -1;
            out[w++] = (unsigned char)len;
            memcpy(out + w, p + start, len);
            w += len;
            start = (int)i + 1;
        } else if (p[i] >= 'A' && p[i] <= 'Z') {
            return -1;
        }
    }
    out[w++] = 0;
    return w;
}

/* cache[key], asking Python's describe(key) the first time: a borrowed reference (the
   cache holds it), or NULL with the error set. */
static PyObject *described(PyObject *cache, PyObject *key, PyObject *describe) {
    PyObject *value = PyDict_GetItemWithError(cache, key);
    if (value || PyErr_Occurred()) return value;
    value = PyObject_CallOneArg(describe, key);
    if (!value) return NULL;
    int rc = PyDict_SetItem(cache, key, value);
    Py_DECREF(value);
    return rc ? NULL : value;
}

/* start(queries) -> the queries it did not take.
   It takes a Query (a tuple: name, qtype, target, engine, stream, kind, ip_ttl,
   source_port) that is UDP to an IPv4 target, with neither a fixed TTL nor a fixed port;
   Python describes each new target (describe_target: (ip4 bytes, port, JSON of
   ',"engine":..,"resolver_address":..') or None) and query type (describe_qtype). */
static PyObject *Sweep_start(Sweep *s, PyObject *queries) {
    if (!PyList_Check(queries)) {
        PyErr_SetString(PyExc_TypeError, "a list of queries");
        return NULL;
    }
    Py_ssize_t k = PyList_GET_SIZE(queries);
    PyObject *rest = PyList_New(0);
    int *idx = malloc(sizeof(int) * (k ? k : 1));
    if (!rest || !idx) {
        Py_XDECREF(rest);
        free(idx);
        return PyErr_NoMemory();
    }
    int64_t now_ns = realtime_ns();
    double now = monotonic();
    int64_t t0_ns = now_ns - s->start_ns;
    int made = 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *q = PyList_GET_ITEM(queries, j);
        PyObject *name, *qtype_o, *target, *tinfo, *kindfrag, *qtfrag, *hjson = NULL, *ijson = NULL;
        if (!PyTuple_Check(q) || PyTuple_GET_SIZE(q) < 8) goto python;
        name = PyTuple_GET_ITEM(q, 0);
        qtype_o = PyTuple_GET_ITEM(q, 1);
        target = PyTuple_GET_ITEM(q, 2);
        if (PyTuple_GET_ITEM(q, 3) != s->udp_engine || PyTuple_GET_ITEM(q, 6) != Py_None ||
            PyTuple_GET_ITEM(q, 7) != Py_None || target == Py_None || !PyTuple_Check(name) ||
            PyTuple_GET_SIZE(name) < 2 || !PyLong_Check(qtype_o))
            goto python;
        if (target == s->last_target) {
            tinfo = s->last_tinfo;
        } else {
            tinfo = described(s->targets, target, s->describe_target);
            if (!tinfo) goto fail;
            if (tinfo != Py_None) {
                PyObject *ip4, *frag;
                int port;
                if (!PyArg_ParseTuple(tinfo, "SiS", &ip4, &port, &frag)) goto fail;
                if (PyBytes_GET_SIZE(ip4) != 4) {
                    PyErr_SetString(PyExc_ValueError, "describe_target: not 4 address bytes");
                    goto fail;
                }
                memcpy(&s->last_ip, PyBytes_AS_STRING(ip4), 4);
                s->last_port = port;
                s->last_frag = frag;
            }
            Py_XSETREF(s->last_target, Py_NewRef(target));
            Py_XSETREF(s->last_tinfo, Py_NewRef(tinfo));
        }
        if (tinfo == Py_None) goto python;
        kindfrag = PyDict_GetItemWithError(s->kinds, PyTuple_GET_ITEM(q, 5));
        if (!kindfrag) {
            if (PyErr_Occurred()) goto fail;
            goto python;
        }
        qtfrag = described(s->qtypes, qtype_o, s->describe_qtype);
        if (!qtfrag) goto fail;
        long qtype = PyLong_AsLong(qtype_o);
        if (qtype < 0 || qtype > 65535 || !PyBytes_Check(qtfrag) || !PyBytes_Check(kindfrag)) {
            PyErr_Clear();
            goto python;
        }
        unsigned char wire[QMAX];
        int wlen = name_wire(PyTuple_GET_ITEM(name, 0), wire, QMAX - 10 - 4 - (int)sizeof s->opt);
        if (wlen < 0) goto python;
        PyObject *frag = s->last_frag;
        /* The host name's JSON: name_wire took it as ASCII; quoted in place when JSON
           needs no escape in it (no bytes object of its own), else msgspec's. */
        PyObject *host = PyTuple_GET_ITEM(name, 0);
        const char *hp = (const char *)PyUnicode_1BYTE_DATA(host);
        Py_ssize_t hn = PyUnicode_GET_LENGTH(host);
        if (!json_plain(hp, hn)) {
            hjson = json_str(s, host);
            if (!hjson) goto fail_json;
            hp = PyBytes_AS_STRING(hjson);
            hn = PyBytes_GET_SIZE(hjson);
        }
        ijson = json_str(s, PyTuple_GET_ITEM(name, 1));
        if (!ijson) goto fail_json;
        /* '"hostname":H,"query_type":Q,"engine":..,"resolver_address":R,"target_kind":K' */
        Py_ssize_t fl = 11 + hn + (hjson ? 0 : 2) + PyBytes_GET_SIZE(qtfrag) + PyBytes_GET_SIZE(frag) +
                        PyBytes_GET_SIZE(kindfrag);
        PyObject *qfrag = PyBytes_FromStringAndSize(NULL, fl);
        if (!qfrag) goto fail_json;
        char *o = PyBytes_AS_STRING(qfrag);
        memcpy(o, "\"hostname\":", 11);
        o += 11;
        if (!hjson) *o++ = '"';
        memcpy(o, hp, hn);
        o += hn;
        if (!hjson) *o++ = '"';
        memcpy(o, PyBytes_AS_STRING(qtfrag), PyBytes_GET_SIZE(qtfrag));
        o += PyBytes_GET_SIZE(qtfrag);
        memcpy(o, PyBytes_AS_STRING(frag), PyBytes_GET_SIZE(frag));
        o += PyBytes_GET_SIZE(frag);
        memcpy(o, PyBytes_AS_STRING(kindfrag), PyBytes_GET_SIZE(kindfrag));
        Py_CLEAR(hjson);
        int i = slot_new(s);
        if (i < 0) {
            Py_DECREF(qfrag);
            Py_DECREF(ijson);
            goto fail;
        }
        slot_t *sl = SLOT(s, i);
        sl->query = Py_NewRef(q);
        sl->qfrag = qfrag;
        sl->infrag = ijson;
        memcpy(sl->qbuf, s->qhead, 10);
        memcpy(sl->qbuf + 10, wire, wlen);
        sl->qbuf[10 + wlen] = qtype >> 8;
        sl->qbuf[11 + wlen] = qtype & 0xFF;
        sl->qbuf[12 + wlen] = 0;
        sl->qbuf[13 + wlen] = 1;
        memcpy(sl->qbuf + 14 + wlen, s->opt, s->optlen);
        sl->qlen = 14 + wlen + s->optlen;
        sl->namelen = wlen;
        sl->qtype = (int)qtype;
        sl->ip = s->last_ip;
        sl->port = s->last_port;
        sl->channel = s->rr++ % s->nfd;
        sl->t0_ns = t0_ns;
        s->outstanding++;
        idx[made++] = i;
        if (arm(s, i, now_ns, now)) goto fail;
        continue;
    python:
        if (PyList_Append(rest, q)) goto fail;
        continue;
    fail_json:
        Py_XDECREF(hjson);
        Py_XDECREF(ijson);
        goto fail;
    }
    if (send_slots(s, idx, made)) goto fail_sent;
    free(idx);
    return rest;
fail:
    /* queries taken before the error are sent: none is lost */
    if (made) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        send_slots(s, idx, made);
        PyErr_Restore(type, value, tb);
    }
fail_sent:
    free(idx);
    Py_DECREF(rest);
    return NULL;
}

/* poll() -> (lines, count, fallbacks, strays, truncated): read what came, close what is
   due, and hand over what Python must finish. */
static PyObject *Sweep_poll(Sweep *s, PyObject *unused) {
    double now = monotonic();
    for (int ch = 0; ch < s->nfd; ch++)
        if (drain(s, ch, now)) return NULL;
    if (expire(s, now)) return NULL;
    /* What is returned is handed over: the lines are copied out, the lists given away. */
    PyObject *fresh[3] = {PyList_New(0), PyList_New(0), PyList_New(0)};
    if (!fresh[0] || !fresh[1] || !fresh[2]) {
        for (int i = 0; i < 3; i++) Py_XDECREF(fresh[i]);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(y#LNNN)", s->out.p ? s->out.p : "", (Py_ssize_t)s->out.n,
                                  s->out_lines, s->fallbacks, s->strays, s->tc);
    s->fallbacks = fresh[0];
    s->strays = fresh[1];
    s->tc = fresh[2];
    s->out.n = 0;
    s->out_lines = 0;
    return out;
}

/* stream_done(slot, gen, response or None): the TCP retry of a truncated reply ended */
static PyObject *Sweep_stream_done(Sweep *s, PyObject *args) {
    int i;
    unsigned gen;
    PyObject *response;
    if (!PyArg_ParseTuple(args, "iIO", &i, &gen, &response)) return NULL;
    if (i < 0 || i >= s->nslots || !SLOT(s, i)->used || SLOT(s, i)->gen != gen) Py_RETURN_NONE;
    slot_t *sl = SLOT(s, i);
    sl->stream_pending = 0;
    if (response != Py_None) {
        if (!sl->extra && !(sl->extra = PyList_New(0))) return NULL;
        if (PyList_Append(sl->extra, response)) return NULL;
        sl->tcp_got = 1;
    }
    if (sl->window_over && finish(s, i)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Sweep_next_uid(Sweep *s, PyObject *unused) { return uid_text(s, ++s->uid_counter); }

static PyObject *Sweep_wait(Sweep *s, PyObject *unused) {
    double now = monotonic(), best = -1;
    qent_t *a = ring_head(&s->awaiting), *c = ring_head(&s->collecting);
    if (a) best = a->when - now;
    if (c && (best < 0 || c->when - now < best)) best = c->when - now;
    if ((a || c) && best < 0) best = 0;
    return PyFloat_FromDouble(best);
}

static PyObject *Sweep_counts(Sweep *s, PyObject *unused) {
    long long drops = 0;
    for (int i = 0; i < s->nfd; i++) drops += s->drops[i];
    return Py_BuildValue("{sLsLsLsLsLsLsLsLsL}", "sent", s->sent, "responses", s->responses,
                         "measurements", s->measurements, "timeouts", s->timeouts, "retries",
                         s->retried, "icmp", s->icmp, "kernel_drops", drops, "outstanding",
                         s->outstanding, "native_records", s->native_lines);
}

static PyObject *Sweep_busy(Sweep *s, PyObject *unused) {
    return PyBool_FromLong(s->live > 0);
}

static PyObject *Sweep_outstanding(Sweep *s, void *unused) { return PyLong_FromLongLong(s->outstanding); }

static PyMethodDef Sweep_methods[] = {
    {"start", (PyCFunction)Sweep_start, METH_O, "Start and send queries; return those it did not take."},
    {"poll", (PyCFunction)Sweep_poll, METH_NOARGS, "Read replies, close what is due: (lines, count, fallbacks, strays, truncated)."},
    {"stream_done", (PyCFunction)Sweep_stream_done, METH_VARARGS, "The TCP retry of a slot ended."},
    {"next_uid", (PyCFunction)Sweep_next_uid, METH_NOARGS, "A measurement UID from the sweep's counter."},
    {"wait", (PyCFunction)Sweep_wait, METH_NOARGS, "Seconds to the next deadline (-1: none)."},
    {"busy", (PyCFunction)Sweep_busy, METH_NOARGS, "Whether a query is still open."},
    {"counts", (PyCFunction)Sweep_counts, METH_NOARGS, "The sweep's counters."},
    {NULL},
};

static PyGetSetDef Sweep_getset[] = {
    {"outstanding", (getter)Sweep_outstanding, NULL, "Queries awaiting their first reply.", NULL},
    {NULL},
};

static PyTypeObject SweepType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "wallwatch._probeloop.Sweep",
    .tp_basicsize = sizeof(Sweep),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The prober's UDP loop over IPv4 capturing sockets.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sweep_init,
    .tp_dealloc = (destructor)Sweep_dealloc,
    .tp_methods = Sweep_methods,
    .tp_getset = Sweep_getset,
};

/* encode_response(data, src, sport, ttl, t_ns, rtt_ns, attempt, qtype, qwire, udp, types) -> bytes|None:
   the reader and writer alone, for the differential tests. */
static PyObject *py_encode_response(PyObject *self, PyObject *args) {
    const unsigned char *data, *qwire;
    Py_ssize_t n, qn;
    const char *src;
    int sport, ttl, attempt, qtype;
    long long t, rtt;
    PyObject *udp, *types;
    if (!PyArg_ParseTuple(args, "y#siiLLiiy#SO!", &data, &n, &src, &sport, &ttl, &t, &rtt, &attempt,
                          &qtype, &qwire, &qn, &udp, &PyTuple_Type, &types))
        return NULL;
    if (PyTuple_GET_SIZE(types) != 6) {
        PyErr_SetString(PyExc_ValueError, "six answer type names");
        return NULL;
    }
    names_t nm;
    nm.udp = udp;
    for (int i = 0; i < 6; i++) nm.types[i] = PyTuple_GET_ITEM(types, i);
    buf_t b = {0};
    int rcode, an;
    int rc = encode_response(&b, &nm, data, n, src, sport, ttl, t, rtt, attempt, qtype, qwire, qn,
                             &rcode, &an);
    PyObject *out = rc < 0 ? NULL : rc ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize(b.p ? b.p : "", b.n);
    free(b.p);
    return out;
}

static PyObject *py_format_float(PyObject *self, PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    buf_t b = {0};
    PyObject *out = put_float(&b, x) ? NULL : PyBytes_FromStringAndSize(b.p, b.n);
    free(b.p);
    return out;
}

static PyObject *py_format_ns(PyObject *self, PyObject *arg) {
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred()) return NULL;
    buf_t b = {0};
    PyObject *out = put_ns(&b, ns) ? NULL : PyBytes_FromStringAndSize(b.p, b.n);
    free(b.p);
    return out;
}

static PyMethodDef methods[] = {
    {"encode_response", py_encode_response, METH_VARARGS, "One reply's record as JSON, or None when declined."},
    {"format_float", py_format_float, METH_O, "A float as the records write it."},
    {"format_ns", py_format_ns, METH_O, "A time in nanoseconds as the records write it in seconds."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_probeloop", NULL, -1, methods};

PyMODINIT_FUNC PyInit__probeloop(void) {
    init_plain();
    if (PyType_Ready(&SweepType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Sweep", (PyObject *)&SweepType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
