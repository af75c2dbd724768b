/* One pass over a received SIP message of the usual shape, for the engine's fast paths.
 *
 * Why C: a UDP worker sleeps between datagrams and wakes to cold caches, so what a message costs is the
 * amount of code and memory it touches. The Python parse and checks touch dozens of interpreter
 * functions and build a dozen objects per header; this scan touches one small loop and builds only the
 * few values the engine decides with (docs/benchmarks.md has the figures).
 *
 * The Python code stays the authority. A scan accepts only messages whose every line is plain
 * (`token: value`, no folding, no control characters) and whose checked headers have the simple forms
 * written below; for anything else it returns None and the engine takes its general path, which gives
 * the answer for every message. Whenever a scan does return a result, the general path would have
 * forwarded the same message to the same place (tests/unit/sip/test_scan.py checks this on RFC 4475's
 * messages and on random mutations of usual ones).
 *
 * Every index below stays inside the bytes object: all loops are bounded by explicit end offsets.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_ssize_t s, e; /* [s, e) */
} Span;

/* RFC 3261 token characters (headers.TOKEN_CHARS). */
static unsigned char TOKEN[256];
/* Host names and IPv4 literals as uri.parse_hostport accepts them unbracketed. */
static unsigned char HOSTNAME[256];
/* What a URI may hold literally (uri._URI_CHARS): printable ASCII but < > and ". */
static unsigned char URI[256];
/* Parameter values we read without unquoting: tokens plus the characters of IPv6 literals. */
static unsigned char PVALUE[256];

static void init_tables(void) {
    const char *token = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~";
    const char *hostname = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._";
    for (const char *c = token; *c; c++) {
        TOKEN[(unsigned char)*c] = 1;
        PVALUE[(unsigned char)*c] = 1;
    }
    PVALUE[':'] = PVALUE['['] = PVALUE[']'] = 1;
    for (const char *c = hostname; *c; c++) HOSTNAME[(unsigned char)*c] = 1;
    for (int c = 0x21; c < 0x7f; c++) URI[c] = (c != '<' && c != '>' && c != '"');
}

static inline unsigned char lower(char ch) {
    unsigned char c = (unsigned char)ch;
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Case-insensitive equality of p[s.s:s.e] with a lowercase literal. */
static int span_ieq(const char *p, Span s, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(s.e - s.s) != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(p[s.s + (Py_ssize_t)i]) != (unsigned char)lit[i]) return 0;
    return 1;
}

static int span_eq(const char *p, Span a, Span b) {
    return (a.e - a.s) == (b.e - b.s) && memcmp(p + a.s, p + b.s, (size_t)(a.e - a.s)) == 0;
}

static Py_ssize_t find(const char *p, Py_ssize_t from, Py_ssize_t to, const char *needle, size_t n) {
    if (to - from < (Py_ssize_t)n) return -1;
    const char *hit = memmem(p + from, (size_t)(to - from), needle, n);
    return hit ? (Py_ssize_t)(hit - p) : -1;
}

static Py_ssize_t find_char(const char *p, Py_ssize_t from, Py_ssize_t to, char c) {
    if (to <= from) return -1;
    const char *hit = memchr(p + from, c, (size_t)(to - from));
    return hit ? (Py_ssize_t)(hit - p) : -1;
}

static int all_in(const char *p, Span s, const unsigned char *table) {
    if (s.e <= s.s) return 0;
    for (Py_ssize_t i = s.s; i < s.e; i++)
        if (!table[(unsigned char)p[i]]) return 0;
    return 1;
}

