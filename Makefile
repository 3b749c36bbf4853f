# Makefile - builds hvresync, its tests and its docs.  Plain make and
# pkg-config; `make check` and `make demo` install missing Debian packages
# through tools/install-deps first.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
DESTDIR ?=

B := build
CC ?= cc
PKG_CONFIG ?= pkg-config
PKGS := fuse3 liburing blkid libxxhash libssl libcrypto devmapper inih libzstd libsystemd
# A package pkg-config cannot find is an error, not an empty flag list.
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) || echo PKG_CONFIG_FAILED)
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS) || echo PKG_CONFIG_FAILED)
CMOCKA_CFLAGS := $(shell $(PKG_CONFIG) --cflags cmocka || echo PKG_CONFIG_FAILED)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka || echo PKG_CONFIG_FAILED)
ifneq ($(filter deps clean format check check-vm demo,$(MAKECMDGOALS)),$(MAKECMDGOALS))
ifneq ($(findstring PKG_CONFIG_FAILED,$(PKG_CFLAGS) $(PKG_LIBS) $(CMOCKA_CFLAGS) $(CMOCKA_LIBS)),)
$(error pkg-config cannot find some of: $(PKGS) cmocka; run tools/install-deps (or make check, which does))
endif
endif

CFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
ALL_CFLAGS := -std=gnu11 $(WARNINGS) -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
	-I. $(PKG_CFLAGS) $(CFLAGS)
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
LIBS := $(PKG_LIBS) -lpthread

# Layers, lowest first.  Each builds one archive; a program links its own
# layer and those below it, so an upward call fails to link.
#   vhdx <- uring, fuse <- agent/lib <- agent/sync <- agent/daemon <- agent/cli
LAYERS := vhdx uring fuse lib sync daemon cli
DIR_vhdx := vhdx
DIR_uring := uring
DIR_fuse := fuse
DIR_lib := agent/lib
DIR_sync := agent/sync
DIR_daemon := agent/daemon
DIR_cli := agent/cli
# What each layer may use, itself first (link order).
BELOW_vhdx := vhdx
BELOW_uring := uring vhdx
BELOW_fuse := fuse vhdx
BELOW_lib := lib vhdx
BELOW_sync := sync lib uring vhdx
BELOW_daemon := daemon sync lib uring vhdx
BELOW_cli := cli daemon sync lib fuse uring vhdx

