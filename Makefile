# procman: build, test, demo, bench, sanitizers.  See README.md.
LUA        ?= lua5.4
PKG_LUA    ?= lua5.4
CC         ?= cc
LUA_CFLAGS  = $(shell pkg-config --cflags $(PKG_LUA) 2>/dev/null)
LUA_LIBS    = $(shell pkg-config --libs $(PKG_LUA) 2>/dev/null)
WARN       := -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -pedantic
CFLAGS     ?= -O2 -g
CSTD       := -std=c99
SANFLAGS   := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

CORE_SRC   := csrc/budget.c csrc/buffer.c csrc/codec.c csrc/crc32c.c csrc/interrupt.c csrc/journal.c \
              csrc/journal_lua.c csrc/pm.c csrc/procman.c
CORE_HDR   := $(wildcard csrc/*.h)
TEST_SRC   := $(wildcard csrc/test/test_*.c)
BUILD      := build

# Debian packages the build and the tests need (make deps installs them).
DEB_PKGS   := lua5.4 liblua5.4-dev lua-busted libcmocka-dev lua-check luarocks \
              lua-argparse lua-cjson libedit-dev pkg-config gcc make valgrind

export LUA_PATH  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/bench/?.lua;;
export LUA_CPATH := $(CURDIR)/$(BUILD)/?.so;;

.PHONY: all deps test test-lua test-c lint test-rock demo bench sanitize valgrind soak clean

all: $(BUILD)/procman/core.so $(BUILD)/procman/lineedit.so

$(BUILD)/procman/core.so: $(CORE_SRC) $(CORE_HDR) | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) -fPIC -shared $(LUA_CFLAGS) $(CORE_SRC) -o $@

# Line editing for the REPL (libedit, BSD licensed): a module of its own,
# so the core links nothing but Lua.
$(BUILD)/procman/lineedit.so: csrc/lineedit.c | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) -fPIC -shared $(LUA_CFLAGS) csrc/lineedit.c -o $@ -ledit

# Install missing Debian packages: as root with apt-get, else say how.
deps:
	@sh tools/deps.sh $(DEB_PKGS)

deps-build:
	@sh tools/deps.sh lua5.4 liblua5.4-dev libedit-dev pkg-config gcc make

test: deps all test-lua lint test-rock test-c

test-lua: all
	busted --lua=$(LUA)

lint:
	luacheck --quiet lua spec bench examples tools bin/procman

test-rock:
	@sh tools/test-rock.sh

$(BUILD)/test/%: csrc/test/%.c $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(LUA_CFLAGS) -Icsrc -DPROCMAN_LUA_DIR='"$(CURDIR)/lua"' \
	  $< $(CORE_SRC) -o $@ $(LUA_LIBS) -lcmocka -lm

test-c: $(patsubst csrc/test/%.c,$(BUILD)/test/%,$(TEST_SRC))
	@for t in $^; do echo "== $$t"; $$t || exit 1; done

demo: deps-build all
	@$(LUA) examples/seed_session.lua

bench: deps-build all
	$(LUA) bench/run.lua

# AddressSanitizer + UndefinedBehaviorSanitizer: the C tests, and the
# busted suite against a sanitized build of the module.
sanitize: deps
	$(MAKE) clean
	$(MAKE) all test-c CFLAGS="-O1 -g $(SANFLAGS)" LUA_LIBS="$(LUA_LIBS) $(SANFLAGS)"
	ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	  $(LUA) $$(command -v busted)
	$(MAKE) clean

valgrind: deps all $(patsubst csrc/test/%.c,$(BUILD)/test/%,$(TEST_SRC))
	valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	  $(LUA) $$(command -v busted)
	@for t in $(patsubst csrc/test/%.c,$(BUILD)/test/%,$(TEST_SRC)); do \
	  echo "== valgrind $$t"; \
	  valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all $$t || exit 1; \
	done

# The crash soak, long (make test runs 15 rounds): SOAK_ROUNDS kills.
SOAK_ROUNDS ?= 300
soak: deps all
	$(LUA) tools/soak.lua --rounds $(SOAK_ROUNDS)

clean:
	rm -rf $(BUILD)
