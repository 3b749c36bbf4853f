/* SPDX-License-Identifier: MIT */
/*
 * cmd_inspect.c - `hvresync inspect`: everything worth knowing about a VHDX
 * (headers, log, regions, metadata, BAT, parent chain) and what its raw
 * view holds (partition table, filesystems), as aligned text for a person
 * or as one JSON object for a program.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cli/cli.h"
#include "agent/lib/fmt.h"
#include "agent/lib/json.h"
#include "agent/lib/probe.h"
#include "vhdx/vhdx.h"

static const char inspect_usage[] =
	"hvresync inspect [--json] [--replay] [--ignore-parent-linkage] IMAGE";

struct inspect {
	struct vhdx_image *img;
	const struct vhdx_info *info;
	struct probe_result probe;
	int probe_ret;
	char probe_why[256];
};

/* --- Shared helpers ---------------------------------------------------- */

static const char *guid_str(const struct vhdx_guid *g,
			    char buf[VHDX_GUID_STR_LEN])
{
	vhdx_guid_format(g, buf);
	return buf;
}

static const char *log_state(const struct vhdx_info *info)
{
	if (!info->log_dirty)
		return "clean";
	return info->log_replayed_on_disk ? "replayed_on_disk"
					  : "replayed_in_memory";
}

/* Payload block states in BAT order, merged by name (an implementation may
 * give the old and new "unmapped" values one name). */
struct state_count {
	const char *name;
	uint64_t count;
};

static unsigned block_states(const struct vhdx_info *info,
			     struct state_count out[8])
{
	static char fallback[8][12];
	unsigned st, j, n = 0;

	for (st = 0; st < 8; st++) {
		const char *name = vhdx_payload_state_name(st);

		/* 4 is not a state the spec defines; show it only if used. */
		if (st == 4 && !info->block_states[st])
			continue;
		if (!name || !*name) {
			snprintf(fallback[st], sizeof(fallback[st]), "state_%u",
				 st);
			name = fallback[st];
		}
		for (j = 0; j < n; j++)
			if (!strcmp(out[j].name, name))
				break;
		if (j == n) {
			out[n].name = name;
			out[n].count = 0;
			n++;
		}
		out[j].count += info->block_states[st];
	}
	return n;
}

struct type_name {
	const char *type;
	const char *name;
};

