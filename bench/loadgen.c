/*
 * ssehub benchmark load generator: many SSE subscribers plus a paced HTTP publisher in one epoll loop.
 *
 * One process, one thread, non-blocking sockets, level-triggered epoll. Subscribers parse HTTP/1.1 (chunked or
 * not) and the SSE stream byte by byte; the publisher POSTs events at a steady rate over a few keep-alive
 * connections. Each event's data is {"t":<CLOCK_MONOTONIC ns>,"s":<global sequence>,"p":"xxx..."} (~100 bytes):
 * publisher and subscribers are this one process, so t is on the same clock as the receive time.
 *
 * Modes (--mode):
 *   idle    open --subs connections as fast as --connect-inflight allows, report opens/s, print a "ready" line,
 *           hold --hold seconds, then publish one event per channel and count the subscribers that get it.
 *   ladder  open the subscribers, then for each rate in --rates publish for --step seconds, drain, report one
 *           "step" line (deliveries/s, loss, order, latency percentiles, own CPU); stop after the first step that
 *           fails (loss, p99 >= --p99-max-ms, or publish rate < 95% of the target) unless --no-stop; then
 *           bisect --refine times between the last passing and the first failing rate. With --loss-only the
 *           ladder goes on past latency failures and stops at loss (the baseline's loss-free peak).
 *   storm   open the subscribers, publish --warm events, close every subscriber, publish --behind events, then
 *           reconnect all at once with Last-Event-ID and time until every one has caught up, checking that each
 *           gets exactly the missed events in order.
 * Publishing: HTTP POSTs over --pub-conns keep-alive connections, one request in flight each; or, with
 * --pub-exec CMD, through --pub-conns relay processes (CMD run by /bin/sh, e.g. bench/relay.py publishing with
 * ssehub.Publisher, the way workers publish), each on a socketpair as its stdin/stdout: the relay prints
 * "ready", then reads lines "<g> <channel> <data>" and answers "<g> 1" (published) or "<g> 0", up to
 * --pub-window lines in flight per relay, so that it can batch what queued up.
 * Every line on stdout is one JSON object. Every phase has a deadline: the program always stops by itself.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_LEN 1024
#define ID_MAX 96
#define HIST_US_STEP 10              /* histogram bucket width: 10 us */
#define HIST_BUCKETS (6000000 / HIST_US_STEP) /* up to 60 s */

enum { K_SUB = 1, K_PUB = 2, K_RELAY = 3 };
enum { S_CLOSED = 0, S_CONNECTING, S_HDR, S_BODY, S_IDLE, S_WAIT };
enum { CH_SIZE = 0, CH_SIZE_EXT, CH_DATA, CH_DATA_CR, CH_DATA_LF };

typedef struct conn {
    int fd;
    uint8_t kind, state, chunked, chstate, status_ok, line_overflow, has_s, has_t;
    uint16_t llen;
    uint8_t pend_id_len, last_id_len;
    int idx, chan;
    uint32_t chrem;
    int64_t ev_s, ev_t;
    int64_t last_g, expect_next; /* expect_next: storm mode, next channel index expected */
    int64_t open_ns;
    uint32_t recv, errors;
    int caught_up, content_length; /* pub: body bytes still expected */
    int inflight, pid;             /* relay: lines sent and not answered yet; its process */
    char pend_id[ID_MAX];
    char last_id[ID_MAX];
    char line[LINE_MAX_LEN];
} conn;

/* ---- options ---- */
static const char *o_host = "127.0.0.1";
static int o_port = 0, o_src_addrs = 1, o_subs = 0, o_channels = 1, o_pub_conns = 4, o_inflight = 256;
static const char *o_sub_path = "/api/v1/events/stream?channels=bench%d";
static const char *o_pub_path = "/api/v1/events/publish";
static const char *o_chan_fmt = "bench%d";
static const char *o_header = NULL; /* --header "Name: value": sent with every request (e.g. credentials) */
static int o_pub_raw = 0, o_payload = 100, o_no_stop = 0, o_warm = 5, o_behind = 100, o_refine = 0, o_loss_only = 0;
static const char *o_mode = "ladder";
static double o_recover = 2, o_step = 5, o_warmup = 1, o_drain = 3, o_p99_max_ms = 100, o_hold = 2, o_connect_timeout = 30;
static double o_rates[64];
static int o_server_pids[32], o_nserver_pids;
static int o_redis_pids[8], o_nredis_pids;
static const char *o_pub_exec = NULL;
static int o_pub_window = 64;
static int o_nrates = 0;

/* ---- state ---- */
static int ep;
static conn *subs, *pubs;
static int *subs_per_chan;
static struct sockaddr_in dst;
static int64_t n_open, n_failed, n_pending, n_closed_unexpected;
static int next_src;

/* events published: global sequence g */
static int64_t ev_cap, ev_n;
static int64_t *ev_send, *ev_done;
static int32_t *ev_chan, *ev_cidx;
static uint8_t *ev_ok;
static int64_t *chan_next_idx;

/* step accounting */
static int64_t st_reads; /* successful reads on subscriber sockets: events per read shows the server's coalescing */
static int64_t st_g0, st_measure_from, st_expected, st_received, st_late, st_order, st_dups;
static uint32_t *hist;
static int64_t hist_n, hist_max_us;
static int storm_phase, storm_done_count;
static int64_t storm_final_idx, storm_bad_gap, storm_bad_dup;
static volatile sig_atomic_t stop_flag;