/* Digits only, at most `width` of them, as a number; -1 otherwise. */
static long long number(const char *p, Span s, Py_ssize_t width) {
    if (s.e <= s.s || s.e - s.s > width) return -1;
    long long v = 0;
    for (Py_ssize_t i = s.s; i < s.e; i++) {
        if (!is_digit(p[i])) return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static Span trim(const char *p, Span s) {
    while (s.s < s.e && (p[s.s] == ' ' || p[s.s] == '\t')) s.s++;
    while (s.e > s.s && (p[s.e - 1] == ' ' || p[s.e - 1] == '\t')) s.e--;
    return s;
}

/* ------------------------------------------------------------------ header lines */

enum { H_OTHER, H_VIA, H_FROM, H_TO, H_CALL_ID, H_CSEQ, H_MAX_FORWARDS, H_CONTENT_LENGTH, H_ROUTE,
       H_PROXY_REQUIRE, H_KINDS };

static int header_kind(const char *p, Span name) {
    switch (name.e - name.s) {
    case 1:
        switch (lower(p[name.s])) {
        case 'v': return H_VIA;
        case 'f': return H_FROM;
        case 't': return H_TO;
        case 'i': return H_CALL_ID;
        case 'l': return H_CONTENT_LENGTH;
        default: return H_OTHER;
        }
    case 2: return span_ieq(p, name, "to") ? H_TO : H_OTHER;
    case 3: return span_ieq(p, name, "via") ? H_VIA : H_OTHER;
    case 4: return span_ieq(p, name, "from") ? H_FROM : (span_ieq(p, name, "cseq") ? H_CSEQ : H_OTHER);
    case 5: return span_ieq(p, name, "route") ? H_ROUTE : H_OTHER;
    case 7: return span_ieq(p, name, "call-id") ? H_CALL_ID : H_OTHER;
    case 12: return span_ieq(p, name, "max-forwards") ? H_MAX_FORWARDS : H_OTHER;
    case 13: return span_ieq(p, name, "proxy-require") ? H_PROXY_REQUIRE : H_OTHER;
    case 14: return span_ieq(p, name, "content-length") ? H_CONTENT_LENGTH : H_OTHER;
    default: return H_OTHER;
    }
}

#define MAX_SEEN 8 /* lines of one kind remembered; more Via lines than this: general path */

typedef struct {
    int count;
    Span line[MAX_SEEN];  /* the whole line, CRLFs excluded */
    Span name[MAX_SEEN];  /* the name as written */
    Span value[MAX_SEEN]; /* the value, trimmed of SP/HT */
} Seen;

typedef struct {
    const char *p;
    Py_ssize_t n;
    Py_ssize_t start_end; /* end of the start line */
    Py_ssize_t head_end;  /* where "\r\n\r\n" begins */
    Seen seen[H_KINDS];
} Scan;

/* Start a scan of `arg`; 0 with TypeError set when it is not bytes. Only the counts are cleared: a line
 * is read only below its kind's count, and the rest is stack the scan need not touch. */
static int scan_init(Scan *m, PyObject *arg, const char *fn) {
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s() takes bytes", fn);
        return 0;
    }
    m->p = PyBytes_AS_STRING(arg);
    m->n = PyBytes_GET_SIZE(arg);
    m->start_end = m->head_end = 0;
    for (int k = 0; k < H_KINDS; k++) m->seen[k].count = 0;
    return 1;
}

/* Split the header block into plain lines and remember the ones we read. 0: not of the plain shape. */
static int scan_headers(Scan *m) {
    const char *p = m->p;
    Py_ssize_t end = find(p, 0, m->n, "\r\n\r\n", 4);
    if (end < 0) return 0;
    m->head_end = end;
    Py_ssize_t first = find(p, 0, end, "\r\n", 2);
    m->start_end = first < 0 ? end : first;
    for (Py_ssize_t i = 0; i < m->start_end; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == 0x7f) return 0;
    }
    Py_ssize_t ls = m->start_end + 2;
    while (ls <= end && m->start_end < end) {
        Py_ssize_t le = find(p, ls, end, "\r\n", 2);
        if (le < 0) le = end;
        Py_ssize_t colon = -1;
        for (Py_ssize_t i = ls; i < le; i++) {
            unsigned char c = (unsigned char)p[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f) return 0; /* stray CR or LF, controls */
            if (colon < 0 && c == ':') colon = i;
        }
        if (colon <= ls) return 0; /* folded line, no name, no colon */
        Span name = {ls, colon};
        if (!all_in(p, name, TOKEN)) return 0; /* spaces before the colon too */
        int kind = header_kind(p, name);
        Seen *seen = &m->seen[kind];
        if (kind != H_OTHER && seen->count < MAX_SEEN) {
            seen->line[seen->count] = (Span){ls, le};
            seen->name[seen->count] = name;
            seen->value[seen->count] = trim(p, (Span){colon + 1, le});
        }
        seen->count++;
        ls = le + 2;
    }
    return 1;
}

/* ------------------------------------------------------------------ Via */

typedef struct {
    Span transport, host;
    long port; /* -1: none */
    Span branch, received, rport;
    int has_branch, has_received, has_rport;
} Via;

/* `SIP/2.0/TRANSPORT host[:port](;name[=value])*` with no LWS, no quotes, no IPv6 sent-by. */
static int parse_via(const char *p, Span v, Via *via) {
    memset(via, 0, sizeof *via);
    via->port = -1;
    if (v.e - v.s < 10 || memcmp(p + v.s, "SIP/2.0/", 8) != 0) return 0;
    Py_ssize_t i = v.s + 8;
    Py_ssize_t sp = find_char(p, i, v.e, ' ');
    if (sp < 0) return 0;
    via->transport = (Span){i, sp};
    if (!all_in(p, via->transport, TOKEN)) return 0;
    i = sp + 1;
    Py_ssize_t hs = i;
    while (i < v.e && HOSTNAME[(unsigned char)p[i]]) i++;
    via->host = (Span){hs, i};
    if (i == hs) return 0;
    if (i < v.e && p[i] == ':') {
        Py_ssize_t ps = ++i;
        while (i < v.e && is_digit(p[i])) i++;
        long long port = number(p, (Span){ps, i}, 5);
        if (port <= 0 || port > 65535) return 0;
        via->port = (long)port;
    }
    while (i < v.e) {
        if (p[i] != ';') return 0;
        Py_ssize_t ns = ++i;
        while (i < v.e && TOKEN[(unsigned char)p[i]]) i++;
        Span name = {ns, i};
        if (i == ns) return 0;
        Span value = {i, i};
        int has_value = 0;
        if (i < v.e && p[i] == '=') {
            Py_ssize_t vs = ++i;
            while (i < v.e && PVALUE[(unsigned char)p[i]]) i++;
            value = (Span){vs, i};
            if (i == vs) return 0; /* `name=` with nothing: a malformed Via */
            has_value = 1;
        }
        /* A repeated parameter: the last one counts, as in the Python parser's dict. */
        if (span_ieq(p, name, "branch")) {
            if (!has_value) return 0; /* a flag branch: leave it to the general path */
            via->branch = value;
            via->has_branch = 1;
        } else if (span_ieq(p, name, "received")) {
            if (!has_value) return 0;
            via->received = value;
            via->has_received = 1;
        } else if (span_ieq(p, name, "rport")) {
            via->rport = value;
            via->has_rport = 1;
        }
    }
    return 1;
}

/* A header value `split_values` keeps whole: no comma, quote or angle bracket in it. */
static int single_plain(const char *p, Span v) {
    for (Py_ssize_t i = v.s; i < v.e; i++) {
        char c = p[i];
        if (c == ',' || c == '"' || c == '<' || c == '>') return 0;
    }
    return 1;
}

/* A Via line's value split on its commas, as `split_values` would with no quotes or brackets about:
 * 1: the first value (trimmed) is in *first and *rest is what follows its comma (empty: no comma); 0: the
 * line has quotes or brackets (split_values must read it), or an empty value first or after the comma. */
