/* SPDX-License-Identifier: MIT */
/*
 * crc32c.c - CRC-32C (Castagnoli), the checksum of VHDX headers, region
 * tables, metadata-free log entries (MS-VHDX 2.2.2).  Slice-by-8 tables,
 * built once; the structures checked are small, so no SIMD path.
 */
#include <pthread.h>

#include "internal.h"

#define CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
	uint32_t i, j, c;

	for (i = 0; i < 256; i++) {
		c = i;
		for (j = 0; j < 8; j++)
			c = (c >> 1) ^ ((c & 1) ? CRC32C_POLY : 0);
		table[0][i] = c;
	}
	for (i = 0; i < 256; i++)
		for (j = 1; j < 8; j++)
			table[j][i] = (table[j - 1][i] >> 8) ^
				      table[0][table[j - 1][i] & 0xff];
}

uint32_t vhdx_crc32c_update(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&table_once, table_init);
	while (len >= 8) {
		uint32_t lo = crc ^ le32_get(p);
		uint32_t hi = le32_get(p + 4);

		crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^
		      table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
		      table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
		      table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
	return crc;
}

uint32_t vhdx_crc32c(const void *buf, size_t len)
{
	return ~vhdx_crc32c_update(0xFFFFFFFFu, buf, len);
}

uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t csum_off)
{
	static const uint8_t zero[4];
	uint32_t crc = 0xFFFFFFFFu;

	crc = vhdx_crc32c_update(crc, buf, csum_off);
	crc = vhdx_crc32c_update(crc, zero, 4);
	crc = vhdx_crc32c_update(crc, buf + csum_off + 4, len - csum_off - 4);
	return ~crc;
}