static int64_t loop_now; /* refreshed by the event loop every few events: cheaper than a clock read per event */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds (user + system, all threads) used so far by the processes named */
static double pids_cpu_seconds(const int *pids, int npids) {
    double total = 0;
    for (int k = 0; k < npids; k++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", pids[k]);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        unsigned long long ut = 0, st = 0;
        /* after the command name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
            total += (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    }
    return total;
}

/* the server processes named with --server-pids */
static double server_cpu_seconds(void) { return pids_cpu_seconds(o_server_pids, o_nserver_pids); }
/* --redis-pids: a Redis that is not on the server's core, reported on its own */
static double redis_cpu_seconds(void) { return pids_cpu_seconds(o_redis_pids, o_nredis_pids); }
static double relay_cpu_seconds(void);

static void die(const char *msg) {
    fprintf(stderr, "loadgen: %s: %s\n", msg, strerror(errno));
    exit(2);
}

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

/* ---- events ---- */
static int64_t new_event(int chan) {
    if (ev_n == ev_cap) {
        ev_cap = ev_cap ? ev_cap * 2 : 65536;
        ev_send = realloc(ev_send, ev_cap * sizeof *ev_send);
        ev_done = realloc(ev_done, ev_cap * sizeof *ev_done);
        ev_chan = realloc(ev_chan, ev_cap * sizeof *ev_chan);
        ev_cidx = realloc(ev_cidx, ev_cap * sizeof *ev_cidx);
        ev_ok = realloc(ev_ok, ev_cap * sizeof *ev_ok);
        if (!ev_send || !ev_done || !ev_chan || !ev_cidx || !ev_ok) die("realloc");
    }
    int64_t g = ev_n++;
    ev_send[g] = 0;
    ev_done[g] = 0;
    ev_ok[g] = 0;
    ev_chan[g] = chan;
    ev_cidx[g] = (int32_t)chan_next_idx[chan]++;
    return g;
}

/* ---- sockets ---- */
static void ep_ctl(int op, conn *c, uint32_t events) {
    struct epoll_event e = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &e) < 0) die("epoll_ctl");
}

static int open_socket(conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o_src_addrs > 1) {
        /* spread over 127.0.0.1..127.0.0.N so 10,000+ connections never run out of ephemeral ports */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = 0};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(next_src++ % o_src_addrs));
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            close(fd);
            return -1;
        }
    }
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->state = S_CONNECTING;
    ep_ctl(EPOLL_CTL_ADD, c, EPOLLOUT);
    return 0;
}

static void close_conn(conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = S_CLOSED;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1; /* requests are small: a full fresh socket buffer is an error here */
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void reset_parser(conn *c) {
    c->chunked = 0;
    c->chstate = CH_SIZE;
    c->chrem = 0;
    c->llen = 0;
    c->line_overflow = 0;
    c->status_ok = 0;
    c->has_s = c->has_t = 0;
    c->pend_id_len = 0;
    c->content_length = -1;
}

static int sub_send_request(conn *c) {
    char path[512], req[1024];
    snprintf(path, sizeof path, o_sub_path, c->chan);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
                     path, o_host, o_port);
    if (c->last_id_len)
        n += snprintf(req + n, sizeof req - n, "Last-Event-ID: %.*s\r\n", (int)c->last_id_len, c->last_id);
    if (o_header) n += snprintf(req + n, sizeof req - n, "%s\r\n", o_header);
    n += snprintf(req + n, sizeof req - n, "\r\n");
    return write_all(c->fd, req, (size_t)n);
}

static int sub_start(conn *c) {
    reset_parser(c);
    if (open_socket(c) < 0) {
        n_failed++;
        return -1;
    }
    n_pending++;
    return 0;
}

/* ---- publisher ---- */
static int pub_send(conn *p, int64_t g) {
    char data[512], body[1024], req[2048], path[256], chan[128];
    int64_t t = now_ns();
    int dn = snprintf(data, sizeof data, "{\"t\":%lld,\"s\":%lld,\"p\":\"", (long long)t, (long long)g);
    int pad = o_payload - dn - 2;
    if (pad < 1) pad = 1;
    if (pad > 400) pad = 400;
    memset(data + dn, 'x', (size_t)pad);
    dn += pad;
    dn += snprintf(data + dn, sizeof data - dn, "\"}");
    snprintf(chan, sizeof chan, o_chan_fmt, ev_chan[g]);
    snprintf(path, sizeof path, o_pub_path, ev_chan[g]);
    int bn;
    if (o_pub_raw)
        bn = snprintf(body, sizeof body, "%s", data);
    else
        bn = snprintf(body, sizeof body, "{\"channel\":\"%s\",\"event\":\"bench\",\"data\":%s}", chan, data);
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     "%s%s\r\n%s",
                     path, o_host, o_port, bn, o_header ? o_header : "", o_header ? "\r\n" : "", body);
    ev_send[g] = t;
    if (write_all(p->fd, req, (size_t)n) < 0) return -1;
    p->last_g = g;
    p->state = S_WAIT;
    reset_parser(p);
    return 0;
}

static void pub_done(conn *p, int ok) {
    int64_t g = p->last_g;
    ev_done[g] = now_ns();
    ev_ok[g] = (uint8_t)ok;
    if (ok && g >= st_g0) st_expected += subs_per_chan[ev_chan[g]];
    if (!ok) p->errors++;
    p->state = S_IDLE;
}

/* ---- receive side ---- */
static void hist_add(int64_t lat_ns) {
    int64_t us = lat_ns / 1000;
    if (us < 0) us = 0;
    int64_t b = us / HIST_US_STEP;
    if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
    hist[b]++;
    hist_n++;
    if (us > hist_max_us) hist_max_us = us;
}

static double hist_pct(double q) {
    if (!hist_n) return -1;
    int64_t want = (int64_t)(q * (double)hist_n);
    if (want >= hist_n) want = hist_n - 1;
    int64_t acc = 0;
    for (int64_t b = 0; b < HIST_BUCKETS; b++) {
        acc += hist[b];
        if (acc > want) return (double)(b * HIST_US_STEP + HIST_US_STEP / 2) / 1000.0;
    }
    return (double)hist_max_us / 1000.0;
}

