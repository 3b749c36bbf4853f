/* SPDX-License-Identifier: MIT */
/*
 * format.h - VHDX on-disk layout (MS-VHDX), offsets and constants.
 *
 * Structures are described by byte offsets rather than packed C structs:
 * every field is read with the le*_get helpers of le.h, so endianness is
 * converted once, where bytes leave or enter the file.
 */
#ifndef HVRESYNC_VHDX_FORMAT_H
#define HVRESYNC_VHDX_FORMAT_H

#include <stdint.h>
#include <string.h>

#include "le.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)
#define TiB (1024ull * 1024 * 1024 * 1024)

/* 2.1 Layout: the header section is the first 1 MiB. */
#define VHDX_HEADER_SECTION_SIZE (1 * MiB)
#define VHDX_FILE_ID_OFFSET 0
#define VHDX_HEADER1_OFFSET (64 * KiB)
#define VHDX_HEADER2_OFFSET (128 * KiB)
#define VHDX_REGION_TABLE1_OFFSET (192 * KiB)
#define VHDX_REGION_TABLE2_OFFSET (256 * KiB)

/* 2.2.1 File Type Identifier */
#define VHDX_FILE_ID_SIG "vhdxfile"
#define VHDX_FILE_ID_SIZE (64 * KiB)
#define VHDX_CREATOR_OFFSET 8
#define VHDX_CREATOR_BYTES 512

/* 2.2.2 Headers: 4 KiB checksummed, in a 64 KiB slot. */
#define VHDX_HEADER_SIG "head"
#define VHDX_HEADER_SIZE (4 * KiB)
#define VHDX_HDR_CHECKSUM 4
#define VHDX_HDR_SEQUENCE 8
#define VHDX_HDR_FILE_WRITE_GUID 16
#define VHDX_HDR_DATA_WRITE_GUID 32
#define VHDX_HDR_LOG_GUID 48
#define VHDX_HDR_LOG_VERSION 64
#define VHDX_HDR_VERSION 66
#define VHDX_HDR_LOG_LENGTH 68
#define VHDX_HDR_LOG_OFFSET 72
#define VHDX_VERSION 1
#define VHDX_LOG_VERSION 0

/* 2.2.3 Region Table */
#define VHDX_REGION_SIG "regi"
#define VHDX_REGION_TABLE_SIZE (64 * KiB)
#define VHDX_REGION_HDR_SIZE 16
#define VHDX_REGION_ENTRY_SIZE 32
#define VHDX_REGION_MAX_ENTRIES 2047
#define VHDX_REGION_REQUIRED 1u

/* 2.2.3.2 Known regions */
#define VHDX_BAT_GUID_STR "2DC27766-F623-4200-9D64-115E9BFD4A08"
#define VHDX_METADATA_GUID_STR "8B7CA206-4790-4B9A-B8FE-575F050F886E"

/* 2.3 Log */
#define VHDX_LOG_SECTOR 4096u
#define VHDX_LOG_ENTRY_SIG "loge"
#define VHDX_LOG_ZERO_SIG "zero"
#define VHDX_LOG_DESC_SIG "desc"
#define VHDX_LOG_DATA_SIG "data"
#define VHDX_LOG_HDR_SIZE 64
#define VHDX_LOG_DESC_SIZE 32
/* entry header fields */
#define VHDX_LOGE_CHECKSUM 4
#define VHDX_LOGE_LENGTH 8
#define VHDX_LOGE_TAIL 12
#define VHDX_LOGE_SEQUENCE 16
#define VHDX_LOGE_DESC_COUNT 24
#define VHDX_LOGE_LOG_GUID 32
#define VHDX_LOGE_FLUSHED_OFFSET 48
#define VHDX_LOGE_LAST_OFFSET 56
/* descriptor fields */
#define VHDX_LOGD_TRAILING 4	/* data descriptor */
#define VHDX_LOGD_ZERO_LENGTH 8 /* zero descriptor */
#define VHDX_LOGD_LEADING 8	/* data descriptor */
#define VHDX_LOGD_FILE_OFFSET 16
#define VHDX_LOGD_SEQUENCE 24
/* data sector fields */
#define VHDX_LOGS_SEQ_HIGH 4
#define VHDX_LOGS_DATA 8
#define VHDX_LOGS_DATA_LEN 4084
#define VHDX_LOGS_SEQ_LOW 4092

/* 2.5 BAT */
#define VHDX_BAT_STATE_MASK 7ull
#define VHDX_BAT_OFFSET_SHIFT 20
#define VHDX_SB_STATE_NOT_PRESENT 0
#define VHDX_SB_STATE_PRESENT 6
#define VHDX_SECTOR_BITMAP_SIZE (1 * MiB)
#define VHDX_SECTORS_PER_CHUNK (1ull << 23)

/* 2.6 Metadata region */
#define VHDX_METADATA_SIG "metadata"
#define VHDX_METADATA_TABLE_SIZE (64 * KiB)
#define VHDX_METADATA_HDR_SIZE 32
#define VHDX_METADATA_ENTRY_SIZE 32
#define VHDX_METADATA_MAX_ENTRIES 2047
#define VHDX_MD_IS_USER 1u
#define VHDX_MD_IS_VIRTUAL_DISK 2u
#define VHDX_MD_IS_REQUIRED 4u

/* 2.6.2 Known metadata items */
#define VHDX_MD_FILE_PARAMETERS_STR "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
#define VHDX_MD_VIRTUAL_DISK_SIZE_STR "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
#define VHDX_MD_PAGE83_STR "BECA12AB-B2E6-4523-93EF-C309E000C746"
#define VHDX_MD_LOGICAL_SECTOR_STR "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
#define VHDX_MD_PHYSICAL_SECTOR_STR "CDA348C7-445D-4471-9CC9-E9885251C556"
#define VHDX_MD_PARENT_LOCATOR_STR "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
#define VHDX_FP_LEAVE_BLOCKS_ALLOCATED 1u
#define VHDX_FP_HAS_PARENT 2u

/* 2.6.2.6.1 Parent locator */
#define VHDX_PARENT_LOCATOR_TYPE_STR "B04AEFB7-D19E-4A81-B789-25B8E9445913"
#define VHDX_LOCATOR_HDR_SIZE 20
#define VHDX_LOCATOR_ENTRY_SIZE 12

#define VHDX_MIN_BLOCK_SIZE (1 * MiB)
#define VHDX_MAX_BLOCK_SIZE (256 * MiB)
#define VHDX_MAX_VIRTUAL_SIZE (64 * TiB)
#define VHDX_ALIGN (1 * MiB)

#endif
