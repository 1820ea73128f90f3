/* A minimal DNS responder for bench/probe.py: it answers every query with one A record
   (127.0.0.2, TTL 300) after the question, keeping any OPT record's place empty. One
   thread, recvmmsg/sendmmsg batches of 64, so that the prober, not the server, is what
   the benchmark measures. Usage: responder PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define B 64
#define SZ 1500

int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0), size = 8 << 20;
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    if (argc < 2 || bind(fd, (struct sockaddr *)&me, sizeof me)) {
        perror("responder");
        return 1;
    }
    static unsigned char buf[B][SZ];
    struct mmsghdr msgs[B];
    struct iovec iov[B];
    struct sockaddr_in peers[B];
    for (;;) {
        for (int i = 0; i < B; i++) {
            iov[i].iov_base = buf[i];
            iov[i].iov_len = SZ - 16;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &peers[i];
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, msgs, B, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        int out = 0;
        for (int i = 0; i < n; i++) {
            unsigned char *m = buf[i];
            size_t len = msgs[i].msg_len, q = 12;
            if (len < 17 || (m[2] & 0x80) || m[4] != 0 || m[5] != 1) continue;
            while (q < len && m[q]) q += m[q] + 1; /* the question name */
            q += 5;                                /* its end, type and class */
            if (q > len) continue;
            static const unsigned char answer[] = {0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 1, 0x2C, 0, 4, 127, 0, 0, 2};
            m[2] = 0x84 | (m[2] & 0x01); /* QR, AA, RD kept */
            m[3] = 0x80;                 /* RA, NOERROR */
            m[6] = 0, m[7] = 1, m[8] = m[9] = m[10] = m[11] = 0;
            memcpy(m + q, answer, sizeof answer);
            iov[out].iov_base = m;
            iov[out].iov_len = q + sizeof answer;
            msgs[out].msg_hdr.msg_iov = &iov[out];
            msgs[out].msg_hdr.msg_name = &peers[i];
            msgs[out].msg_hdr.msg_namelen = sizeof peers[i];
            out++;
        }
        for (int done = 0; done < out;) {
            int r = sendmmsg(fd, msgs + done, out - done, 0);
            if (r <= 0) break;
            done += r;
        }
    }
}