static void on_event(conn *c) {
    if (c->pend_id_len) {
        memcpy(c->last_id, c->pend_id, c->pend_id_len);
        c->last_id_len = c->pend_id_len;
    }
    if (!c->has_s) return;
    int64_t g = c->ev_s, now = loop_now;
    if (g < 0 || g >= ev_n) return; /* not ours */
    c->recv++;
    if (storm_phase) {
        int64_t idx = ev_cidx[g];
        if (idx == c->expect_next) c->expect_next++;
        else if (idx < c->expect_next) storm_bad_dup++;
        else {
            storm_bad_gap += idx - c->expect_next;
            c->expect_next = idx + 1;
        }
        if (storm_phase == 2 && !c->caught_up && idx >= storm_final_idx) {
            c->caught_up = 1;
            storm_done_count++;
        }
        c->last_g = g;
        return;
    }
    if (g < st_g0) {
        st_late++;
    } else {
        st_received++;
        if (c->has_t && ev_send[g] >= st_measure_from) hist_add(now - c->ev_t);
    }
    if (c->last_g >= 0 && g <= c->last_g) {
        if (g == c->last_g) st_dups++;
        /* concurrent POSTs may be ordered either way; only a strictly earlier publish arriving later is wrong */
        else if (ev_done[g] && ev_done[g] < ev_send[c->last_g]) st_order++;
    }
    if (g > c->last_g) c->last_g = g;
}

static int64_t parse_int_after(const char *s, int len, const char *key) {
    int kl = (int)strlen(key);
    for (int i = 0; i + kl <= len; i++) {
        if (s[i] == key[0] && memcmp(s + i, key, (size_t)kl) == 0) {
            int j = i + kl;
            while (j < len && s[j] == ' ') j++;
            if (j >= len || s[j] < '0' || s[j] > '9') return -1;
            int64_t v = 0;
            while (j < len && s[j] >= '0' && s[j] <= '9') v = v * 10 + (s[j++] - '0');
            return v;
        }
    }
    return -1;
}

static void on_sse_line(conn *c, const char *l, int n) {
    if (n == 0) {
        on_event(c);
        c->has_s = c->has_t = 0;
        c->pend_id_len = 0;
        return;
    }
    if (n >= 5 && memcmp(l, "data:", 5) == 0) {
        int64_t s = parse_int_after(l + 5, n - 5, "\"s\":");
        int64_t t = parse_int_after(l + 5, n - 5, "\"t\":");
        if (s >= 0) {
            c->has_s = 1;
            c->ev_s = s;
        }
        if (t >= 0) {
            c->has_t = 1;
            c->ev_t = t;
        }
    } else if (n >= 3 && memcmp(l, "id:", 3) == 0) {
        int off = (n > 3 && l[3] == ' ') ? 4 : 3;
        int len = n - off;
        if (len > ID_MAX) len = ID_MAX;
        memcpy(c->pend_id, l + off, (size_t)len);
        c->pend_id_len = (uint8_t)len;
    }
}

/* HTTP header lines (sub and pub); returns -1 on a bad status */
static int on_header_line(conn *c, const char *l, int n) {
    if (!c->status_ok) {
        if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0) return -1;
        int code = atoi(l + 9);
        if (c->kind == K_SUB && code != 200) return -1;
        c->status_ok = (uint8_t)(code >= 200 && code < 300 ? 1 : 2);
        return 0;
    }
    if (n == 0) {
        c->state = S_BODY;
        return 1;
    }
    if (n > 18 && strncasecmp(l, "transfer-encoding:", 18) == 0 && memmem(l, (size_t)n, "chunked", 7))
        c->chunked = 1;
    if (n > 15 && strncasecmp(l, "content-length:", 15) == 0) c->content_length = atoi(l + 15);
    return 0;
}

/* feed decoded body bytes to the SSE line parser */
static void sse_feed(conn *c, const char *b, size_t n) {
    while (n) {
        const char *nl = memchr(b, '\n', n);
        size_t take = nl ? (size_t)(nl - b) : n;
        size_t room = LINE_MAX_LEN - c->llen;
        if (take > room) {
            c->line_overflow = 1; /* keep the head of an over-long line: the fields we need are at its start */
            memcpy(c->line + c->llen, b, room);
            c->llen = LINE_MAX_LEN;
        } else {
            memcpy(c->line + c->llen, b, take);
            c->llen += (uint16_t)take;
        }
        if (!nl) return;
        int len = c->llen;
        if (len && c->line[len - 1] == '\r') len--;
        on_sse_line(c, c->line, len);
        c->llen = 0;
        c->line_overflow = 0;
        b = nl + 1;
        n -= take + 1;
    }
}

/* returns -1 when the stream ended or is broken */
static int sub_feed(conn *c, const char *b, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (c->state == S_HDR) {
            char ch = b[i++];
            if (ch == '\n') {
                int len = c->llen;
                if (len && c->line[len - 1] == '\r') len--;
                c->llen = 0;
                int r = on_header_line(c, c->line, len);
                if (r < 0) return -1;
                if (r == 1) {
                    n_pending--;
                    n_open++;
                    c->open_ns = now_ns();
                }
            } else if (c->llen < LINE_MAX_LEN) {
                c->line[c->llen++] = ch;
            }
            continue;
        }
        if (!c->chunked) {
            sse_feed(c, b + i, n - i);
            return 0;
        }
        char ch = b[i];
        switch (c->chstate) {
        case CH_SIZE:
            if (ch == '\n') {
                if (c->chrem == 0) return -1; /* last chunk: the server ended the stream */
                c->chstate = CH_DATA;
            } else if (ch == ';') {
                c->chstate = CH_SIZE_EXT;
            } else if (ch != '\r') {
                int v = (ch >= '0' && ch <= '9') ? ch - '0' : (ch | 32) >= 'a' && (ch | 32) <= 'f' ? (ch | 32) - 'a' + 10 : -1;
                if (v < 0) return -1;
                c->chrem = c->chrem * 16 + (uint32_t)v;
            }
            i++;
            break;
        case CH_SIZE_EXT:
            if (ch == '\n') {
                if (c->chrem == 0) return -1;
                c->chstate = CH_DATA;
            }
            i++;
            break;
        case CH_DATA: {
            size_t take = n - i < c->chrem ? n - i : c->chrem;
            sse_feed(c, b + i, take);
            i += take;
            c->chrem -= (uint32_t)take;
            if (c->chrem == 0) c->chstate = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
        case CH_DATA_LF:
            if (ch == '\n') c->chstate = CH_SIZE;
            i++;
            break;
        }
    }
    return 0;
}

