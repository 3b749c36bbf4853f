/* SPDX-License-Identifier: MIT */
/*
 * mkframes.c - writes seed inputs for fuzz_frame: one message of each type,
 * encoded by the protocol's own encoder, both as a whole frame (header,
 * CRC, payload) and in the target's short form "type, flags, payload".
 *
 *	mkframes DIR
 */
#include <stdio.h>
#include <string.h>

#include "agent/sync/proto.h"
#include "vhdx/vhdx.h"

static uint8_t payload[64 * 1024], hashes[8 * PROTO_HASH_ENTRY_LEN];

static int put(const char *dir, const char *name, const struct msg *m)
{
	uint8_t hdr[PROTO_HDR_LEN], flags;
	struct vhdx_error err;
	char path[4096];
	long n;
	FILE *f;
	int i;

	n = proto_encode(m, payload, sizeof(payload), &flags, &err);
	if (n < 0) {
		fprintf(stderr, "mkframes: %s: %s\n", name, err.msg);
		return 1;
	}
	for (i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%s-%s", dir, name,
			 i ? "short" : "frame");
		f = fopen(path, "wb");
		if (!f) {
			perror(path);
			return 1;
		}
		if (i) {
			fputc(m->type, f);
			fputc(flags, f);
		} else {
			proto_put_header(hdr, m->type, flags, (uint32_t)n,
					 vhdx_crc32c(payload, (size_t)n));
			fwrite(hdr, 1, sizeof(hdr), f);
		}
		fwrite(payload, 1, (size_t)n, f);
		if (fclose(f)) {
			perror(path);
			return 1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	static uint8_t data[8192];
	struct msg m;
	int bad = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: mkframes DIR\n");
		return 2;
	}
	memset(data, 0xa5, sizeof(data));
	memset(hashes, 0x5a, sizeof(hashes));
	hashes[0] = PROTO_KIND_ZERO;
	hashes[PROTO_HASH_ENTRY_LEN] = PROTO_KIND_DATA;

	memset(&m, 0, sizeof(m));
	m.type = PROTO_HELLO;
	m.u.hello.version = PROTO_VERSION;
	m.u.hello.flags = PROTO_HELLO_HOLD;
	m.u.hello.block_size = 1 << 20;
	m.u.hello.hash = PROTO_HASH_XXH3_128;
	m.u.hello.virtual_size = 64 << 20;
	m.u.hello.logical_sector = 512;
	strcpy(m.u.hello.name, "web01:os.vhdx");
	m.u.hello.name_len = (uint16_t)strlen(m.u.hello.name);
	bad |= put(argv[1], "hello", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_WELCOME;
	m.u.welcome.version = PROTO_VERSION;
	m.u.welcome.virtual_size = 64 << 20;
	m.u.welcome.logical_sector = 512;
	m.u.welcome.resume_offset = 4 << 20;
	m.u.welcome.window = 64;
	bad |= put(argv[1], "welcome", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_ERROR;
	m.u.error.code = PROTO_ERR_BUSY;
	strcpy(m.u.error.message, "web01:os.vhdx: in use by qemu (pid 12)");
	m.u.error.message_len = (uint16_t)strlen(m.u.error.message);
	bad |= put(argv[1], "error", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_HASHES;
	m.u.hashes.first_block = 3;
	m.u.hashes.count = 2;
	m.u.hashes.entries = hashes;
	bad |= put(argv[1], "hashes", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_CREDIT;
	m.u.credit.blocks = 16;
	m.u.credit.done_through = 8;
	bad |= put(argv[1], "credit", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_SUBREQ;
	m.u.subreq.block = 5;
	bad |= put(argv[1], "subreq", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_SUBHASHES;
	m.u.subhashes.block = 5;
	m.u.subhashes.count = 4;
	m.u.subhashes.hashes = hashes;
	bad |= put(argv[1], "subhashes", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_DATA;
	m.u.data.offset = 1 << 20;
	m.u.data.length = sizeof(data);
	m.u.data.data = data;
	m.u.data.data_len = sizeof(data);
	bad |= put(argv[1], "data", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_ZERO;
	m.u.zero.offset = 2 << 20;
	m.u.zero.length = 1 << 20;
	bad |= put(argv[1], "zero", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_DONE;
	bad |= put(argv[1], "done", &m);

	memset(&m, 0, sizeof(m));
	m.type = PROTO_FINISHED;
	m.u.finished.bytes_written = 12345;
	m.u.finished.seconds_merge = 2;
	bad |= put(argv[1], "finished", &m);
	return bad;
}
