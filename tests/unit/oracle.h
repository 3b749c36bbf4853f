/* SPDX-License-Identifier: MIT */
/*
 * oracle.h - the unit tests' own little-endian helpers and a bitwise
 * CRC-32C, written from the definition (reflected polynomial 0x82F63B78,
 * initial value and final XOR 0xFFFFFFFF) so that expected values never
 * come from the code under test.
 */
#ifndef HVRESYNC_TEST_ORACLE_H
#define HVRESYNC_TEST_ORACLE_H

#include <stddef.h>
#include <stdint.h>

static inline uint32_t ref_crc32c_update(uint32_t crc, const void *buf,
					 size_t len)
{
	const uint8_t *p = buf;
	int k;

	while (len--) {
		crc ^= *p++;
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
	}
	return crc;
}

static inline uint32_t ref_crc32c(const void *buf, size_t len)
{
	return ~ref_crc32c_update(0xFFFFFFFFu, buf, len);
}

static inline void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static inline uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* A fixed xorshift32 stream: the same bytes for the same seed on every
 * run, so a failing case can be replayed. */
static inline void fill_random(uint8_t *p, size_t len, uint32_t seed)
{
	uint32_t x = seed ? seed : 1;

	while (len--) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		*p++ = (uint8_t)(x >> 24);
	}
}

#endif