static int first_value(const char *p, Span line, Span *first, Span *rest) {
    for (Py_ssize_t i = line.s; i < line.e; i++) {
        char c = p[i];
        if (c == '"' || c == '<' || c == '>') return 0;
    }
    Py_ssize_t comma = find_char(p, line.s, line.e, ',');
    *first = trim(p, (Span){line.s, comma < 0 ? line.e : comma});
    *rest = comma < 0 ? (Span){line.e, line.e} : (Span){comma + 1, line.e};
    if (comma >= 0 && trim(p, *rest).e == trim(p, *rest).s) return 0; /* `a,`: an empty value follows */
    return first->e > first->s;
}

static PyObject *bytes_of(const char *p, Span s) { return PyBytes_FromStringAndSize(p + s.s, s.e - s.s); }

/* An ASCII span as a str, lowercased (hosts) or uppercased (transports), as the Python parsers give them. */
static PyObject *cased_str_of(const char *p, Span s, int upper) {
    PyObject *out = PyUnicode_New(s.e - s.s, 127);
    if (out == NULL) return NULL;
    Py_UCS1 *data = PyUnicode_1BYTE_DATA(out);
    for (Py_ssize_t i = s.s; i < s.e; i++) {
        unsigned char c = lower(p[i]);
        data[i - s.s] = upper && c >= 'a' && c <= 'z' ? (Py_UCS1)(c - 32) : c;
    }
    return out;
}

static PyObject *lower_str_of(const char *p, Span s) { return cased_str_of(p, s, 0); }

static PyObject *port_of(long port) {
    if (port < 0) Py_RETURN_NONE;
    return PyLong_FromLong(port);
}

/* Via.rport: the value when it is a port number, else None (a flag or garbage). */
static PyObject *rport_of(const char *p, const Via *via) {
    if (via->has_rport) {
        long long port = number(p, via->rport, 5);
        if (port > 0 && port <= 65535) return PyLong_FromLongLong(port);
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ BLAKE2s (RFC 7693)
 *
 * The branch we put in our Via is blake2s of the transaction and loop keys (branch.py). Computed here for
 * the scanned requests so that they need no Python step to hash; the tests compare every such branch
 * with hashlib's. Unkeyed, digest of 1..32 bytes, message fed in pieces.
 */

static const uint32_t B2S_IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                                   0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};

static const uint8_t B2S_SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

typedef struct {
    uint32_t h[8];
    uint64_t t;     /* bytes compressed so far */
    uint8_t b[64];  /* the block being filled */
    size_t used;
    size_t outlen;
} Blake2s;

static inline uint32_t ror32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void b2s_compress(Blake2s *s, int last) {
    uint32_t v[16], m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)s->b[4 * i] | ((uint32_t)s->b[4 * i + 1] << 8) | ((uint32_t)s->b[4 * i + 2] << 16) |
               ((uint32_t)s->b[4 * i + 3] << 24);
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = B2S_IV[i];
    }
    v[12] ^= (uint32_t)s->t;
    v[13] ^= (uint32_t)(s->t >> 32);
    if (last) v[14] = ~v[14];
#define G(a, b, c, d, x, y)                                                                              \
    do {                                                                                                 \
        v[a] = v[a] + v[b] + (x);                                                                        \
        v[d] = ror32(v[d] ^ v[a], 16);                                                                   \
        v[c] = v[c] + v[d];                                                                              \
        v[b] = ror32(v[b] ^ v[c], 12);                                                                   \
        v[a] = v[a] + v[b] + (y);                                                                        \
        v[d] = ror32(v[d] ^ v[a], 8);                                                                    \
        v[c] = v[c] + v[d];                                                                              \
        v[b] = ror32(v[b] ^ v[c], 7);                                                                    \
    } while (0)
    for (int r = 0; r < 10; r++) {
        const uint8_t *z = B2S_SIGMA[r];
        G(0, 4, 8, 12, m[z[0]], m[z[1]]);
        G(1, 5, 9, 13, m[z[2]], m[z[3]]);
        G(2, 6, 10, 14, m[z[4]], m[z[5]]);
        G(3, 7, 11, 15, m[z[6]], m[z[7]]);
        G(0, 5, 10, 15, m[z[8]], m[z[9]]);
        G(1, 6, 11, 12, m[z[10]], m[z[11]]);
        G(2, 7, 8, 13, m[z[12]], m[z[13]]);
        G(3, 4, 9, 14, m[z[14]], m[z[15]]);
    }
#undef G
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

static void b2s_init(Blake2s *s, size_t outlen) {
    memcpy(s->h, B2S_IV, sizeof s->h);
    s->h[0] ^= 0x01010000u ^ (uint32_t)outlen;
    s->t = 0;
    s->used = 0;
    s->outlen = outlen;
}

static void b2s_update(Blake2s *s, const char *data, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s->used == 64) { /* a full block is compressed only once more input follows it */
            s->t += 64;
            b2s_compress(s, 0);
            s->used = 0;
        }
        s->b[s->used++] = (uint8_t)data[i];
    }
}

/* The digest as lowercase hex, the way branch._digest writes it. */
static void b2s_hex(Blake2s *s, char *out) {
    static const char HEXCHARS[] = "0123456789abcdef";
    s->t += s->used;
    memset(s->b + s->used, 0, 64 - s->used);
    b2s_compress(s, 1);
    for (size_t i = 0; i < s->outlen; i++) {
        uint8_t byte = (uint8_t)(s->h[i / 4] >> (8 * (i % 4)));
        out[2 * i] = HEXCHARS[byte >> 4];
        out[2 * i + 1] = HEXCHARS[byte & 15];
    }
}

static void b2s_span(Blake2s *s, const char *p, Span x) { b2s_update(s, p + x.s, (size_t)(x.e - x.s)); }

static const char NUL = '\0';

/* ------------------------------------------------------------------ responses */

static const char OUR_BRANCH[] = "z9hG4bKsps";
#define MAX_FLOW_TOKEN 68 /* flowtoken.MAX_TOKEN_LENGTH */