/* Partition types an administrator meets on Hyper-V disks. */
static const struct type_name part_types[] = {
	{ "0x5", "extended" },
	{ "0x7", "NTFS/exFAT" },
	{ "0xb", "FAT32" },
	{ "0xc", "FAT32 (LBA)" },
	{ "0xe", "FAT16 (LBA)" },
	{ "0xf", "extended (LBA)" },
	{ "0x27", "Windows recovery" },
	{ "0x82", "Linux swap" },
	{ "0x83", "Linux" },
	{ "0x85", "Linux extended" },
	{ "0x8e", "Linux LVM" },
	{ "0xee", "GPT protective" },
	{ "0xef", "EFI system" },
	{ "0xfd", "Linux RAID" },
	{ "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI system" },
	{ "e3c9e316-0b5c-4db8-817d-f92df00215ae", "Microsoft reserved" },
	{ "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7", "Microsoft basic data" },
	{ "de94bba4-06d1-4d40-a16a-bfd50179d6ac", "Windows recovery" },
	{ "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3", "Windows LDM metadata" },
	{ "af9b60a0-1431-4f62-bc68-3311714a69ad", "Windows LDM data" },
	{ "0fc63daf-8483-4772-8e79-3d69d8477de4", "Linux filesystem" },
	{ "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "Linux swap" },
	{ "e6d6d379-f507-44c2-a23c-238f2a3df928", "Linux LVM" },
	{ "a19d880f-05fc-4d3b-a006-743f0f84911e", "Linux RAID" },
	{ "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "Linux root (x86-64)" },
	{ "bc13c2ff-59e6-4262-a352-b275fd6f7172", "Linux extended boot" },
	{ "21686148-6449-6e6f-744e-656564454649", "BIOS boot" },
};

static const char *part_type_name(const char *type)
{
	size_t i;

	for (i = 0; i < sizeof(part_types) / sizeof(part_types[0]); i++)
		if (!strcasecmp(part_types[i].type, type))
			return part_types[i].name;
	return NULL;
}

/* --- JSON -------------------------------------------------------------- */

static void json_guid(struct json_writer *w, const char *key,
		      const struct vhdx_guid *g)
{
	char buf[VHDX_GUID_STR_LEN];

	json_kv_string(w, key, guid_str(g, buf));
}

static void json_fs_members(struct json_writer *w, const struct probe_fs *fs)
{
	/* null, not "", when the filesystem has no label or UUID */
	json_kv_string(w, "fs_type", fs->type);
	json_kv_string(w, "label", fs->label[0] ? fs->label : NULL);
	json_kv_string(w, "uuid", fs->uuid[0] ? fs->uuid : NULL);
	if (fs->version[0])
		json_kv_string(w, "fs_version", fs->version);
	if (fs->usage[0])
		json_kv_string(w, "fs_usage", fs->usage);
}

static void json_parent(struct json_writer *w, struct vhdx_image *img)
{
	struct vhdx_image *parent = vhdx_get_parent(img);
	const struct vhdx_info *pi;

	if (!parent) {
		json_null(w);
		return;
	}
	pi = vhdx_get_info(parent);
	json_object_begin(w);
	json_kv_string(w, "path", pi->path);
	json_kv_string(w, "type", vhdx_type_name(pi->type));
	json_kv_u64(w, "virtual_size", pi->virtual_size);
	json_kv_u64(w, "block_size", pi->block_size);
	json_kv_u64(w, "logical_sector_size", pi->logical_sector_size);
	json_kv_u64(w, "physical_sector_size", pi->physical_sector_size);
	json_kv_bool(w, "log_dirty", pi->log_dirty);
	json_guid(w, "data_write_guid",
		  &pi->header[pi->current_header].data_write_guid);
	json_key(w, "parent");
	json_parent(w, parent);
	json_object_end(w);
}

static void json_headers(struct json_writer *w, const struct vhdx_info *info)
{
	int i;

	json_key(w, "headers");
	json_array_begin(w);
	for (i = 0; i < 2; i++) {
		const struct vhdx_header_info *h = &info->header[i];

		json_object_begin(w);
		json_kv_u64(w, "header", i + 1);
		json_kv_bool(w, "valid", h->valid);
		json_kv_bool(w, "current", i == info->current_header);
		if (h->valid) {
			json_kv_u64(w, "sequence", h->sequence);
			json_guid(w, "file_write_guid", &h->file_write_guid);
			json_guid(w, "data_write_guid", &h->data_write_guid);
			json_guid(w, "log_guid", &h->log_guid);
			json_kv_u64(w, "log_version", h->log_version);
			json_kv_u64(w, "version", h->version);
			json_kv_u64(w, "log_offset", h->log_offset);
			json_kv_u64(w, "log_length", h->log_length);
		}
		json_object_end(w);
	}
	json_array_end(w);
}

static void json_regions(struct json_writer *w, const struct vhdx_info *info)
{
	unsigned i;

	json_kv_u64(w, "region_table", info->region_table + 1);
	json_key(w, "regions");
	json_array_begin(w);
	for (i = 0; i < info->region_count; i++) {
		const struct vhdx_region_info *r = &info->regions[i];

		json_object_begin(w);
		json_kv_string(w, "name", r->name);
		json_guid(w, "guid", &r->guid);
		json_kv_u64(w, "file_offset", r->file_offset);
		json_kv_u64(w, "length", r->length);
		json_kv_bool(w, "required", r->required);
		json_object_end(w);
	}
	json_array_end(w);
}

static void json_metadata(struct json_writer *w, const struct vhdx_info *info)
{
	unsigned i;

	json_key(w, "metadata");
	json_array_begin(w);
	for (i = 0; i < info->metadata_count; i++) {
		const struct vhdx_metadata_info *m = &info->metadata[i];

		json_object_begin(w);
		json_kv_string(w, "name", m->name);
		json_guid(w, "item_id", &m->item_id);
		json_kv_u64(w, "offset", m->offset);
		json_kv_u64(w, "length", m->length);
		json_kv_bool(w, "is_user", m->is_user);
		json_kv_bool(w, "is_virtual_disk", m->is_virtual_disk);
		json_kv_bool(w, "is_required", m->is_required);
		json_object_end(w);
	}
	json_array_end(w);
}

static void json_locator(struct json_writer *w, const struct vhdx_info *info)
{
	unsigned i, j;

	json_key(w, "parent_locator");
	if (!info->locator_count) {
		json_null(w);
		return;
	}
	json_object_begin(w);
	for (i = 0; i < info->locator_count; i++) {
		const struct vhdx_locator_entry *e = &info->locator[i];

		/* JSON objects want unique keys: the first one wins, as a
		 * reader looking a key up would find it. */
		for (j = 0; j < i; j++)
			if (!strcmp(info->locator[j].key, e->key))
				break;
		if (j < i)
			continue;
		json_kv_string(w, e->key, e->value);
	}
	json_object_end(w);
}

static void json_probe(struct json_writer *w, const struct inspect *in)
{
	const struct probe_result *pr = &in->probe;
	unsigned i;

	json_key(w, "partition_table");
	if (pr->table_found) {
		json_object_begin(w);
		json_kv_string(w, "type", pr->table_type);
		json_kv_string(w, "id", pr->table_id[0] ? pr->table_id : NULL);
		json_object_end(w);
	} else {
		json_null(w);
	}
	json_kv_bool(w, "partition_table_ambivalent", pr->table_ambivalent);

	json_key(w, "partitions");
	json_array_begin(w);
	for (i = 0; i < pr->nparts; i++) {
		const struct probe_part *p = &pr->parts[i];
		const char *tn = part_type_name(p->type);

		json_object_begin(w);
		json_kv_i64(w, "number", p->number);
		json_kv_u64(w, "start", p->start);
		json_kv_u64(w, "size", p->size);
		json_kv_string(w, "type", p->type);
		if (tn)
			json_kv_string(w, "type_name", tn);
		if (p->uuid[0])
			json_kv_string(w, "part_uuid", p->uuid);
		if (p->name[0])
			json_kv_string(w, "name", p->name);
		json_kv_bool(w, "extended", p->extended);
		json_kv_bool(w, "logical", p->logical);
		json_kv_bool(w, "past_end", p->past_end);
		if (p->fs.found)
			json_fs_members(w, &p->fs);
		if (p->fs.ambivalent)
			json_kv_bool(w, "fs_ambivalent", true);
		json_object_end(w);
	}
	json_array_end(w);

	json_key(w, "filesystem");
	if (pr->disk_fs.found) {
		json_object_begin(w);
		json_fs_members(w, &pr->disk_fs);
		json_object_end(w);
	} else {
		json_null(w);
	}
	if (in->probe_ret)
		json_kv_string(w, "probe_error", in->probe_why);
}

static int print_json(struct inspect *in)
{
	const struct vhdx_info *info = in->info;
	struct state_count sc[8];
	struct json_writer w;
	unsigned i, n;

	json_init(&w, stdout, 2);
	json_object_begin(&w);
	json_kv_string(&w, "path", info->path);
	json_kv_u64(&w, "file_size", info->file_size);
	json_kv_string(&w, "creator", info->creator);
	json_kv_string(&w, "type", vhdx_type_name(info->type));
	json_kv_u64(&w, "virtual_size", info->virtual_size);
	json_kv_u64(&w, "block_size", info->block_size);
	json_kv_u64(&w, "logical_sector_size", info->logical_sector_size);
	json_kv_u64(&w, "physical_sector_size", info->physical_sector_size);
	json_kv_bool(&w, "leave_blocks_allocated",
		     info->leave_blocks_allocated);
	json_kv_bool(&w, "has_parent", info->has_parent);
	if (info->has_page83)
		json_guid(&w, "page83_id", &info->page83);
	else
		json_kv_null(&w, "page83_id");

	json_kv_bool(&w, "log_dirty", info->log_dirty);
	json_kv_string(&w, "log_state", log_state(info));
	json_kv_u64(&w, "log_entries_replayed", info->log_entries_replayed);
	json_kv_u64(&w, "log_sequence_head", info->log_sequence_head);
	json_kv_bool(&w, "log_replayed_on_disk", info->log_replayed_on_disk);

	json_kv_u64(&w, "current_header", info->current_header + 1);
	json_headers(&w, info);
	json_regions(&w, info);
	json_kv_u64(&w, "metadata_offset", info->metadata_offset);
	json_kv_u64(&w, "metadata_length", info->metadata_length);
	json_metadata(&w, info);

	json_kv_u64(&w, "bat_offset", info->bat_offset);
	json_kv_u64(&w, "bat_length", info->bat_length);
	json_kv_u64(&w, "bat_entries", info->bat_entries);
	json_kv_u64(&w, "chunk_ratio", info->chunk_ratio);
	json_kv_u64(&w, "payload_blocks", info->payload_blocks);
	json_key(&w, "block_states");
	json_object_begin(&w);
	n = block_states(info, sc);
	for (i = 0; i < n; i++)
		json_kv_u64(&w, sc[i].name, sc[i].count);
	json_object_end(&w);
	json_kv_u64(&w, "sector_bitmap_blocks_present",
		    info->bitmap_blocks_present);

	json_locator(&w, info);
	json_kv_string(&w, "parent_path", info->parent_path);
	json_key(&w, "parent");
	json_parent(&w, in->img);

	json_probe(&w, in);
	json_object_end(&w);
	return json_end(&w);
}

/* --- Text -------------------------------------------------------------- */

#define ROW "  %-23s "

/* Strings from the image go to a terminal: no control characters. */
static void put_safe(const char *s)
{
	for (; s && *s; s++)
		putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

/* "N bytes (H)" for exact values with a readable hint. */
static void row_size(const char *label, uint64_t v)
{
	char h[32];

	if (v < 1024)
		printf(ROW "%" PRIu64 " bytes\n", label, v);
	else
		printf(ROW "%" PRIu64 " bytes (%s)\n", label, v,
		       fmt_size_exact(h, sizeof(h), v));
}

static void row_guid(const char *label, const struct vhdx_guid *g,
		     const char *if_zero)
{
	char buf[VHDX_GUID_STR_LEN];

	printf(ROW "%s", label, guid_str(g, buf));
	if (if_zero && vhdx_guid_is_zero(g))
		printf(" (%s)", if_zero);
	putchar('\n');
}

static const char *yes_no(bool b)
{
	return b ? "yes" : "no";
}

static void text_headers(const struct vhdx_info *info)
{
	char h1[32];
	int i;

	for (i = 0; i < 2; i++) {
		const struct vhdx_header_info *h = &info->header[i];

		printf("\nHeader %d%s\n", i + 1,
		       i == info->current_header ? " (current)" : "");
		if (!h->valid) {
			printf(ROW "no (bad signature or checksum)\n", "valid");
			continue;
		}
		printf(ROW "yes\n", "valid");
		printf(ROW "%" PRIu64 "\n", "sequence", h->sequence);
		row_guid("FileWriteGuid", &h->file_write_guid, NULL);
		row_guid("DataWriteGuid", &h->data_write_guid, NULL);
		row_guid("LogGuid", &h->log_guid, "no log in use");
		printf(ROW "offset 0x%" PRIx64 ", length %s\n", "log",
		       h->log_offset,
		       fmt_size_exact(h1, sizeof(h1), h->log_length));
		printf(ROW "%u (log format %u)\n", "version", h->version,
		       h->log_version);
	}
}

static void text_log(const struct vhdx_info *info)
{
	printf("\nLog\n");
	if (!info->log_dirty) {
		printf(ROW "clean\n", "state");
		return;
	}
	printf(ROW "dirty: replayed %s, %u entries\n", "state",
	       info->log_replayed_on_disk ? "on disk" : "in memory",
	       info->log_entries_replayed);
	printf(ROW "%" PRIu64 "\n", "head sequence", info->log_sequence_head);
	if (info->log_replayed_on_disk)
		printf(ROW "the file now holds the replayed state\n", "note");
	else
		printf(ROW "file not changed; --replay writes the log "
			   "into it\n",
		       "note");
}

static void text_regions(const struct vhdx_info *info)
{
	char buf[VHDX_GUID_STR_LEN], h[32];
	unsigned i;

	printf("\nRegion table (copy %d used)\n", info->region_table + 1);
	printf("  %-9s %-36s  %-12s %-9s %s\n", "region", "GUID", "offset",
	       "length", "required");
	for (i = 0; i < info->region_count; i++) {
		const struct vhdx_region_info *r = &info->regions[i];
		char off[24];

		snprintf(off, sizeof(off), "0x%" PRIx64, r->file_offset);
		printf("  %-9s %-36s  %-12s %-9s %s\n", r->name,
		       guid_str(&r->guid, buf), off,
		       fmt_size_exact(h, sizeof(h), r->length),
		       yes_no(r->required));
	}
}

static void text_metadata(const struct vhdx_info *info)
{
	char buf[VHDX_GUID_STR_LEN], h[32];
	unsigned i;

	printf("\nMetadata items (region at 0x%" PRIx64 ", %s)\n",
	       info->metadata_offset,
	       fmt_size_exact(h, sizeof(h), info->metadata_length));
	printf("  %-21s %-36s  %-8s %-6s %s\n", "item", "GUID", "offset",
	       "length", "flags");
	for (i = 0; i < info->metadata_count; i++) {
		const struct vhdx_metadata_info *m = &info->metadata[i];
		char off[16], flags[48];

		snprintf(off, sizeof(off), "0x%" PRIx32, m->offset);
		snprintf(flags, sizeof(flags), "%s%s%s",
			 m->is_user ? "user " : "",
			 m->is_virtual_disk ? "virtual-disk " : "",
			 m->is_required ? "required" : "");
		printf("  %-21s %-36s  %-8s %-6" PRIu32 " %s\n", m->name,
		       guid_str(&m->item_id, buf), off, m->length,
		       flags[0] ? flags : "-");
	}

	printf("\nDisk\n");
	printf(ROW "%s\n", "type", vhdx_type_name(info->type));
	row_size("virtual size", info->virtual_size);
	row_size("block size", info->block_size);
	printf(ROW "%" PRIu32 " bytes\n", "logical sector size",
	       info->logical_sector_size);
	printf(ROW "%" PRIu32 " bytes\n", "physical sector size",
	       info->physical_sector_size);
	printf(ROW "%s\n", "leave blocks allocated",
	       yes_no(info->leave_blocks_allocated));
	printf(ROW "%s\n", "has parent", yes_no(info->has_parent));
	printf(ROW "%s\n", "page 83 id",
	       info->has_page83 ? guid_str(&info->page83, buf) : "(none)");
}

static void text_bat(const struct vhdx_info *info)
{
	struct state_count sc[8];
	char h[32];
	unsigned i, n;

	printf("\nBlock allocation table\n");
	printf(ROW "0x%" PRIx64 ", %s\n", "region", info->bat_offset,
	       fmt_size_exact(h, sizeof(h), info->bat_length));
	printf(ROW "%" PRIu64 "\n", "chunk ratio", info->chunk_ratio);
	printf(ROW "%" PRIu64 " (%" PRIu64 " payload blocks)\n", "entries",
	       info->bat_entries, info->payload_blocks);
	n = block_states(info, sc);
	for (i = 0; i < n; i++)
		if (sc[i].count)
			printf("    %-21s %" PRIu64 "\n", sc[i].name,
			       sc[i].count);
	printf(ROW "%" PRIu64 " present\n", "sector bitmap blocks",
	       info->bitmap_blocks_present);
}

static void text_parents(struct vhdx_image *img, const struct vhdx_info *info)
{
	struct vhdx_image *p;
	unsigned i, level = 0;
	char h1[32], h2[32];

	if (info->locator_count) {
		printf("\nParent locator\n");
		for (i = 0; i < info->locator_count; i++) {
			printf(ROW, info->locator[i].key);
			put_safe(info->locator[i].value);
			putchar('\n');
		}
	}
	if (!info->has_parent && !vhdx_get_parent(img))
		return;
	printf("\nParent chain\n");
	for (p = vhdx_get_parent(img); p; p = vhdx_get_parent(p)) {
		const struct vhdx_info *pi = vhdx_get_info(p);

		printf("  %u. ", ++level);
		put_safe(pi->path);
		printf("\n     %s, %s virtual, %s blocks%s\n",
		       vhdx_type_name(pi->type),
		       fmt_size_exact(h1, sizeof(h1), pi->virtual_size),
		       fmt_size_exact(h2, sizeof(h2), pi->block_size),
		       pi->log_dirty ? ", log dirty" : "");
	}
	if (!level)
		printf("  (not opened)\n");
}

static void text_fs(const struct probe_fs *fs)
{
	if (fs->ambivalent) {
		printf("several conflicting signatures (not reported)");
		return;
	}
	if (!fs->found) {
		printf("no filesystem found");
		return;
	}
	put_safe(fs->type);
	if (fs->version[0]) {
		printf(" ");
		put_safe(fs->version);
	}
	if (fs->label[0]) {
		printf(", label \"");
		put_safe(fs->label);
		printf("\"");
	}
	if (fs->uuid[0]) {
		printf(", UUID ");
		put_safe(fs->uuid);
	}
}

/* One partition: where, what type, and its filesystem. */
static void text_part(const struct probe_part *p, uint64_t virtual_size)
{
	const char *tn = part_type_name(p->type);
	char h1[32], h2[32];

	printf("  %-3d start %-14" PRIu64 " size %-14" PRIu64 " (%s at %s)\n",
	       p->number, p->start, p->size,
	       fmt_size_exact(h1, sizeof(h1), p->size),
	       fmt_size_exact(h2, sizeof(h2), p->start));
	printf("      type %s", p->type);
	if (tn)
		printf(" (%s)", tn);
	if (p->name[0]) {
		printf(", name \"");
		put_safe(p->name);
		printf("\"");
	}
	if (p->past_end)
		printf(", RUNS PAST THE END OF THE DISK");
	printf("\n");
	if (p->extended)
		return;
	printf("      ");
	if (p->start >= virtual_size)
		printf("outside the disk, not probed");
	else
		text_fs(&p->fs);
	printf("\n");
}

static void text_probe(const struct inspect *in)
{
	const struct probe_result *pr = &in->probe;
	unsigned i;

	printf("\nPartitions\n");
	if (pr->table_ambivalent)
		printf(ROW "several conflicting tables (not reported)\n",
		       "table");
	else if (!pr->table_found)
		printf(ROW "none found\n", "table");
	else
		printf(ROW "%s, id %s\n", "table", pr->table_type,
		       pr->table_id[0] ? pr->table_id : "(none)");
	for (i = 0; i < pr->nparts; i++)
		text_part(&pr->parts[i], in->info->virtual_size);
	if (pr->disk_fs.found || pr->disk_fs.ambivalent || !pr->table_found) {
		printf(ROW, "whole-disk filesystem");
		if (pr->disk_fs.found || pr->disk_fs.ambivalent)
			text_fs(&pr->disk_fs);
		else
			printf("none found");
		printf("\n");
	}
	if (in->probe_ret)
		printf(ROW "%s\n", "PROBE FAILED", in->probe_why);
}

static int print_text(struct inspect *in)
{
	const struct vhdx_info *info = in->info;
	char h1[32], h2[32];

	printf("%s: %s VHDX, %s virtual, %s blocks, log %s\n", info->path,
	       vhdx_type_name(info->type),
	       fmt_size_exact(h1, sizeof(h1), info->virtual_size),
	       fmt_size_exact(h2, sizeof(h2), info->block_size),
	       !info->log_dirty		    ? "clean"
	       : info->log_replayed_on_disk ? "replayed on disk"
					    : "DIRTY (replayed in memory)");

	printf("\nFile\n");
	printf(ROW, "path");
	put_safe(info->path);
	putchar('\n');
	row_size("size", info->file_size);
	printf(ROW, "creator");
	put_safe(info->creator[0] ? info->creator : "(empty)");
	putchar('\n');

	text_headers(info);
	text_log(info);
	text_regions(info);
	text_metadata(info);
	text_bat(info);
	text_parents(in->img, info);
	text_probe(in);

	errno = 0;
	if (fflush(stdout) || ferror(stdout))
		return errno ? -errno : -EIO;
	return 0;
}

/* --- Command ----------------------------------------------------------- */

/* The command line. */
struct inspect_opts {
	bool json;
	unsigned flags; /* VHDX_OPEN_* */
	const char *image;
};

/* Fill O from the command line.  Returns -1 to go on, else the exit
 * status (after --help or an error line). */
static int parse_opts(struct inspect_opts *o, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "replay", no_argument, NULL, 'r' },
		{ "ignore-parent-linkage", no_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o->json = true;
			break;
		case 'r':
			o->flags |= VHDX_OPEN_REPLAY;
			break;
		case 'i':
			o->flags |= VHDX_OPEN_IGNORE_LINKAGE;
			break;
		case 'h':
			printf("usage: %s\n", inspect_usage);
			return EXIT_OK;
		default:
			error_msg("inspect: unknown option '%s'; usage: %s",
				  argv[optind - 1], inspect_usage);
			return EXIT_ERROR;
		}
	}
	if (argc - optind != 1) {
		error_msg("inspect: %s; usage: %s",
			  argc == optind ? "no IMAGE given"
					 : "only one IMAGE at a time",
			  inspect_usage);
		return EXIT_ERROR;
	}
	if (!argv[optind][0]) {
		error_msg("inspect: IMAGE is an empty string; usage: %s",
			  inspect_usage);
		return EXIT_ERROR;
	}
	o->image = argv[optind];
	return -1;
}

int cmd_inspect(int argc, char **argv)
{
	struct inspect in = { 0 };
	struct vhdx_error err = { { 0 } };
	struct inspect_opts o;
	int ret;

	ret = parse_opts(&o, argc, argv);
	if (ret >= 0)
		return ret;
	ret = vhdx_open(o.image, o.flags, &in.img, &err);
	if (ret < 0) {
		if (err.msg[0])
			error_msg("%s", err.msg);
		else
			error_msg("%s: %s", o.image, strerror(-ret));
		return EXIT_ERROR;
	}
	in.info = vhdx_get_info(in.img);
	in.probe_ret = probe_image(in.img, &in.probe, in.probe_why,
				   sizeof(in.probe_why));

	ret = o.json ? print_json(&in) : print_text(&in);
	if (ret)
		error_msg("inspect: cannot write the report: %s",
			  strerror(-ret));
	else if (in.probe_ret)
		error_msg("%s: %s", in.info->path, in.probe_why);

	probe_result_free(&in.probe);
	vhdx_close(in.img);
	return ret || in.probe_ret ? EXIT_ERROR : EXIT_OK;
}
