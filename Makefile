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
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
CMOCKA_CFLAGS := $(shell $(PKG_CONFIG) --cflags cmocka 2>/dev/null)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null)

CFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
ALL_CFLAGS := -std=gnu11 $(WARNINGS) -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
	-I. $(PKG_CFLAGS) $(CFLAGS)
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
LIBS := $(PKG_LIBS) -lpthread

VHDX_SRC := $(sort $(wildcard vhdx/*.c))
URING_SRC := $(sort $(wildcard uring/*.c))
FUSE_SRC := $(sort $(wildcard fuse/*.c))
AGENT_SRC := $(sort $(wildcard agent/*.c))
LIB_SRC := $(VHDX_SRC) $(URING_SRC) $(FUSE_SRC)
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
HELPER_SRC := $(sort $(wildcard tests/helpers/*.c))

LIB_OBJ := $(LIB_SRC:%.c=$(B)/obj/%.o)
AGENT_OBJ := $(filter-out $(B)/obj/agent/main.o,$(AGENT_SRC:%.c=$(B)/obj/%.o))
SAN_AGENT_OBJ := $(AGENT_OBJ:$(B)/obj/%=$(B)/san/obj/%)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
UNIT_SAN_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/san/tests/%)
SAN_LIB_OBJ := $(LIB_SRC:%.c=$(B)/san/obj/%.o)
HELPER_BIN := $(HELPER_SRC:tests/helpers/%.c=$(B)/helpers/%)

.PHONY: all deps check unit unit-san integration demo install clean \
	format bench

all: $(B)/hvresync $(HELPER_BIN)

deps:
	@tools/install-deps

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(B)/san/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -MMD -MP -c -o $@ $<

$(B)/libhvresync.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(B)/san/libhvresync.a: $(SAN_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(B)/libagent.a: $(AGENT_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(B)/san/libagent.a: $(SAN_AGENT_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(B)/hvresync: $(B)/obj/agent/main.o $(B)/libagent.a $(B)/libhvresync.a
	$(CC) $(ALL_CFLAGS) -o $@ $(B)/obj/agent/main.o $(B)/libagent.a \
		$(B)/libhvresync.a $(LIBS)

$(B)/tests/%: tests/unit/%.c $(B)/libagent.a $(B)/libhvresync.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CMOCKA_CFLAGS) -o $@ $< $(B)/libagent.a \
		$(B)/libhvresync.a $(CMOCKA_LIBS) $(LIBS)

$(B)/san/tests/%: tests/unit/%.c $(B)/san/libagent.a $(B)/san/libhvresync.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) $(CMOCKA_CFLAGS) -o $@ $< \
		$(B)/san/libagent.a $(B)/san/libhvresync.a $(CMOCKA_LIBS) $(LIBS)

$(B)/helpers/%: tests/helpers/%.c $(B)/libagent.a $(B)/libhvresync.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(B)/libagent.a $(B)/libhvresync.a $(LIBS)

unit: $(UNIT_BIN)
unit-san: $(UNIT_SAN_BIN)

# The whole suite: unit tests (plain and under ASan+UBSan), the layering
# rule, then the integration tests against qemu-img, libvhdi and FUSE.
check: deps
	$(MAKE) all unit unit-san
	tests/run

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

-include $(shell find $(B) -name '*.d' 2>/dev/null)