/* After `;branch=` of our Via: `z9hG4bKsps<hex>.<hex>;sk=<a-z><hex>-<hex>[-<hex>]` and nothing else.
 * key: the socket part of sk; cid: the flow token naming the connection (empty when none). */
static int our_via_tail(const char *p, Span t, Span *key, Span *cid) {
    Py_ssize_t n = (Py_ssize_t)sizeof OUR_BRANCH - 1;
    if (t.e - t.s < n || memcmp(p + t.s, OUR_BRANCH, (size_t)n) != 0) return 0;
    Py_ssize_t i = t.s + n;
#define HEX(c) (is_digit(c) || ((c) >= 'a' && (c) <= 'f'))
#define HEXRUN()                                                                                         \
    do {                                                                                                 \
        Py_ssize_t run = i;                                                                              \
        while (i < t.e && HEX(p[i])) i++;                                                 \
        if (i == run) return 0;                                                                          \
    } while (0)
    HEXRUN();
    if (i >= t.e || p[i++] != '.') return 0;
    HEXRUN();
    if (t.e - i < 4 || memcmp(p + i, ";sk=", 4) != 0) return 0;
    i += 4;
    key->s = i;
    if (i >= t.e || p[i] < 'a' || p[i] > 'z') return 0;
    i++;
    HEXRUN();
    if (i >= t.e || p[i++] != '-') return 0;
    HEXRUN();
    key->e = i;
    *cid = (Span){i, i};
    if (i < t.e) {
        if (p[i++] != '-') return 0;
        cid->s = i;
        HEXRUN();
        cid->e = i;
    }
#undef HEXRUN
#undef HEX
    return i == t.e;
}

static int cseq_number_ok(const char *p, Span v) {
    Py_ssize_t i = v.s;
    while (i < v.e && p[i] != ' ' && p[i] != '\t') i++;
    long long n = number(p, (Span){v.s, i}, 10);
    return n >= 0 && n <= 4294967295LL;
}

/* The response as it goes on: our Via line cut out when it holds ours alone, else rewritten as
 * `name: v2, v3` from the values after ours, each trimmed, the way the general path joins them. None
 * when one of those values is empty (the general path decides what that means). */
static PyObject *without_our_via(const char *p, Py_ssize_t n, Span line, Span name, Span rest) {
    if (rest.e == rest.s) { /* the line and the CRLF before it: the start line always precedes */
        Py_ssize_t cut_start = line.s - 2, cut_end = line.e;
        PyObject *out = PyBytes_FromStringAndSize(NULL, n - (cut_end - cut_start));
        if (out == NULL) return NULL;
        memcpy(PyBytes_AS_STRING(out), p, (size_t)cut_start);
        memcpy(PyBytes_AS_STRING(out) + cut_start, p + cut_end, (size_t)(n - cut_end));
        return out;
    }
    Py_ssize_t size = line.s + (name.e - name.s) + 2 + (n - line.e);
    int values = 0;
    for (Py_ssize_t i = rest.s; i <= rest.e;) { /* first pass: sizes */
        Py_ssize_t comma = find_char(p, i, rest.e, ',');
        Span v = trim(p, (Span){i, comma < 0 ? rest.e : comma});
        if (v.e == v.s) Py_RETURN_NONE;
        size += (v.e - v.s) + (values++ ? 2 : 0);
        i = comma < 0 ? rest.e + 1 : comma + 1;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, p, (size_t)line.s);
    o += line.s;
    memcpy(o, p + name.s, (size_t)(name.e - name.s));
    o += name.e - name.s;
    memcpy(o, ": ", 2);
    o += 2;
    values = 0;
    for (Py_ssize_t i = rest.s; i <= rest.e;) {
        Py_ssize_t comma = find_char(p, i, rest.e, ',');
        Span v = trim(p, (Span){i, comma < 0 ? rest.e : comma});
        if (values++) {
            memcpy(o, ", ", 2);
            o += 2;
        }
        memcpy(o, p + v.s, (size_t)(v.e - v.s));
        o += v.e - v.s;
        i = comma < 0 ? rest.e + 1 : comma + 1;
    }
    memcpy(o, p + line.e, (size_t)(n - line.e));
    return out;
}

/* scan_response(data) -> (via_prefix, socket_key, connection_id, forwarded, transport, host, port, received,
 *                         rport)
 * or None.
 *
 * via_prefix: our Via value up to and including `;branch=` (the engine checks it is one of its own);
 * socket_key and connection_id: its `sk` as listeners.parse_socket_key splits it (the flow token, bytes);
 * forwarded: the message without our Via line; the rest describes the next Via as via.Via would (received as written, rport as
 * a number or None).
 */
