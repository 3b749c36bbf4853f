/* SPDX-License-Identifier: MIT */
/*
 * tls_addr.c - the transport's addresses: "HOST:PORT" and its variants
 * parsed, socket addresses printed for logs, and the loopback test that
 * keeps plain TCP (--insecure) off the network.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "agent/sync/tls_internal.h"

bool tls_addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		const uint8_t *b = in6->sin6_addr.s6_addr;

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && b[12] == 127;
	}
	return false;
}

/* "1.2.3.4:7433" or "[::1]:7433"; a v4-mapped v6 address shows as v4. */
void tls_format_sockaddr(const struct sockaddr *sa, char *out, size_t len)
{
	char host[INET6_ADDRSTRLEN];
	uint16_t port;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(in->sin_port));
		return;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		port = ntohs(in6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host,
				  sizeof(host));
			snprintf(out, len, "%s:%u", host, port);
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, host,
				  sizeof(host));
			snprintf(out, len, "[%s]:%u", host, port);
		}
		return;
	}
	snprintf(out, len, "(address family %d)", sa->sa_family);
}

static int parse_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;

	if (!*s || strlen(s) > 5)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	if (v > 65535)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

int tls_parse_addr(const char *addr, char *host, size_t hostlen, uint16_t *port)
{
	const char *h = addr, *p = NULL, *colon;
	size_t hl;

	if (!addr || !*addr)
		return -EINVAL;
	*port = TLS_DEFAULT_PORT;
	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');

		if (!end || end == addr + 1)
			return -EINVAL;
		h = addr + 1;
		hl = (size_t)(end - h);
		if (end[1] == ':')
			p = end + 2;
		else if (end[1])
			return -EINVAL;
	} else {
		colon = strchr(addr, ':');
		if (colon && !strchr(colon + 1, ':')) {
			hl = (size_t)(colon - addr);
			p = colon + 1;
		} else {
			/* no colon, or a bare IPv6 address */
			hl = strlen(addr);
		}
	}
	if (hl >= hostlen)
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (p && parse_port(p, port))
		return -EINVAL;
	return 0;
}