/* publisher responses: status line, headers, then a Content-Length body (or a chunked one, read up to "0") */
static int pub_feed(conn *p, const char *b, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (p->state != S_WAIT) return -1; /* unsolicited bytes */
        if (p->chstate == CH_DATA) {       /* skipping a Content-Length body */
            size_t take = n - i < (size_t)p->content_length ? n - i : (size_t)p->content_length;
            i += take;
            p->content_length -= (int)take;
            if (p->content_length == 0) pub_done(p, p->status_ok == 1);
            continue;
        }
        char ch = b[i++];
        if (ch != '\n') {
            if (p->llen < LINE_MAX_LEN) p->line[p->llen++] = ch;
            continue;
        }
        int len = p->llen;
        if (len && p->line[len - 1] == '\r') len--;
        p->llen = 0;
        if (p->chstate == CH_SIZE_EXT) { /* chunked body: the "0" line, then a blank line ends it */
            if (len == 0 && p->chrem == 1) pub_done(p, p->status_ok == 1);
            else if (len == 1 && p->line[0] == '0') p->chrem = 1;
            continue;
        }
        int r = on_header_line(p, p->line, len);
        if (r < 0) return -1;
        if (r == 1) {
            p->state = S_WAIT;
            if (p->chunked) {
                p->chstate = CH_SIZE_EXT;
                p->chrem = 0;
            } else if (p->content_length > 0) {
                p->chstate = CH_DATA;
            } else {
                pub_done(p, p->status_ok == 1);
            }
        }
    }
    return 0;
}

static int pub_connect(conn *p) {
    reset_parser(p);
    if (p->kind == K_RELAY) return -1; /* a relay that died is not restarted: its events count as failed */
    if (open_socket(p) < 0) return -1;
    return 0;
}

/* start one relay process on a socketpair (its stdin and stdout); it is ours, ended in stop_relays() */
static void relay_start(conn *p) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the load generator */
        dup2(sv[1], 0);
        dup2(sv[1], 1);
        execl("/bin/sh", "sh", "-c", o_pub_exec, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    p->fd = sv[0];
    p->pid = pid;
    p->state = S_CONNECTING; /* until it prints "ready" */
    p->inflight = 0;
    p->llen = 0;
    ep_ctl(EPOLL_CTL_ADD, p, EPOLLIN | EPOLLRDHUP);
}

static double relay_cpu_seconds(void) {
    int pids[64], n = 0;
    for (int k = 0; k < o_pub_conns && n < 64; k++)
        if (pubs[k].kind == K_RELAY && pubs[k].pid) pids[n++] = pubs[k].pid;
    return pids_cpu_seconds(pids, n);
}

static void stop_relays(void) {
    for (int k = 0; k < o_pub_conns; k++) {
        conn *p = &pubs[k];
        if (p->kind != K_RELAY || !p->pid) continue;
        if (p->fd >= 0) close_conn(p); /* EOF on its stdin: it finishes and exits */
        int64_t deadline = now_ns() + 3000000000LL;
        while (waitpid(p->pid, NULL, WNOHANG) == 0) {
            if (now_ns() > deadline) {
                kill(p->pid, SIGKILL);
                waitpid(p->pid, NULL, 0);
                break;
            }
            usleep(10000);
        }
        p->pid = 0;
    }
}

static void relay_done(conn *p, int64_t g, int ok) {
    if (g < 0 || g >= ev_n || ev_done[g]) return;
    ev_done[g] = now_ns();
    ev_ok[g] = (uint8_t)ok;
    if (ok && g >= st_g0) st_expected += subs_per_chan[ev_chan[g]];
    if (!ok) p->errors++;
    if (p->inflight > 0 && --p->inflight == 0) p->state = S_IDLE;
}

/* relay answers: "ready" once, then "<g> <0|1>" per event */
static int relay_feed(conn *p, const char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (b[i] != '\n') {
            if (p->llen < LINE_MAX_LEN) p->line[p->llen++] = b[i];
            continue;
        }
        p->line[p->llen < LINE_MAX_LEN ? p->llen : LINE_MAX_LEN - 1] = 0;
        p->llen = 0;
        if (p->state == S_CONNECTING) {
            if (strncmp(p->line, "ready", 5) != 0) return -1;
            p->state = S_IDLE;
            continue;
        }
        long long g = -1;
        int ok = 0;
        if (sscanf(p->line, "%lld %d", &g, &ok) != 2) return -1;
        relay_done(p, g, ok == 1);
    }
    return 0;
}

static int relay_send(conn *p, int64_t g) {
    char data[512], line[1024], chan[128];
    int64_t t = now_ns();
    int dn = snprintf(data, sizeof data, "{\"t\":%lld,\"s\":%lld,\"p\":\"", (long long)t, (long long)g);
    int pad = o_payload - dn - 2;
    if (pad < 1) pad = 1;
    if (pad > 400) pad = 400;
    memset(data + dn, 'x', (size_t)pad);
    dn += pad;
    snprintf(data + dn, sizeof data - dn, "\"}");
    snprintf(chan, sizeof chan, o_chan_fmt, ev_chan[g]);
    int n = snprintf(line, sizeof line, "%lld %s %s\n", (long long)g, chan, data);
    ev_send[g] = t;
    if (write_all(p->fd, line, (size_t)n) < 0) return -1;
    p->inflight++;
    p->state = S_WAIT;
    return 0;
}

