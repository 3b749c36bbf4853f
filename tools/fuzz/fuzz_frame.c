/* SPDX-License-Identifier: MIT */
/*
 * fuzz_frame.c - libFuzzer target for the protocol frame decoder
 * (agent/sync/proto.c).  Build with `make fuzz`; run: tools/fuzz/README.md.
 *
 * Each input is tried twice: as a whole frame (12-byte header checked by
 * proto_parse_header, then the payload) and as "type, flags, payload" fed
 * straight to proto_decode so the fuzzer need not find valid CRCs.  An
 * accepted payload must re-encode to exactly the same bytes: a decoder
 * that accepts something its own encoder cannot produce has let a length
 * disagree somewhere.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/sync/proto.h"
#include "vhdx/vhdx.h" /* vhdx_crc32c() */

static uint8_t enc[PROTO_MAX_PAYLOAD];

static void check(uint8_t type, uint8_t flags, const uint8_t *p, size_t len)
{
	struct vhdx_error err;
	struct msg m;
	uint8_t eflags;
	uint8_t *exact;
	long n;
	size_t i;
	int ret;

	/* An exact-size copy, so ASan catches reads past the payload. */
	exact = malloc(len ? len : 1);
	if (!exact)
		return;
	memcpy(exact, p, len);
	ret = proto_decode(type, flags, exact, len, &m, &err);
	if (ret)
		goto out;
	n = proto_encode(&m, enc, sizeof(enc), &eflags, &err);
	if (n != (long)len || eflags != flags) {
		fprintf(stderr,
			"%s of %zu bytes accepted but re-encodes to "
			"%ld bytes (flags %u/%u): %s\n",
			proto_type_name(type), len, n, flags, eflags,
			n < 0 ? err.msg : "");
		abort();
	}
	/* ERROR messages are sanitised on decode; compare the rest. */
	for (i = 0; i < len; i++)
		if (enc[i] != exact[i] &&
		    !(type == PROTO_ERROR && i >= PROTO_ERROR_FIXED &&
		      enc[i] == '?')) {
			fprintf(stderr,
				"%s: byte %zu differs after "
				"re-encoding\n",
				proto_type_name(type), i);
			abort();
		}
out:
	free(exact);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vhdx_error err;
	struct frame f;

	if (size >= PROTO_HDR_LEN && proto_parse_header(data, &f, &err) == 0) {
		if (f.length > proto_limit(f.type))
			abort(); /* the header check let it through */
		if (f.length <= size - PROTO_HDR_LEN &&
		    vhdx_crc32c(data + PROTO_HDR_LEN, f.length) == f.crc)
			check(f.type, f.flags, data + PROTO_HDR_LEN, f.length);
	}
	if (size >= 2)
		check(data[0], data[1], data + 2, size - 2);
	return 0;
}