static PyObject *scan_response(PyObject *Py_UNUSED(module), PyObject *arg) {
    Scan m;
    if (!scan_init(&m, arg, "scan_response")) return NULL;
    const char *p = m.p;
    if (m.n < 13 || memcmp(p, "SIP/2.0 ", 8) != 0) Py_RETURN_NONE;
    if (!is_digit(p[8]) || !is_digit(p[9]) || !is_digit(p[10]) || p[8] < '1' || p[8] > '6') Py_RETURN_NONE;
    if (p[11] != ' ' && !(p[11] == '\r' && p[12] == '\n')) Py_RETURN_NONE;
    if (!scan_headers(&m)) Py_RETURN_NONE;
    Seen *vias = &m.seen[H_VIA];
    if (vias->count < 1 || vias->count > MAX_SEEN) Py_RETURN_NONE;

    /* Ours is the first Via value; the next one follows it on the same line (SIPp and others write all
     * Vias of a response on one line) or starts the next Via line. */
    Span ours, rest, next, next_rest;
    if (!first_value(p, vias->value[0], &ours, &rest)) Py_RETURN_NONE;
    if (rest.e > rest.s) {
        if (!first_value(p, rest, &next, &next_rest)) Py_RETURN_NONE;
    } else if (vias->count < 2 || !first_value(p, vias->value[1], &next, &next_rest)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t branch_at = find(p, ours.s, ours.e, ";branch=", 8);
    if (branch_at < 0) Py_RETURN_NONE;
    Span prefix = {ours.s, branch_at + 8};
    Span key, cid;
    if (!our_via_tail(p, (Span){prefix.e, ours.e}, &key, &cid)) Py_RETURN_NONE;
    if (cid.e - cid.s > MAX_FLOW_TOKEN) Py_RETURN_NONE; /* not a token we made */

    Seen *cseq = &m.seen[H_CSEQ];
    if (cseq->count > 0 && !cseq_number_ok(p, cseq->value[0])) Py_RETURN_NONE;
    Seen *cl = &m.seen[H_CONTENT_LENGTH];
    if (cl->count != 1 || number(p, cl->value[0], 10) != m.n - m.head_end - 4) Py_RETURN_NONE;

    Via via;
    if (!parse_via(p, next, &via)) Py_RETURN_NONE;
    PyObject *forwarded = without_our_via(p, m.n, vias->line[0], vias->name[0], rest);
    if (forwarded == NULL) return NULL;
    if (forwarded == Py_None) return forwarded;
    PyObject *connection_id; /* the flow token naming the connection, checked by the engine */
    if (cid.e > cid.s) {
        connection_id = bytes_of(p, cid);
    } else {
        connection_id = Py_NewRef(Py_None);
    }
    PyObject *received;
    if (via.has_received) {
        received = PyUnicode_DecodeLatin1(p + via.received.s, via.received.e - via.received.s, NULL);
    } else {
        received = Py_NewRef(Py_None);
    }
    if (received == NULL || connection_id == NULL) {
        Py_DECREF(forwarded);
        Py_XDECREF(received);
        Py_XDECREF(connection_id);
        return NULL;
    }
    return Py_BuildValue("(NNNNNNNNN)", bytes_of(p, prefix), bytes_of(p, key), connection_id, forwarded,
                         cased_str_of(p, via.transport, 1), lower_str_of(p, via.host), port_of(via.port),
                         received, rport_of(p, &via));
}

/* ------------------------------------------------------------------ requests */

/* A From or To value that `split_values` returns as exactly one non-empty value, with brackets that
 * nest properly. */
static int one_address(const char *p, Span v) {
    if (v.e <= v.s) return 0;
    int depth = 0, quoted = 0;
    for (Py_ssize_t i = v.s; i < v.e; i++) {
        char c = p[i];
        if (quoted) {
            if (c == '\\') i++;
            else if (c == '"') quoted = 0;
        } else if (c == '"') {
            quoted = 1;
        } else if (c == '<') {
            depth++;
        } else if (c == '>') {
            if (--depth < 0) return 0;
        } else if (c == ',' && depth == 0) {
            return 0;
        }
    }
    return !quoted && depth == 0;
}

/* The `tag` of a From or To value, the way headers.header_tag finds it in its common form.
 * 1: found (tag set), 0: no tag, -1: an unusual form the general path must read. */
static int header_tag(const char *p, Span v, Span *tag) {
    Span params;
    Py_ssize_t lt = find_char(p, v.s, v.e, '<');
    if (lt >= 0) {
        Py_ssize_t gt = -1;
        for (Py_ssize_t i = v.e - 1; i >= v.s; i--)
            if (p[i] == '>') {
                gt = i;
                break;
            }
        if (gt < 0) return 0;
        params = (Span){gt + 1, v.e};
    } else {
        Py_ssize_t semi = find_char(p, v.s, v.e, ';');
        if (semi < 0) return 0;
        params = (Span){semi, v.e};
    }
    int tags = 0, has_tag_word = 0;
    Py_ssize_t at = -1;
    for (Py_ssize_t i = params.s; i + 3 <= params.e; i++) {
        if (lower(p[i]) == 't' && lower(p[i + 1]) == 'a' && lower(p[i + 2]) == 'g') {
            has_tag_word = 1;
            if (i + 3 < params.e && p[i + 3] == '=') {
                tags++;
                if (at < 0 && i > params.s && p[i - 1] == ';') at = i - 1;
                i += 3;
            }
        }
    }
    if (at >= 0 && tags == 1) {
        Py_ssize_t end = find_char(p, at + 5, params.e, ';');
        *tag = trim(p, (Span){at + 5, end < 0 ? params.e : end});
        return 1;
    }
    return has_tag_word ? -1 : 0;
}

typedef struct {
    Span user; /* empty: no user part */
    Span host, params;
    long port;
} SipUri;

/* `sip:[user@]host[:port][;params]` with no `?headers` and no IPv6 host; the scheme in any case. */
static int parse_ruri(const char *p, Span r, SipUri *uri) {
    if (r.e - r.s < 5 || lower(p[r.s]) != 's' || lower(p[r.s + 1]) != 'i' || lower(p[r.s + 2]) != 'p' ||
        p[r.s + 3] != ':')
        return 0;
    if (!all_in(p, r, URI)) return 0;
    Py_ssize_t rest = r.s + 4, at = -1;
    for (Py_ssize_t i = r.e - 1; i >= rest; i--)
        if (p[i] == '@') {
            at = i;
            break;
        }
    uri->user = (Span){0, 0};
    if (at >= 0) {
        uri->user = (Span){r.s + 4, at};
        rest = at + 1;
    }
    if (find_char(p, rest, r.e, '?') >= 0) return 0;
    Py_ssize_t i = rest;
    while (i < r.e && HOSTNAME[(unsigned char)p[i]]) i++;
    uri->host = (Span){rest, i};
    if (i == rest) return 0;
    uri->port = -1;
    if (i < r.e && p[i] == ':') {
        Py_ssize_t ps = ++i;
        while (i < r.e && p[i] != ';') i++;
        long long port = number(p, (Span){ps, i}, 5);
        if (port <= 0 || port > 65535) return 0;
        uri->port = (long)port;
    }
    if (i < r.e && p[i] != ';') return 0;
    uri->params = (Span){i, r.e};
    return 1;
}

/* Our branch for a request forwarded without Route headers: branch.make_branch of its transaction key
 * and loop key, both hashed here (branch.py says what they hold and why). */
static void our_branch(const char *p, Span ruri, const Via *top, int has_from_tag, Span from_tag, Span call_id,
                       Span cseq_number, Span via_value, const Seen *routes, char *out) {
    size_t n = sizeof OUR_BRANCH - 1;
    memcpy(out, OUR_BRANCH, n);
    Blake2s s;
    Span no_tag = {0, 0};
    Span tag = has_from_tag ? from_tag : no_tag;
    b2s_init(&s, 10);
    if (top->has_branch && top->branch.e - top->branch.s > 7 && memcmp(p + top->branch.s, "z9hG4bK", 7) == 0) {
        b2s_update(&s, "b", 1);
        b2s_update(&s, &NUL, 1);
        b2s_span(&s, p, top->branch);
    } else { /* RFC 2543 peers: no usable branch */
        Span parts[5] = {via_value, tag, call_id, cseq_number, ruri};
        b2s_update(&s, "v", 1);
        for (int k = 0; k < 5; k++) {
            b2s_update(&s, &NUL, 1);
            b2s_span(&s, p, parts[k]);
        }
    }
    b2s_hex(&s, out + n);
    out[n + 20] = '.';
    b2s_init(&s, 4);
    Span loop[4] = {ruri, tag, call_id, cseq_number};
    for (int k = 0; k < 4; k++) {
        b2s_span(&s, p, loop[k]);
        b2s_update(&s, &NUL, 1); /* the last NUL precedes the Route values */
    }
    for (int k = 0; k < routes->count; k++) { /* the Route lines' values as received, joined by commas */
        if (k) b2s_update(&s, ",", 1);
        b2s_span(&s, p, routes->value[k]);
    }
    b2s_hex(&s, out + n + 21);
}

#define OUR_BRANCH_LEN (sizeof OUR_BRANCH - 1 + 20 + 1 + 8)

/* The first parameter `name` of a URI's `;params` as headers.find_param finds it: 1 found (*value the value,
 * empty for a flag), 0 absent. */
static int uri_param(const char *p, Span params, const char *name, Span *value) {
    Py_ssize_t i = params.s;
    while (i < params.e) {
        Py_ssize_t ps = i + 1, pe = find_char(p, ps, params.e, ';');
        if (pe < 0) pe = params.e;
        Py_ssize_t eq = find_char(p, ps, pe, '=');
        if (span_ieq(p, (Span){ps, eq < 0 ? pe : eq}, name)) {
            *value = eq < 0 ? (Span){pe, pe} : (Span){eq + 1, pe};
            return 1;
        }
        i = pe;
    }
    return 0;
}

#define MAX_ROUTES 2 /* ours, or our double Record-Route (RFC 5658): all a scanned request may carry */

typedef struct {
    SipUri uri;
    int r2;
    Span transport; /* empty: none */
} Route;

/* The Route set of an in-dialog request, when it is at most our own entries: every value `[name] <sip:uri>`
 * with a URI the scan reads. 0: anything else (the general path routes it). */
static int scan_routes(const char *p, const Seen *lines, Route *routes, int *count) {
    *count = 0;
    if (lines->count > MAX_SEEN) return 0;
    for (int k = 0; k < lines->count; k++) {
        Span v = lines->value[k];
        Py_ssize_t i = v.s;
        while (i <= v.e) {
            Py_ssize_t lt = find_char(p, i, v.e, '<');
            if (lt < 0) return 0;
            Py_ssize_t gt = find_char(p, lt, v.e, '>');
            if (gt < 0) return 0;
            Py_ssize_t end = find_char(p, gt, v.e, ',');
            if (end < 0) end = v.e;
            for (Py_ssize_t j = i; j < end; j++) /* one value: no quote, comma or other bracket in it */
                if (p[j] == '"' || p[j] == ',' || (j != lt && p[j] == '<') || (j != gt && p[j] == '>')) return 0;
            if (*count == MAX_ROUTES) return 0;
            Route *r = &routes[(*count)++];
            if (!parse_ruri(p, trim(p, (Span){lt + 1, gt}), &r->uri)) return 0;
            Span value;
            r->r2 = uri_param(p, r->uri.params, "r2", &value);
            r->transport = (Span){0, 0};
            if (uri_param(p, r->uri.params, "transport", &value)) r->transport = value;
            i = end + 1;
            if (end < v.e && trim(p, (Span){i, v.e}).e == trim(p, (Span){i, v.e}).s) return 0; /* `a,` */
        }
    }
    return *count > 0;
}

static PyObject *route_of(const char *p, const Route *r) {
    PyObject *transport;
    if (r->transport.e > r->transport.s) {
        transport = lower_str_of(p, r->transport);
    } else {
        transport = Py_NewRef(Py_None);
    }
    PyObject *user;
    if (r->uri.user.e > r->uri.user.s) {
        user = bytes_of(p, r->uri.user);
    } else {
        user = Py_NewRef(Py_None);
    }
    return Py_BuildValue("(NNONN)", lower_str_of(p, r->uri.host), port_of(r->uri.port), r->r2 ? Py_True : Py_False,
                         transport, user);
}

/* Our view of the sender, for the received/rport parameters of its Via (RFC 3261 18.2.1, RFC 3581). */
typedef struct {
    const char *ip;
    Py_ssize_t iplen;
    long port;
} Source;

/* Appends `n` bytes to *o unless counting only (o NULL); returns n. */
static Py_ssize_t put(char **o, const char *from, Py_ssize_t n) {
    if (*o != NULL) {
        memcpy(*o, from, (size_t)n);
        *o += n;
    }
    return n;
}

/* The top Via line rewritten as via.fix_received writes it: a flag rport filled with the source port,
 * received set (replaced where present) to the source address. Writes at *o (NULL: counts only); returns the
 * length. The value has the plain form parse_via accepted, so its parameters are exactly `;name[=value]`. */
static Py_ssize_t fixed_via(const char *p, Span name, Span value, const Source *src, char **o) {
    char port[32]; /* any long fits: the length snprintf returns is what it wrote */
    int nport = snprintf(port, sizeof port, "%ld", src->port);
    Py_ssize_t n = put(o, p + name.s, name.e - name.s) + put(o, ": ", 2);
    Py_ssize_t i = find_char(p, value.s, value.e, ';');
    if (i < 0) i = value.e;
    n += put(o, p + value.s, i - value.s);
    int received = 0;
    while (i < value.e) {
        Py_ssize_t end = find_char(p, i + 1, value.e, ';');
        if (end < 0) end = value.e;
        Py_ssize_t eq = find_char(p, i + 1, end, '=');
        Span pname = {i + 1, eq < 0 ? end : eq};
        if (eq < 0 && span_ieq(p, pname, "rport")) {
            n += put(o, ";rport=", 7) + put(o, port, nport);
        } else if (span_ieq(p, pname, "received")) {
            n += put(o, ";received=", 10) + put(o, src->ip, src->iplen);
            received = 1;
        } else {
            n += put(o, p + i, end - i);
        }
        i = end;
    }
    if (!received) n += put(o, ";received=", 10) + put(o, src->ip, src->iplen);
    return n;
}

/* The request's header lines as they go on (each with its CRLF): the top Via fixed when `fix_via`,
 * Max-Forwards decremented (or added first when missing), the Route lines left out when `drop_routes`. */
static PyObject *header_lines(const Scan *m, long long max_forwards, int drop_routes, int fix_via,
                              const Source *src) {
    const char *p = m->p;
    const Seen *mf = &m->seen[H_MAX_FORWARDS], *routes = &m->seen[H_ROUTE], *vias = &m->seen[H_VIA];
    enum { DROP, MF, VIA };
    struct {
        Span line;
        int kind;
    } cut[MAX_SEEN + 2]; /* lines to leave out or rewrite, in order */
    int cuts = 0;
    for (int k = 0; drop_routes && k < routes->count; k++) {
        cut[cuts].line = routes->line[k];
        cut[cuts++].kind = DROP;
    }
    Span extra[2];
    int kinds[2], extras = 0;
    if (mf->count) {
        extra[extras] = mf->line[0];
        kinds[extras++] = MF;
    }
    if (fix_via) {
        extra[extras] = vias->line[0];
        kinds[extras++] = VIA;
    }
    for (int x = 0; x < extras; x++) { /* insertion into the ordered list */
        int at = cuts++;
        while (at > 0 && cut[at - 1].line.s > extra[x].s) {
            cut[at] = cut[at - 1];
            at--;
        }
        cut[at].line = extra[x];
        cut[at].kind = kinds[x];
    }
    char digits[24];
    int ndigits = max_forwards > 0 ? snprintf(digits, sizeof digits, ": %lld", max_forwards - 1) : 0;
    static const char ADDED[] = "Max-Forwards: 70\r\n";
    Py_ssize_t size = m->head_end - m->start_end + (mf->count ? 0 : (Py_ssize_t)sizeof ADDED - 1);
    char *counting = NULL;
    for (int k = 0; k < cuts; k++) {
        size -= cut[k].line.e + 2 - cut[k].line.s;
        if (cut[k].kind == MF) size += (mf->name[0].e - mf->name[0].s) + ndigits + 2;
        if (cut[k].kind == VIA) size += fixed_via(p, vias->name[0], vias->value[0], src, &counting) + 2;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    if (!mf->count) put(&o, ADDED, sizeof ADDED - 1);
    Py_ssize_t at = m->start_end + 2;
    for (int k = 0; k < cuts; k++) {
        put(&o, p + at, cut[k].line.s - at);
        if (cut[k].kind == MF) {
            put(&o, p + mf->name[0].s, mf->name[0].e - mf->name[0].s);
            put(&o, digits, ndigits);
        } else if (cut[k].kind == VIA) {
            fixed_via(p, vias->name[0], vias->value[0], src, &o);
        }
        if (cut[k].kind != DROP) put(&o, "\r\n", 2);
        at = cut[k].line.e + 2;
    }
    put(&o, p + at, m->head_end + 2 - at);
    return out;
}

/* scan_request(data) -> (method, ruri, ruri_host, ruri_port, ruri_params, via_host, via_rport, has_to_tag,
 *                        branch, header_lines, content_length, start_end, head_end, routes)
 * or None.
 *
 * None for anything the fast path does not forward on its own: Proxy-Require, a Route set that is not
 * just ours inside a dialog, a Via of ours below the top one (a loop check is due), any header the
 * general path would reject or read in a way this scan does not. via_host and via_rport say whether the
 * top Via needs received/rport (then the general path takes it); branch is the one our Via gets;
 * header_lines are the header lines as they go on (Max-Forwards decremented or added, Route lines left
 * out when there are routes: the engine forwards only when all are ours); content_length is -1 when
 * absent; start_end and head_end are the ends of the start line and of the header block; routes holds
 * (host, port, has_r2, transport, user) of each Route value, at most two.
 */
static PyObject *scan_request(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_request() takes (data, source_ip, source_port)");
        return NULL;
    }
    Scan m;
    if (!scan_init(&m, args[0], "scan_request")) return NULL;
    Source src;
    src.ip = PyUnicode_AsUTF8AndSize(args[1], &src.iplen);
    if (src.ip == NULL) return NULL;
    src.port = PyLong_AsLong(args[2]);
    if (src.port == -1 && PyErr_Occurred()) return NULL;
    const char *p = m.p;
    if (!scan_headers(&m)) Py_RETURN_NONE;

    /* METHOD SP Request-URI SP SIP/2.0, one space each. */
    Py_ssize_t sp1 = find_char(p, 0, m.start_end, ' ');
    if (sp1 <= 0) Py_RETURN_NONE;
    Py_ssize_t sp2 = find_char(p, sp1 + 1, m.start_end, ' ');
    if (sp2 < 0 || sp2 == sp1 + 1) Py_RETURN_NONE;
    Span method = {0, sp1}, ruri = {sp1 + 1, sp2};
    if (!all_in(p, method, TOKEN)) Py_RETURN_NONE;
    if (m.start_end - sp2 - 1 != 7 || memcmp(p + sp2 + 1, "SIP/2.0", 7) != 0) Py_RETURN_NONE;
    SipUri uri;
    if (!parse_ruri(p, ruri, &uri)) Py_RETURN_NONE;

    Seen *s = m.seen;
    if (s[H_PROXY_REQUIRE].count) Py_RETURN_NONE;
    if (s[H_VIA].count < 1 || s[H_VIA].count > MAX_SEEN || s[H_FROM].count != 1 || s[H_TO].count != 1 ||
        s[H_CALL_ID].count != 1 || s[H_CSEQ].count != 1 || s[H_MAX_FORWARDS].count > 1 ||
        s[H_CONTENT_LENGTH].count > MAX_SEEN)
        Py_RETURN_NONE;

    /* Every Via value must parse (RFC 4475 3.1.2.1); one of ours below the top needs the loop check. */
    Via top, via;
    for (int k = 0; k < s[H_VIA].count; k++) {
        Span v = s[H_VIA].value[k];
        if (!single_plain(p, v) || !parse_via(p, v, k == 0 ? &top : &via)) Py_RETURN_NONE;
        if (s[H_VIA].count > 1 && find(p, v.s, v.e, OUR_BRANCH, sizeof OUR_BRANCH - 1) >= 0) Py_RETURN_NONE;
    }

    Span cseq = s[H_CSEQ].value[0];
    Py_ssize_t i = cseq.s;
    while (i < cseq.e && p[i] != ' ' && p[i] != '\t') i++;
    Span cseq_number = {cseq.s, i};
    while (i < cseq.e && (p[i] == ' ' || p[i] == '\t')) i++;
    Span cseq_method = {i, cseq.e};
    long long n = number(p, cseq_number, 10);
    if (n < 0 || n > 4294967295LL || !span_eq(p, cseq_method, method)) Py_RETURN_NONE;

    long long max_forwards = -1;
    if (s[H_MAX_FORWARDS].count) {
        max_forwards = number(p, s[H_MAX_FORWARDS].value[0], 10);
        if (max_forwards <= 0) Py_RETURN_NONE; /* malformed, or 0: an answer, not a forward */
    }

    Span call_id = s[H_CALL_ID].value[0];
    if (call_id.e == call_id.s) Py_RETURN_NONE;
    Span from = s[H_FROM].value[0], to = s[H_TO].value[0];
    if (!one_address(p, from) || !one_address(p, to)) Py_RETURN_NONE;
    Span from_tag, to_tag;
    int has_from_tag = header_tag(p, from, &from_tag), has_to_tag = header_tag(p, to, &to_tag);
    if (has_from_tag < 0 || has_to_tag < 0) Py_RETURN_NONE;

    /* Route: only inside a dialog (outside, the rules still apply to it), only our own entries, and not a
     * Request-URI an upstream strict router rewrote (one with `lr`). */
    Route routes[MAX_ROUTES];
    int nroutes = 0;
    Span lr;
    if (s[H_ROUTE].count &&
        (has_to_tag != 1 || uri_param(p, uri.params, "lr", &lr) || !scan_routes(p, &s[H_ROUTE], routes, &nroutes)))
        Py_RETURN_NONE;

    long long content_length = -1;
    Seen *cl = &s[H_CONTENT_LENGTH];
    for (int k = 0; k < cl->count; k++) {
        if (!span_eq(p, cl->value[k], cl->value[0])) Py_RETURN_NONE;
    }
    if (cl->count) {
        content_length = number(p, cl->value[0], 10);
        if (content_length < 0 || content_length > m.n - m.head_end - 4) Py_RETURN_NONE;
    }

    char branch[OUR_BRANCH_LEN];
    our_branch(p, ruri, &top, has_from_tag == 1, from_tag, call_id, cseq_number, s[H_VIA].value[0], &s[H_ROUTE],
               branch);
    PyObject *route_set = PyTuple_New(nroutes);
    if (route_set == NULL) return NULL;
    for (int k = 0; k < nroutes; k++) {
        PyObject *one = route_of(p, &routes[k]);
        if (one == NULL) {
            Py_DECREF(route_set);
            return NULL;
        }
        PyTuple_SET_ITEM(route_set, k, one);
    }
    /* via.fix_received: received when the sent-by host is not the source address, rport filled when asked. */
    int fix_via = top.has_rport || (top.host.e - top.host.s) != src.iplen;
    for (Py_ssize_t k = 0; !fix_via && k < src.iplen; k++) fix_via = lower(p[top.host.s + k]) != src.ip[k];
    return Py_BuildValue("(NNNNNONNLnnN)", bytes_of(p, method), bytes_of(p, ruri), lower_str_of(p, uri.host),
                         port_of(uri.port), bytes_of(p, uri.params), has_to_tag == 1 ? Py_True : Py_False,
                         PyBytes_FromStringAndSize(branch, (Py_ssize_t)OUR_BRANCH_LEN),
                         header_lines(&m, max_forwards, nroutes > 0, fix_via, &src), content_length, m.start_end,
                         m.head_end, route_set);
}

static PyMethodDef methods[] = {
    {"scan_response", scan_response, METH_O, "The usual response's forwarding facts, or None."},
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL,
     "The usual request's forwarding facts, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_scan",
    .m_doc = "One-pass scans of usual SIP messages.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void) {
    init_tables();
    return PyModule_Create(&module);
}
