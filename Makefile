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

CORE_SRC   := csrc/budget.c csrc/buffer.c csrc/canonical.c csrc/codec.c csrc/crc32c.c csrc/engine.c \
              csrc/fold_scan.c csrc/journal.c \
              csrc/journal_lua.c csrc/lock_holder.c csrc/outbox.c csrc/pattern.c csrc/pattern_lua.c \
              csrc/pm.c csrc/procman.c csrc/shorthand.c
# procman.terminal: the command's terminal helpers, apart from the core.
TERMINAL_SRC := csrc/terminal.c csrc/interrupt.c csrc/line_reader.c
# Fault injection (csrc/faults.h) is compiled into test builds only: the
# C tests, and build/faults/procman/core.so, which busted loads first
# (.busted); build/procman/core.so and the rock have none.
FAULTS_SRC := csrc/faults.c
FAULTS_SO   = $(BUILD)/faults/procman/core.so
CORE_HDR   := $(wildcard csrc/*.h)
TEST_SRC   := $(wildcard csrc/test/test_*.c)
BUILD      := build

# Debian packages the build and the tests need (make deps installs them).
DEB_PKGS   := lua5.4 liblua5.4-dev lua-busted libcmocka-dev lua-check luarocks \
              lua-argparse lua-cjson libedit-dev pkg-config gcc make valgrind \
              postgresql libpq-dev

# The library (lua/), the procman command's tools (cli/lua/), the shipped
# workflows (workflows/lua/), procman.pg (pg/lua/): one module namespace.
LIB_PATH   := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/cli/lua/?.lua;$(CURDIR)/workflows/lua/?.lua
export LUA_PATH  := $(LIB_PATH);$(CURDIR)/pg/lua/?.lua;$(CURDIR)/pg/lua/?/init.lua;$(CURDIR)/bench/?.lua;;
export LUA_CPATH := $(CURDIR)/$(BUILD)/?.so;;
# Lua 5.4 reads LUA_PATH_5_4 instead of LUA_PATH when it is set (as README's
# install says to): set it too, so that an installed rock never shadows this
# checkout. (Debian's busted launcher, Lua 5.1, reads LUA_PATH.)
export LUA_PATH_5_4  := $(LUA_PATH)
export LUA_CPATH_5_4 := $(LUA_CPATH)

.PHONY: all deps test test-lua test-c test-pg bench-pg lint test-rock demo bench sanitize valgrind soak fuzz clean luasym

all: $(BUILD)/procman/core.so $(BUILD)/procman/terminal.so $(BUILD)/procman/lineedit.so

$(BUILD)/procman/core.so: $(CORE_SRC) $(CORE_HDR) | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) -fPIC -shared $(LUA_CFLAGS) $(CORE_SRC) -o $@

$(FAULTS_SO): $(CORE_SRC) $(FAULTS_SRC) $(CORE_HDR) | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) -fPIC -shared $(LUA_CFLAGS) -DPROCMAN_FAULTS $(CORE_SRC) $(FAULTS_SRC) -o $@

$(BUILD)/procman/terminal.so: $(TERMINAL_SRC) $(CORE_HDR) | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) -fPIC -shared $(LUA_CFLAGS) $(TERMINAL_SRC) -o $@

# Line editing for the REPL (libedit, BSD licensed): a module of its own,
# so the core links nothing but Lua.
$(BUILD)/procman/lineedit.so: csrc/lineedit.c | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) -fPIC -shared $(LUA_CFLAGS) csrc/lineedit.c -o $@ -ledit

# procman.pg's binding of libpq (its own rock: procman-pg-*.rockspec).
PQ_CFLAGS = $(shell pkg-config --cflags libpq 2>/dev/null)
PQ_LIBS   = $(shell pkg-config --libs libpq 2>/dev/null)

$(BUILD)/procman/pg/core.so: pg/csrc/pg.c | deps-build
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) -fPIC -shared $(LUA_CFLAGS) $(PQ_CFLAGS) $< -o $@ $(PQ_LIBS)

# procman.pg against a throwaway PostgreSQL cluster (Unix socket only, in a
# temporary directory, stopped and removed afterwards).
test-pg: deps all $(BUILD)/procman/pg/core.so
	@dir=$$(mktemp -d /tmp/procman-pg.XXXXXX); \
	conninfo=$$(sh tools/pg-cluster.sh start $$dir) || { cat $$dir/*.log; sh tools/pg-cluster.sh stop $$dir; exit 1; }; \
	echo "== procman.pg on a throwaway PostgreSQL cluster (spec/pg_*_spec.lua)"; \
	PROCMAN_PG="$$conninfo" busted --lua=$(LUA) spec/pg_spec.lua spec/pg_isolation_spec.lua spec/pg_parity_spec.lua spec/pg_concurrency_spec.lua; status=$$?; \
	sh tools/pg-cluster.sh stop $$dir; exit $$status

# Install missing Debian packages: as root with apt-get, else say how.
deps:
	@sh tools/deps.sh $(DEB_PKGS)

deps-build:
	@sh tools/deps.sh lua5.4 liblua5.4-dev libedit-dev libpq-dev pkg-config gcc make

test: deps all test-lua lint test-rock test-c test-pg

# Every spec but PostgreSQL's, which test-pg runs on a cluster of its own
# (plain `busted` shows it as pending, with how to run it).
test-lua: all $(FAULTS_SO)
	@echo "== busted: spec/ on Lua 5.4 (PostgreSQL's spec: make test-pg)"
	busted --lua=$(LUA) --exclude-pattern=^pg_

# Colour codes only on a terminal (not in CI logs or files).
LINT_PATHS := lua cli/lua workflows/lua pg/lua spec bench examples tools bin/procman
lint:
	@echo "== luacheck"
	luacheck --quiet $$([ -t 1 ] || echo --no-color) $(LINT_PATHS)

test-rock:
	@sh tools/test-rock.sh

$(BUILD)/test/%: csrc/test/%.c $(CORE_SRC) $(TERMINAL_SRC) $(FAULTS_SRC) $(CORE_HDR) $(wildcard csrc/test/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(LUA_CFLAGS) -Icsrc -DPROCMAN_FAULTS -DPROCMAN_LUA_PATH='"$(LIB_PATH)"' \
	  $< $(CORE_SRC) $(TERMINAL_SRC) $(FAULTS_SRC) -o $@ $(LUA_LIBS) -lcmocka -lm

# The fuzz harnesses (fuzz/) run over their seed corpus and the crashers
# kept in fuzz/regressions/, with the normal compiler: no libFuzzer needed.
FUZZERS    := decode journal handle pattern recovery
REGRESS    := $(patsubst %,$(BUILD)/fuzz/regress_%,$(FUZZERS))

# The journal harness reads with small windows, so that records straddle them.
$(BUILD)/fuzz/regress_journal $(BUILD)/fuzz/fuzz_journal: HARNESS_DEFS := -DREAD_WINDOW=64

$(BUILD)/fuzz/regress_%: fuzz/fuzz_%.c fuzz/run_corpus.c $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(LUA_CFLAGS) $(HARNESS_DEFS) -Icsrc -DPROCMAN_LUA_PATH='"$(LIB_PATH)"' \
	  $< fuzz/run_corpus.c $(CORE_SRC) -o $@ $(LUA_LIBS) -lm

test-c: $(patsubst csrc/test/%.c,$(BUILD)/test/%,$(TEST_SRC)) $(REGRESS)
	@for t in $(patsubst csrc/test/%.c,$(BUILD)/test/%,$(TEST_SRC)); do echo "== $$t"; $$t || exit 1; done
	@for f in $(FUZZERS); do echo "== fuzz corpus: $$f"; \
	  $(BUILD)/fuzz/regress_$$f fuzz/corpus/$$f $$(ls -d fuzz/regressions/$$f 2>/dev/null) || exit 1; done

demo: deps-build all
	@$(LUA) examples/seed_session.lua

bench: deps-build all
	$(LUA) bench/run.lua

# procman.pg: 1, 2 and 3 workers, appends, latency; the journal side by side.
bench-pg: deps all $(BUILD)/procman/pg/core.so
	$(LUA) bench/pg_bench.lua

# lua5.4 with Lua's own symbols, for callgrind and perf (tools/luasym.c):
# Debian's lua5.4 is stripped; this links the same release statically.
luasym: $(BUILD)/luasym
$(BUILD)/luasym: tools/luasym.c
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(LUA_CFLAGS) -o $@ $< -Wl,-E \
	  $(shell pkg-config --variable=libdir $(PKG_LUA))/liblua5.4.a -lm -ldl

# AddressSanitizer + UndefinedBehaviorSanitizer: the C tests, and the
# busted suite against a sanitized build of the module.
sanitize: deps
	$(MAKE) clean
	$(MAKE) all $(FAULTS_SO) test-c CFLAGS="-O1 -g $(SANFLAGS)" LUA_LIBS="$(LUA_LIBS) $(SANFLAGS)"
	ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	  $(LUA) $$(command -v busted)
	$(MAKE) clean

valgrind: deps all $(FAULTS_SO) $(patsubst csrc/test/%.c,$(BUILD)/test/%,$(TEST_SRC))
	valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	  $(LUA) $$(command -v busted)
	@for t in $(patsubst csrc/test/%.c,$(BUILD)/test/%,$(TEST_SRC)); do \
	  echo "== valgrind $$t"; \
	  valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all $$t || exit 1; \
	done
	@$(MAKE) --no-print-directory $(REGRESS)
	@for f in $(FUZZERS); do echo "== valgrind fuzz corpus: $$f"; \
	  valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all \
	    $(BUILD)/fuzz/regress_$$f fuzz/corpus/$$f $$(ls -d fuzz/regressions/$$f 2>/dev/null) || exit 1; done

# The crash soak, long (make test runs a few rounds): SOAK_ROUNDS kills at
# each sync level (the buffered ones lose what is not yet written).
SOAK_ROUNDS ?= 300
soak: deps all
	@for sync in always batch none; do $(LUA) tools/soak.lua --rounds $(SOAK_ROUNDS) --sync $$sync || exit 1; done

# libFuzzer (clang), each harness for FUZZ_SECONDS under ASan and UBSan. New
# inputs go to build/fuzz/corpus-<name>; a crasher stops the run, saved as
# build/fuzz/crash-<name>-*: keep it in fuzz/regressions/<name>/ once fixed.
FUZZ_SECONDS ?= 60
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.c $(CORE_SRC) $(CORE_HDR) | deps-fuzz
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) $(LUA_CFLAGS) $(HARNESS_DEFS) -Icsrc -DPROCMAN_LUA_PATH='"$(LIB_PATH)"' \
	  $< $(CORE_SRC) -o $@ $(LUA_LIBS) -lm

deps-fuzz:
	@sh tools/deps.sh clang libclang-rt-14-dev lua5.4 liblua5.4-dev pkg-config

fuzz: $(patsubst %,$(BUILD)/fuzz/fuzz_%,$(FUZZERS))
	@for f in $(FUZZERS); do \
	  echo "== fuzz $$f for $(FUZZ_SECONDS) s"; \
	  mkdir -p $(BUILD)/fuzz/corpus-$$f; \
	  $(BUILD)/fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -timeout=10 \
	    -rss_limit_mb=2048 -artifact_prefix=$(BUILD)/fuzz/crash-$$f- \
	    $(BUILD)/fuzz/corpus-$$f fuzz/corpus/$$f > $(BUILD)/fuzz/log-$$f 2>&1 \
	    || { tail -40 $(BUILD)/fuzz/log-$$f; exit 1; }; \
	  grep -E 'DONE|stat::number_of_executed_units|stat::peak_rss' $(BUILD)/fuzz/log-$$f; \
	done

clean:
	rm -rf $(BUILD)