/* ---- event loop ---- */
static char rbuf[1 << 17];

static void handle(conn *c, uint32_t evs) {
    if (c->state == S_CONNECTING && c->kind != K_RELAY) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err || (evs & (EPOLLERR | EPOLLHUP))) {
            close_conn(c);
            if (c->kind == K_SUB) {
                n_pending--;
                n_failed++;
            }
            return;
        }
        if (c->kind == K_SUB) {
            if (sub_send_request(c) < 0) {
                close_conn(c);
                n_pending--;
                n_failed++;
                return;
            }
            c->state = S_HDR;
        } else {
            c->state = S_IDLE;
        }
        ep_ctl(EPOLL_CTL_MOD, c, EPOLLIN | EPOLLRDHUP);
        return;
    }
    for (;;) {
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n > 0) {
            st_reads += c->kind == K_SUB;
            int r = c->kind == K_SUB     ? sub_feed(c, rbuf, (size_t)n)
                    : c->kind == K_RELAY ? relay_feed(c, rbuf, (size_t)n)
                                         : pub_feed(c, rbuf, (size_t)n);
            if (r < 0) goto broken;
            if ((size_t)n < sizeof rbuf) return;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        goto broken;
    }
broken:
    if (c->kind == K_SUB) {
        if (c->state == S_HDR) {
            n_pending--;
            n_failed++;
        } else if (c->state == S_BODY) {
            n_open--;
            n_closed_unexpected++;
        }
    } else if (c->kind == K_RELAY) {
        /* a relay that died: everything it had in flight failed */
        for (int64_t g = 0; g < ev_n && c->inflight > 0; g++)
            if (!ev_done[g] && ev_send[g]) relay_done(c, g, 0);
        c->inflight = 0;
        fprintf(stderr, "loadgen: relay %d ended\n", c->pid);
    } else if (c->state == S_WAIT) {
        pub_done(c, 0);
    }
    close_conn(c);
}

/* publishing plan of the current phase */
static int64_t plan_n, plan_sent, plan_start;
static double plan_rate;
static int plan_chan_rr;

static conn *free_pub(void) {
    static int rr;
    for (int k = 0; k < o_pub_conns; k++) {
        conn *p = &pubs[(rr + k) % o_pub_conns];
        if (p->kind == K_RELAY) {
            if ((p->state == S_IDLE || p->state == S_WAIT) && p->inflight < o_pub_window) {
                rr = (rr + k + 1) % o_pub_conns;
                return p;
            }
            continue;
        }
        if (p->state == S_IDLE) {
            rr = (rr + k + 1) % o_pub_conns;
            return p;
        }
        if (p->state == S_CLOSED) pub_connect(p);
    }
    return NULL;
}

static void pub_tick(int64_t now) {
    while (plan_sent < plan_n) {
        int64_t due = plan_rate > 0 ? plan_start + (int64_t)((double)plan_sent * 1e9 / plan_rate) : now;
        if (due > now) return;
        conn *p = free_pub();
        if (!p) return;
        int64_t g = new_event(plan_chan_rr);
        plan_chan_rr = (plan_chan_rr + 1) % o_channels;
        if ((p->kind == K_RELAY ? relay_send(p, g) : pub_send(p, g)) < 0) {
            ev_done[g] = now_ns();
            close_conn(p);
        }
        plan_sent++;
    }
}

static int pubs_busy(void) {
    for (int k = 0; k < o_pub_conns; k++) {
        if (pubs[k].kind == K_RELAY && pubs[k].fd < 0) continue; /* a dead relay is never busy again */
        if (pubs[k].state == S_WAIT || pubs[k].state == S_CONNECTING) return 1;
    }
    return 0;
}

typedef int (*cond_fn)(void);

/* run the loop until cond() is true or the deadline passes; returns 1 if cond became true */
static int loop_until(int64_t deadline, cond_fn cond) {
    struct epoll_event evs[1024];
    for (;;) {
        int64_t now = now_ns();
        pub_tick(now);
        if (cond && cond()) return 1;
        if (now >= deadline || stop_flag) return 0;
        int64_t wait = deadline - now;
        if (plan_sent < plan_n && plan_rate > 0) {
            int64_t due = plan_start + (int64_t)((double)plan_sent * 1e9 / plan_rate) - now;
            /* due <= 0: pub_tick found no free publisher for an overdue event; an answer (an epoll event) frees
               one. Waiting 0 ms here would spin this core at 100% whenever the server answers slowly, and the
               load generator would look like the bottleneck ([LG]) exactly when the server is. */
            if (due > 0 && due < wait) wait = due;
        }
        int ms = (int)((wait + 999999) / 1000000);
        if (ms < 0) ms = 0;
        if (ms > 50) ms = 50;
        int n = epoll_wait(ep, evs, 1024, ms);
        for (int i = 0; i < n; i++) {
            if ((i & 15) == 0) loop_now = now_ns();
            handle(evs[i].data.ptr, evs[i].events);
        }
    }
}

/* ---- connecting subscribers ---- */
static int next_sub_to_open;

static int all_subs_settled(void) {
    while (next_sub_to_open < o_subs && n_pending < o_inflight) sub_start(&subs[next_sub_to_open++]);
    return next_sub_to_open >= o_subs && n_pending == 0;
}

static int pubs_ready(void) {
    for (int k = 0; k < o_pub_conns; k++)
        if (pubs[k].state == S_CONNECTING && pubs[k].fd >= 0) return 0;
    return 1;
}