SRC_OF = $(sort $(wildcard $(DIR_$(1))/*.c))
ARCHIVE = $(B)/layers/$(1).a
SAN_ARCHIVE = $(B)/san/layers/$(1).a
ARCHIVES_BELOW = $(foreach l,$(BELOW_$(1)),$(call ARCHIVE,$(l)))
SAN_ARCHIVES_BELOW = $(foreach l,$(BELOW_$(1)),$(call SAN_ARCHIVE,$(l)))

# The layer each unit test belongs to (it links only that and below).
UNIT_LAYER_vhdx := test_bat test_crc32c test_guid test_header test_log \
	test_log_active test_log_bounds test_log_scan test_metadata test_region \
	test_writer test_merge
UNIT_LAYER_uring := test_reader test_hash test_cached
UNIT_LAYER_fuse := test_dmview
UNIT_LAYER_lib := test_jsonparse test_fsutil test_snapshot test_watch test_prom \
	test_jsonparse_fuzz test_svgmap test_bufpool
UNIT_LAYER_sync := test_proto test_wire test_names test_conn_limits test_authz
UNIT_LAYER_daemon := test_cimtime test_config test_job test_methods
UNIT_LAYER_cli :=
layer_of = $(strip $(foreach l,$(LAYERS),$(if $(filter $(1),$(UNIT_LAYER_$(l))),$(l))))

UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
HELPER_SRC := $(sort $(wildcard tests/helpers/*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
UNIT_SAN_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/san/tests/%)
HELPER_BIN := $(HELPER_SRC:tests/helpers/%.c=$(B)/helpers/%)
ALL_ARCHIVES := $(call ARCHIVES_BELOW,cli)

.PHONY: all deps check check-vm check-layers unit unit-san integration demo install \
	clean format bench fuzz fuzz-seeds

all: $(B)/hvresync $(HELPER_BIN)

deps:
	@tools/install-deps

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(B)/san/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -MMD -MP -c -o $@ $<

define LAYER_RULES
$(call ARCHIVE,$(1)): $(patsubst %.c,$(B)/obj/%.o,$(call SRC_OF,$(1)))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	$$(AR) rcs $$@ $$^
$(call SAN_ARCHIVE,$(1)): $(patsubst %.c,$(B)/san/obj/%.o,$(call SRC_OF,$(1)))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	$$(AR) rcs $$@ $$^
endef
$(foreach l,$(LAYERS),$(eval $(call LAYER_RULES,$(l))))

# main.o is in the cli archive; the archives go top layer first.
$(B)/hvresync: $(ALL_ARCHIVES)
	$(CC) $(ALL_CFLAGS) -o $@ -Wl,--whole-archive $(call ARCHIVE,cli) \
		-Wl,--no-whole-archive $(filter-out $(call ARCHIVE,cli),$^) $(LIBS)

define UNIT_RULES
$(B)/tests/$(1): tests/unit/$(1).c $(call ARCHIVES_BELOW,$(2))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) $$(CMOCKA_CFLAGS) -o $$@ $$< \
		$(call ARCHIVES_BELOW,$(2)) $$(CMOCKA_LIBS) $$(LIBS)
$(B)/san/tests/$(1): tests/unit/$(1).c $(call SAN_ARCHIVES_BELOW,$(2))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(ALL_CFLAGS) $$(SAN_FLAGS) $$(CMOCKA_CFLAGS) -o $$@ $$< \
		$(call SAN_ARCHIVES_BELOW,$(2)) $$(CMOCKA_LIBS) $$(LIBS)
endef
$(foreach t,$(UNIT_SRC:tests/unit/%.c=%),$(if $(call layer_of,$(t)),\
	$(eval $(call UNIT_RULES,$(t),$(call layer_of,$(t)))),\
	$(error tests/unit/$(t).c: name its layer in the Makefile's UNIT_LAYER_*)))

$(B)/helpers/%: tests/helpers/%.c $(ALL_ARCHIVES)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(filter-out %/cli.a,$(ALL_ARCHIVES)) $(LIBS)

# libFuzzer targets (clang), each linking only what it needs: the frame
# decoder its few sources (no OpenSSL), the others the layer archives
# rebuilt with clang's sanitizer coverage in $(B)/fuzz/ (the normal gcc
# build is untouched).  `make fuzz` also makes the seed corpora
# $(B)/fuzz/seeds-NAME/ (tools/fuzz/seeds).  tools/fuzz/README.md.
FUZZ_CC ?= clang
FUZZ_TARGETS := frame vhdx json config
FUZZ_BIN := $(FUZZ_TARGETS:%=$(B)/fuzz/fuzz_%)
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer
FUZZ_CFLAGS := -g -O1 -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I. \
	$(WARNINGS) $(FUZZ_SAN)
FUZZ_FLAGS := $(FUZZ_CFLAGS) -fsanitize=fuzzer
FUZZ_ARCHIVE = $(B)/fuzz/layers/$(1).a
FUZZ_ARCHIVES_BELOW = $(foreach l,$(BELOW_$(1)),$(call FUZZ_ARCHIVE,$(l)))
FUZZ_frame_SRC := tools/fuzz/fuzz_frame.c agent/sync/proto.c \
	agent/sync/common.c agent/sync/errmsg.c vhdx/crc32c.c
# The layer each archive-linked target needs, with the libraries for it.
FUZZ_vhdx_LAYER := vhdx
FUZZ_vhdx_LIBS := -lpthread
FUZZ_json_LAYER := daemon
FUZZ_json_LIBS := $(LIBS) -lm
FUZZ_config_LAYER := daemon
FUZZ_config_LIBS := $(LIBS)

FUZZ_TOOLS := $(B)/fuzz/tools/vhdx2chunks $(B)/fuzz/tools/mkframes
fuzz: $(FUZZ_BIN) fuzz-seeds
fuzz-seeds: $(FUZZ_BIN) $(FUZZ_TOOLS) all
	tools/fuzz/seeds $(B)

$(B)/fuzz/fuzz_frame: $(FUZZ_frame_SRC) $(wildcard agent/sync/*.h vhdx/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $(FUZZ_frame_SRC) -lpthread

$(B)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(PKG_CFLAGS) -fsanitize=fuzzer-no-link \
		-MMD -MP -c -o $@ $<

define FUZZ_LAYER_RULES
$(call FUZZ_ARCHIVE,$(1)): $(patsubst %.c,$(B)/fuzz/obj/%.o,$(call SRC_OF,$(1)))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	$$(AR) rcs $$@ $$^
endef
$(foreach l,$(LAYERS),$(eval $(call FUZZ_LAYER_RULES,$(l))))

define FUZZ_TARGET_RULES
$(B)/fuzz/fuzz_$(1): tools/fuzz/fuzz_$(1).c tools/fuzz/chunks.h \
		$(call FUZZ_ARCHIVES_BELOW,$(FUZZ_$(1)_LAYER))
	@mkdir -p $$(dir $$@)
	$$(FUZZ_CC) $$(FUZZ_FLAGS) $$(PKG_CFLAGS) -o $$@ $$< \
		$(call FUZZ_ARCHIVES_BELOW,$(FUZZ_$(1)_LAYER)) $(FUZZ_$(1)_LIBS)
endef
$(foreach t,vhdx json config,$(eval $(call FUZZ_TARGET_RULES,$(t))))

# The seed makers are plain programs: images in, chunk lists out; frames
# from the protocol's own encoder.
$(B)/fuzz/tools/vhdx2chunks: tools/fuzz/vhdx2chunks.c tools/fuzz/chunks.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<
$(B)/fuzz/tools/mkframes: tools/fuzz/mkframes.c $(FUZZ_frame_SRC:tools/fuzz/fuzz_frame.c=)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ -lpthread

unit: $(UNIT_BIN)
unit-san: $(UNIT_SAN_BIN)

# The whole suite: unit tests (plain and under ASan+UBSan), the layering
# rule, then the integration tests against qemu-img, libvhdi and FUSE.
check: deps
	$(MAKE) all unit unit-san
	tests/run

# The guest test alone: Debian 12's kernel under qemu (tests/t-realkernel.sh).
check-vm: deps
	$(MAKE) all
	HVRESYNC=$(abspath $(B))/hvresync tests/t-realkernel.sh

demo: deps
	$(MAKE) all
	tools/demo

bench: all
	tools/bench/view-read
	tools/bench/verify
	tools/bench/resync

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(MANDIR)/man5
	install -m 0755 $(B)/hvresync $(DESTDIR)$(BINDIR)/hvresync
	install -m 0644 docs/man/hvresync.8 $(DESTDIR)$(MANDIR)/man8/
	if [ -f docs/man/hvresync.conf.5 ]; then \
		install -m 0644 docs/man/hvresync.conf.5 $(DESTDIR)$(MANDIR)/man5/; fi
	install -d $(DESTDIR)$(SYSTEMDDIR)
	for u in tools/systemd/*.service tools/systemd/*.timer; do \
		sed 's|@BINDIR@|$(BINDIR)|g' "$$u" \
			>"$(DESTDIR)$(SYSTEMDDIR)/$${u##*/}" && \
		chmod 0644 "$(DESTDIR)$(SYSTEMDDIR)/$${u##*/}" || exit 1; \
	done

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' -type f 2>/dev/null)