static void open_subs(const char *phase) {
    next_sub_to_open = 0;
    n_failed = 0;
    int64_t t0 = now_ns();
    double c0 = cpu_seconds(), s0 = server_cpu_seconds();
    loop_until(t0 + (int64_t)(o_connect_timeout * 1e9), all_subs_settled);
    int64_t t1 = now_ns();
    int64_t last_open = t0;
    for (int i = 0; i < o_subs; i++)
        if (subs[i].state == S_BODY && subs[i].open_ns > last_open) last_open = subs[i].open_ns;
    double secs = (double)(last_open - t0) / 1e9;
    printf("{\"type\":\"connect\",\"phase\":\"%s\",\"subs\":%d,\"open\":%lld,\"failed\":%lld,\"pending\":%lld,"
           "\"seconds\":%.3f,\"opens_per_s\":%.1f,\"loadgen_cpu_s\":%.3f,\"server_cpu_s\":%.3f,\"wall_s\":%.3f}\n",
           phase, o_subs, (long long)n_open, (long long)n_failed, (long long)n_pending, secs,
           secs > 0 ? (double)n_open / secs : 0.0, cpu_seconds() - c0, server_cpu_seconds() - s0,
           (double)(t1 - t0) / 1e9);
    fflush(stdout);
}

/* ---- phases ---- */
static int drained(void) { return plan_sent >= plan_n && !pubs_busy() && st_received >= st_expected; }

static void begin_plan(int64_t n, double rate) {
    plan_n = n;
    plan_sent = 0;
    plan_rate = rate;
    plan_start = now_ns();
}

static int run_step(double rate, double step_s, int idx) {
    st_g0 = ev_n;
    st_expected = st_received = st_late = st_order = st_dups = st_reads = 0;
    memset(hist, 0, sizeof(uint32_t) * HIST_BUCKETS);
    hist_n = hist_max_us = 0;
    int64_t closed0 = n_closed_unexpected;
    double c0 = cpu_seconds(), s0 = server_cpu_seconds(), r0 = redis_cpu_seconds(), p0 = relay_cpu_seconds();
    int64_t n = (int64_t)(rate * step_s + 0.5);
    if (n < 1) n = 1;
    begin_plan(n, rate);
    st_measure_from = plan_start + (int64_t)(o_warmup * 1e9);
    if (st_measure_from > plan_start + (int64_t)(step_s * 0.5e9)) st_measure_from = plan_start;
    int64_t t0 = plan_start;
    /* publish phase: up to one extra second for a backlogged publisher */
    loop_until(t0 + (int64_t)((step_s + 1.0) * 1e9), NULL);
    int64_t pub_end = now_ns();
    int64_t sent = plan_sent;
    plan_n = plan_sent; /* stop publishing */
    loop_until(now_ns() + (int64_t)(o_drain * 1e9), drained);
    int64_t t1 = now_ns();
    double cpu = cpu_seconds() - c0, scpu = server_cpu_seconds() - s0;
    double rcpu = redis_cpu_seconds() - r0, pcpu = relay_cpu_seconds() - p0;
    int64_t ok = 0, last_send = t0;
    for (int64_t g = st_g0; g < ev_n; g++) {
        ok += ev_ok[g];
        if (ev_send[g] > last_send) last_send = ev_send[g];
    }
    double pub_secs = (double)(last_send - t0) / 1e9 + (rate > 0 ? 1.0 / rate : 0);
    if (pub_secs <= 0) pub_secs = step_s;
    double achieved = (double)ok / pub_secs;
    int64_t lost = st_expected - st_received;
    if (lost < 0) lost = 0;
    double p50 = hist_pct(0.5), p90 = hist_pct(0.9), p99 = hist_pct(0.99), p999 = hist_pct(0.999);
    int loss_free = lost == 0 && st_order == 0 && ok == n && achieved >= 0.95 * rate && n_closed_unexpected == closed0;
    int pass = loss_free && p99 >= 0 && p99 < o_p99_max_ms;
    printf("{\"type\":\"step\",\"index\":%d,\"rate\":%.2f,\"subs\":%d,\"open\":%lld,\"channels\":%d,\"planned\":%lld,"
           "\"sent\":%lld,\"published_ok\":%lld,\"publish_rate\":%.2f,\"expected\":%lld,\"received\":%lld,"
           "\"lost\":%lld,\"late_prev\":%lld,\"dups\":%lld,\"order_violations\":%lld,\"closed\":%lld,"
           "\"offered_deliveries_per_s\":%.1f,\"deliveries_per_s\":%.1f,\"lat_samples\":%lld,"
           "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
           "\"publish_s\":%.3f,\"drain_s\":%.3f,\"loadgen_cpu_s\":%.3f,\"loadgen_cpu_pct\":%.1f,"
           "\"server_cpu_pct\":%.1f,\"redis_cpu_pct\":%.1f,\"relay_cpu_pct\":%.1f,\"server_cpu_us_per_event\":%.1f,"
           "\"events_per_read\":%.2f,\"loss_free\":%s,\"pass\":%s}\n",
           idx, rate, o_subs, (long long)n_open, o_channels, (long long)n, (long long)sent, (long long)ok, achieved,
           (long long)st_expected, (long long)st_received, (long long)lost, (long long)st_late, (long long)st_dups,
           (long long)st_order, (long long)(n_closed_unexpected - closed0), rate * o_subs / o_channels,
           (double)st_received / pub_secs, (long long)hist_n, p50, p90, p99, p999, (double)hist_max_us / 1000.0,
           pub_secs, (double)(t1 - pub_end) / 1e9, cpu, 100.0 * cpu / ((double)(t1 - t0) / 1e9),
           100.0 * scpu / ((double)(t1 - t0) / 1e9), 100.0 * rcpu / ((double)(t1 - t0) / 1e9),
           100.0 * pcpu / ((double)(t1 - t0) / 1e9), ok ? 1e6 * scpu / (double)ok : 0.0,
           st_reads ? (double)st_received / (double)st_reads : 0.0,
           loss_free ? "true" : "false", pass ? "true" : "false");
    fflush(stdout);
    return pass | (loss_free << 1);
}

static void mode_ladder(void) {
    open_subs("initial");
    if (n_open < o_subs) {
        printf("{\"type\":\"error\",\"error\":\"only %lld of %d subscribers connected\"}\n", (long long)n_open, o_subs);
        return;
    }
    double lo = 0, hi = -1;
    int idx = 0, want = o_loss_only ? 2 : 1; /* --loss-only: go on past latency failures, stop at loss */
    for (int i = 0; i < o_nrates && !stop_flag; i++) {
        int ok = run_step(o_rates[i], o_step, idx++) & want;
        if (ok) lo = o_rates[i];
        else if (!o_no_stop) {
            hi = o_rates[i];
            break;
        }
    }
    /* bisect between the last passing and the first failing rate, after a pause to let the server recover */
    for (int r = 0; r < o_refine && hi > 0 && !stop_flag; r++) {
        double mid = (double)(int64_t)((lo + hi) / 2 + 0.5);
        if (mid <= lo || mid >= hi || (hi - lo) / hi < 0.08) break;
        loop_until(now_ns() + (int64_t)(o_recover * 1e9), NULL);
        if (run_step(mid, o_step, idx++) & want) lo = mid;
        else hi = mid;
    }
    printf("{\"type\":\"ladder\",\"sustained_rate\":%.2f,\"first_failing_rate\":%.2f}\n", lo, hi);
}

static void mode_idle(void) {
    open_subs("initial");
    printf("{\"type\":\"ready\",\"open\":%lld}\n", (long long)n_open);
    fflush(stdout);
    int64_t closed0 = n_closed_unexpected;
    loop_until(now_ns() + (int64_t)(o_hold * 1e9), NULL);
    /* liveness: one event per channel must reach every held connection */
    st_g0 = ev_n;
    st_expected = st_received = 0;
    memset(hist, 0, sizeof(uint32_t) * HIST_BUCKETS);
    hist_n = hist_max_us = 0;
    st_measure_from = 0;
    begin_plan(o_channels, 0);
    loop_until(now_ns() + (int64_t)(o_drain * 1e9), drained);
    printf("{\"type\":\"idle\",\"open\":%lld,\"closed_during_hold\":%lld,\"expected\":%lld,\"received\":%lld,"
           "\"p99_ms\":%.3f,\"max_ms\":%.3f}\n",
           (long long)n_open, (long long)(n_closed_unexpected - closed0), (long long)st_expected,
           (long long)st_received, hist_pct(0.99), (double)hist_max_us / 1000.0);
}

static int pubs_done(void) { return plan_sent >= plan_n && !pubs_busy(); }

static int storm_all_caught_up(void) { return storm_done_count >= o_subs; }

static int storm_warm_received(void) {
    if (plan_sent < plan_n || pubs_busy()) return 0;
    for (int i = 0; i < o_subs; i++)
        if (subs[i].state == S_BODY && subs[i].expect_next < o_warm) return 0;
    return 1;
}

static int storm_reconnect_settled(void) {
    while (next_sub_to_open < o_subs && n_pending < o_inflight) sub_start(&subs[next_sub_to_open++]);
    return storm_all_caught_up();
}

static void mode_storm(void) {
    if (o_pub_exec) o_pub_window = 1; /* one event in flight: the channel order is the publish order */
    else o_pub_conns = 1;             /* one POST in flight: likewise */
    storm_phase = 1;
    open_subs("initial");
    begin_plan(o_warm, 50);
    int ok = loop_until(now_ns() + (int64_t)((o_warm / 50.0 + o_drain) * 1e9), storm_warm_received);
    int with_id = 0;
    for (int i = 0; i < o_subs; i++) with_id += subs[i].last_id_len > 0 && subs[i].state == S_BODY;
    for (int i = 0; i < o_subs; i++)
        if (subs[i].state != S_CLOSED) {
            close_conn(&subs[i]);
            n_open--;
        }
    /* let the server see the disconnects, then publish what the subscribers miss */
    loop_until(now_ns() + 300000000LL, NULL);
    begin_plan(o_behind, 0);
    loop_until(now_ns() + 20000000000LL, pubs_done);
    int64_t behind_ok = 0;
    for (int64_t g = o_warm; g < ev_n; g++) behind_ok += ev_ok[g];
    storm_final_idx = chan_next_idx[0] - 1;
    for (int c = 1; c < o_channels; c++)
        if (chan_next_idx[c] - 1 < storm_final_idx) storm_final_idx = chan_next_idx[c] - 1;
    storm_phase = 2;
    storm_done_count = 0;
    storm_bad_dup = storm_bad_gap = 0;
    for (int i = 0; i < o_subs; i++) subs[i].caught_up = 0;
    next_sub_to_open = 0;
    n_failed = 0;
    int64_t t0 = now_ns();
    double c0 = cpu_seconds();
    int64_t deadline = t0 + (int64_t)(o_connect_timeout * 1e9);
    int done = loop_until(deadline, storm_reconnect_settled);
    int64_t t1 = now_ns();
    printf("{\"type\":\"storm\",\"subs\":%d,\"warm_ok\":%s,\"with_id\":%d,\"behind\":%d,\"behind_ok\":%lld,"
           "\"reconnected\":%lld,\"failed\":%lld,\"caught_up\":%d,\"all_caught_up\":%s,\"catch_up_s\":%.3f,"
           "\"missing_events\":%lld,\"dup_or_reordered\":%lld,\"correct\":%s,\"loadgen_cpu_s\":%.3f}\n",
           o_subs, ok ? "true" : "false", with_id, o_behind, (long long)behind_ok, (long long)n_open,
           (long long)n_failed, storm_done_count, done ? "true" : "false", (double)(t1 - t0) / 1e9,
           (long long)storm_bad_gap, (long long)storm_bad_dup,
           done && !storm_bad_gap && !storm_bad_dup && with_id == o_subs ? "true" : "false", cpu_seconds() - c0);
}

/* ---- main ---- */
static void usage(void) {
    fprintf(stderr, "usage: loadgen --port P --mode idle|ladder|storm --subs N [--channels K] [--rates r1,r2]"
                    " [--step S] [--sub-path FMT] [--pub-path FMT] [--chan-fmt FMT] [--pub-raw] ... (see source)\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (strcmp(a, name) == 0 && v && ++i)
        if (OPT("--host")) o_host = v;
        else if (OPT("--port")) o_port = atoi(v);
        else if (OPT("--src-addrs")) o_src_addrs = atoi(v);
        else if (OPT("--subs")) o_subs = atoi(v);
        else if (OPT("--channels")) o_channels = atoi(v);
        else if (OPT("--pub-conns")) o_pub_conns = atoi(v);
        else if (OPT("--connect-inflight")) o_inflight = atoi(v);
        else if (OPT("--connect-timeout")) o_connect_timeout = atof(v);
        else if (OPT("--sub-path")) o_sub_path = v;
        else if (OPT("--pub-path")) o_pub_path = v;
        else if (OPT("--chan-fmt")) o_chan_fmt = v;
        else if (OPT("--header")) o_header = v;
        else if (OPT("--payload")) o_payload = atoi(v);
        else if (OPT("--mode")) o_mode = v;
        else if (OPT("--step")) o_step = atof(v);
        else if (OPT("--warmup")) o_warmup = atof(v);
        else if (OPT("--drain")) o_drain = atof(v);
        else if (OPT("--p99-max-ms")) o_p99_max_ms = atof(v);
        else if (OPT("--hold")) o_hold = atof(v);
        else if (OPT("--warm")) o_warm = atoi(v);
        else if (OPT("--refine")) o_refine = atoi(v);
        else if (OPT("--recover")) o_recover = atof(v);
        else if (OPT("--behind")) o_behind = atoi(v);
        else if (OPT("--pub-exec")) o_pub_exec = v;
        else if (OPT("--pub-window")) o_pub_window = atoi(v);
        else if (OPT("--redis-pids")) {
            char *dup = strdup(v), *save = NULL;
            for (char *tok = strtok_r(dup, ",", &save); tok && o_nredis_pids < 8; tok = strtok_r(NULL, ",", &save))
                o_redis_pids[o_nredis_pids++] = atoi(tok);
            free(dup);
        } else if (OPT("--server-pids")) {
            char *dup = strdup(v), *save = NULL;
            for (char *tok = strtok_r(dup, ",", &save); tok && o_nserver_pids < 32; tok = strtok_r(NULL, ",", &save))
                o_server_pids[o_nserver_pids++] = atoi(tok);
            free(dup);
        } else if (OPT("--rates")) {
            char *dup = strdup(v), *save = NULL;
            for (char *tok = strtok_r(dup, ",", &save); tok && o_nrates < 64; tok = strtok_r(NULL, ",", &save))
                o_rates[o_nrates++] = atof(tok);
            free(dup);
        } else if (strcmp(a, "--pub-raw") == 0) o_pub_raw = 1;
        else if (strcmp(a, "--no-stop") == 0) o_no_stop = 1;
        else if (strcmp(a, "--loss-only") == 0) o_loss_only = 1;
        else usage();
#undef OPT
    }
    if (!o_port || o_subs < 0 || o_channels < 1 || o_pub_conns < 1 || o_inflight < 1 || o_pub_window < 1) usage();
    if (o_header && (strlen(o_header) > 256 || strpbrk(o_header, "\r\n") || !strchr(o_header, ':'))) usage();
    if (o_channels > o_subs && o_subs > 0) o_channels = o_subs;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)o_port);
    if (inet_pton(AF_INET, o_host, &dst.sin_addr) != 1) usage();
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    subs = calloc((size_t)(o_subs ? o_subs : 1), sizeof *subs);
    pubs = calloc((size_t)o_pub_conns, sizeof *pubs);
    subs_per_chan = calloc((size_t)o_channels, sizeof *subs_per_chan);
    chan_next_idx = calloc((size_t)o_channels, sizeof *chan_next_idx);
    hist = calloc(HIST_BUCKETS, sizeof *hist);
    if (!subs || !pubs || !subs_per_chan || !chan_next_idx || !hist) die("calloc");
    for (int i = 0; i < o_subs; i++) {
        subs[i].fd = -1;
        subs[i].kind = K_SUB;
        subs[i].idx = i;
        subs[i].chan = i % o_channels;
        subs[i].last_g = -1;
        subs_per_chan[subs[i].chan]++;
    }
    for (int k = 0; k < o_pub_conns; k++) {
        pubs[k].fd = -1;
        pubs[k].kind = o_pub_exec ? K_RELAY : K_PUB;
        pubs[k].last_g = -1;
        if (o_pub_exec) relay_start(&pubs[k]);
        else pub_connect(&pubs[k]);
    }
    /* relays are Python processes: give them time to import and connect */
    loop_until(now_ns() + (o_pub_exec ? 30000000000LL : 5000000000LL), pubs_ready);
    if (!pubs_ready()) {
        printf("{\"type\":\"error\",\"error\":\"publishers not ready\"}\n");
        fflush(stdout);
    }
    double c0 = cpu_seconds();
    int64_t t0 = now_ns();
    if (strcmp(o_mode, "idle") == 0) mode_idle();
    else if (strcmp(o_mode, "storm") == 0) mode_storm();
    else mode_ladder();
    double cpu = cpu_seconds() - c0, wall = (double)(now_ns() - t0) / 1e9;
    int perr = 0;
    for (int k = 0; k < o_pub_conns; k++) perr += (int)pubs[k].errors;
    printf("{\"type\":\"done\",\"loadgen_cpu_s\":%.3f,\"wall_s\":%.3f,\"loadgen_cpu_pct\":%.1f,\"publish_errors\":%d,"
           "\"interrupted\":%s}\n",
           cpu, wall, wall > 0 ? 100.0 * cpu / wall : 0.0, perr, stop_flag ? "true" : "false");
    fflush(stdout);
    stop_relays();
    return 0;
}
