# spindle: a thin wrapper over Meson + Ninja, so that a newcomer types `make`.
# SPDX-License-Identifier: MIT
#
#   make, make all  install the missing Debian packages that building needs
#                   (when root: compiler, Meson, Ninja), configure build/
#                   (first time only) and build the library, the examples
#                   (build/examples/) and, if cmocka is installed, the tests
#   make check      install the missing packages that testing needs too
#                   (cmocka, Spin, valgrind, clang, socat, strace...), then
#                   build and test every configuration below (tests turned
#                   on), and print a summary; fails if any part fails
#                   (every part runs even if an earlier one failed)
#   make check-default, check-asan, check-tsan, check-pipe, check-fault,
#   check-valgrind  one part of `make check` alone (no package step)
#   make compile-default, compile-asan, ...
#                   configure and build one configuration, no tests
#   make install    build/ into $(DESTDIR)$(PREFIX): static and shared
#                   library, spindle.h, spindle.pc. build/ is Meson's
#                   debugoptimized type (-O2 -g) unless BUILDTYPE says
#                   otherwise (make install BUILDTYPE=release: -O3)
#   make clean      remove every build directory
#   make deps       only the package step of make check
#                   (scripts/install-deps.sh check)
#   make fuzz       the API fuzzer for FUZZ_SECONDS (default 600) from the
#                   seed corpus (build-fuzz/, clang-14); check-fuzz is the
#                   FUZZ_CHECK_SECONDS (60) part of `make check`
#   make stress     the stress tests' long form (tests/test-stress.c, every
#                   back-end, SPINDLE_STRESS_SCALE=STRESS_SCALE, default 20:
#                   10^6 cross-thread wake-ups); make stress-tsan: the same
#                   under ThreadSanitizer (STRESS_TSAN_SCALE, default 20)
#   make bench      install the benchmark peers (when root), build a release
#                   build in build-bench/ and run the benchmark suite against
#                   libuv, libev, libevent and GLib: a table on stdout, JSON
#                   lines and an SVG chart in bench/results/ (a few minutes;
#                   QUICK=1: under a minute; BENCH_ARGS='fd timers': some rows)
#
# Variables: PREFIX (default /usr/local), DESTDIR, BUILDTYPE (Meson build
# type of build/, for make and make install; default debugoptimized), MESON, NINJA,
# TEST_PROCS (parallel test programs, default 2), MESON_TEST_ARGS (extra
# arguments to every `meson test`, e.g. MESON_TEST_ARGS='--repeat 3'),
# NO_DEPS=1 (skip the package step, e.g. on a system without apt), QUICK=1
# and BENCH_ARGS (for `make bench`).
#
# The build directories are configured once; after that ninja regenerates
# them by itself when a meson.build changes. `make clean` starts afresh.

MESON ?= meson
NINJA ?= ninja
PREFIX ?= /usr/local
BUILDTYPE ?=
DESTDIR ?=
TEST_PROCS ?= 2
MESON_TEST_ARGS ?=
NO_DEPS ?=
QUICK ?=
BENCH_ARGS ?=

# Set under `make -n`: the summary then counts nothing.
DRY_RUN := $(findstring n,$(firstword -$(MAKEFLAGS)))

TOP := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
DEPS_SCRIPT := $(TOP)/scripts/install-deps.sh

.SUFFIXES:
.DEFAULT_GOAL := all

# ---------------------------------------------------------------------------
# Build configurations. Each NAME has:
#   DIR_NAME    its build directory (under the source tree)
#   CONF_NAME   options for its first `meson setup`
#   TESTS_NAME  options that its `make check` part adds (turns the cmocka
#               tests on, for a directory that `make` may have configured
#               while cmocka was missing, and libspindle-glib with its test,
#               so that a missing GLib fails rather than skips)
#   SUITES_NAME what `meson test` runs in it for `make check` (empty: all)
#   ENV_NAME    environment (and wrapper) for its tests
#   DESC_NAME   one line for the summary
# To add one (a release build for `make bench`, say), define these and add
# NAME to CONFIGS; add it to CHECK_PARTS only if `make check` should test it.

CONFIGS := default asan tsan pipe fault bench
CHECK_PARTS := default asan tsan pipe fault valgrind

DIR_default := build
CONF_default = --prefix=$(PREFIX) $(if $(BUILDTYPE),-Dbuildtype=$(BUILDTYPE))
TESTS_default := -Dtests=enabled -Dglib=enabled
SUITES_default :=
ENV_default :=
DESC_default := default build: every suite (unit per back-end, concurrency, example, syscalls, spin)

# Sanitizer runs: UBSan findings are fatal, leaks are errors, and the tests'
# watchdog (tests/harness.c) allows for the slow-down.
SAN_WATCHDOG := SPINDLE_TEST_WATCHDOG_S=240
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1:print_summary=1 \
            UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1 \
            $(SAN_WATCHDOG)
# TSan's shadow layout can clash with a kernel's wide mmap randomisation
# ("unexpected memory mapping"): run its tests with ASLR off where we may.
NO_ASLR = $(shell setarch "$$(uname -m)" -R true >/dev/null 2>&1 && echo "setarch $$(uname -m) -R")
TSAN_ENV = TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(SAN_WATCHDOG) $(NO_ASLR)

DIR_asan := build-asan
CONF_asan := -Db_sanitize=address,undefined -Db_lundef=false
TESTS_asan := -Dtests=enabled -Dglib=enabled
SUITES_asan := --suite unit --suite concurrency --suite example
ENV_asan = $(ASAN_ENV)
DESC_asan := ASan+UBSan: suites unit, concurrency, example

DIR_tsan := build-tsan
CONF_tsan := -Db_sanitize=thread
TESTS_tsan := -Dtests=enabled
SUITES_tsan := --suite concurrency
ENV_tsan = $(TSAN_ENV)
DESC_tsan := ThreadSanitizer: suite concurrency

DIR_pipe := build-pipe
CONF_pipe := -Deventfd=false
TESTS_pipe := -Dtests=enabled -Dglib=enabled
SUITES_pipe := --suite unit
ENV_pipe :=
DESC_pipe := -Deventfd=false (pipe notifiers): suite unit

# `make bench` only (not part of `make check`): optimised, no tests, and the
# bench/ directory, which needs the peer libraries.
DIR_bench := build-bench
CONF_bench := -Dbuildtype=release -Db_ndebug=true -Dtests=disabled -Dbench=true
SUITES_bench :=
ENV_bench :=
DESC_bench := release build with bench/ (make bench)

# Fault injection (tests/test-faults.c): every allocation, fd creation and
# epoll_ctl fails in turn; LeakSanitizer checks that nothing leaks.
DIR_fault := build-fault
CONF_fault := -Dfault_injection=true -Db_sanitize=address,undefined -Db_lundef=false
TESTS_fault := -Dtests=enabled
SUITES_fault := --suite fault
ENV_fault = $(ASAN_ENV)
DESC_fault := fault injection under ASan+UBSan/LSan: suite fault

# valgrind memcheck over the default build's test programs: the unit tests
# on every back-end (and driven through the embedding API on AUTO), the
# timer wheel and clock tests once, the embedding, pool, loop-thread, threads
# and timer-threads tests on AUTO, and the README example. AUTO means epoll
# here (SPINDLE_TEST_NO_RING, tests/harness.c): valgrind (3.19) runs
# io_uring_enter holding its lock on all threads, so a loop asleep in a ring
# would stop the thread that should wake it; ASan and TSan run io_uring.
# Left out: test-polling, whose assertions about the adaptive window are
# about wait times of a few us, which valgrind's slow-down turns into long
# waits (they fail for that reason only); and io_uring with threads:
# valgrind (3.19) runs io_uring_enter holding its lock on all threads, so a
# loop asleep in the ring stops the thread that would wake it (ASan and TSan
# run those). About 30 s on 2 cores.
VALGRIND := valgrind --error-exitcode=1 --leak-check=full \
            --errors-for-leak-kinds=definite,indirect --track-fds=no -q
VALGRIND_TESTS := $(foreach b,auto poll epoll,$(foreach t,bh timer notifier ctx fd interest errors,$(t)-$(b))) \
                  $(foreach t,bh timer notifier fd pool,$(t)-embed-auto) \
                  timer-wheel timer-clock embed-auto pool-auto loop-thread-auto threads-auto \
                  timer-threads-auto readme-example
DIR_valgrind := build
CONF_valgrind = $(CONF_default)
TESTS_valgrind := -Dtests=enabled
SUITES_valgrind = --wrap='$(VALGRIND)' $(VALGRIND_TESTS)
ENV_valgrind := SPINDLE_TEST_WATCHDOG_S=600 SPINDLE_TEST_NO_RING=1
DESC_valgrind := valgrind memcheck (build/): unit but polling, per back-end (AUTO as epoll); threads-auto, timer-threads-auto; example
# It has no build directory of its own, so it is not in CONFIGS: its
# check-valgrind rule is below the others.

# The API fuzzer (tests/fuzz/fuzz-api.c): clang-14 with libFuzzer and
# ASan+UBSan, in build-fuzz/. `make check` runs it for FUZZ_CHECK_SECONDS
# from the committed seed corpus (new inputs go to
# build-fuzz/tests/fuzz/fuzz-corpus, a crash to .../fuzz-artifacts/);
# `make fuzz` for FUZZ_SECONDS.
FUZZ_SECONDS ?= 600
FUZZ_CHECK_SECONDS ?= 60
DIR_fuzz := build-fuzz
CONF_fuzz = --native-file $(TOP)/tests/fuzz/clang-14.ini -Dfuzz=true \
            -Dtests=disabled -Db_sanitize=address,undefined -Db_lundef=false
SUITES_fuzz := --suite fuzz
ENV_fuzz = $(ASAN_ENV) SPINDLE_FUZZ_SECONDS=$(FUZZ_CHECK_SECONDS)
DESC_fuzz := libFuzzer API sequences vs a model of the API (clang-14, ASan+UBSan), $(FUZZ_CHECK_SECONDS) s
CONFIGS += fuzz
CHECK_PARTS += fuzz

BUILD := $(TOP)/$(DIR_default)

# $(call build_cmds,NAME[,OPTIONS]): configure NAME's directory if it has
# never been configured (no build.ninja) with CONF_NAME and OPTIONS, or
# else apply those of OPTIONS (-Dname=value) that it does not have yet
# (as Meson's introspection file says), then build it. (setup --reconfigure
# rather than configure: it reads meson_options.txt afresh, so it also
# works on a directory configured when an option had another type.)
define build_cmds
	@dir="$(TOP)/$(DIR_$(1))"; \
	if [ ! -f "$$$$dir/build.ninja" ]; then \
	    echo "$(MESON) setup $(CONF_$(1)) $(2) $(DIR_$(1))"; \
	    $(MESON) setup $(CONF_$(1)) $(2) "$$$$dir" "$(TOP)"; \
	else \
	    missing=""; \
	    for o in $(2); do \
	        k=$$$${o#-D}; k=$$$${k%%=*}; v=$$$${o#*=}; \
	        grep -qF "\"name\": \"$$$$k\", \"value\": \"$$$$v\"" \
	            "$$$$dir/meson-info/intro-buildoptions.json" || \
	            missing="$$$$missing $$$$o"; \
	    done; \
	    if [ -n "$$$$missing" ]; then \
	        echo "$(MESON) setup --reconfigure $(DIR_$(1))$$$$missing"; \
	        $(MESON) setup --reconfigure "$$$$dir" "$(TOP)" $$$$missing; \
	    fi; \
	fi
	$(NINJA) -C "$(TOP)/$(DIR_$(1))"
endef

# ---------------------------------------------------------------------------

.PHONY: all deps deps-if-root check install clean bench deps-bench \
        $(addprefix compile-,$(CONFIGS)) $(addprefix check-,$(CONFIGS))

# (The package step is a prerequisite and the build the recipe, so that
# `make -j` never configures while apt-get is still installing.)
define all_rule
all: deps-if-root
$(call build_cmds,default,$(if $(BUILDTYPE),-Dbuildtype=$(BUILDTYPE)))
endef
$(eval $(all_rule))

deps:
ifeq ($(NO_DEPS),)
	@bash "$(DEPS_SCRIPT)" check
endif

# `make` installs what building needs, and only when it can; `make check`
# installs what testing needs too, and insists.
deps-if-root:
ifeq ($(NO_DEPS),)
	@if [ "$$(id -u)" -eq 0 ]; then bash "$(DEPS_SCRIPT)" build; fi
endif

# compile-NAME: configure (first time) and build one configuration.
define compile_rule
compile-$(1):
$(call build_cmds,$(1))
endef
$(foreach c,$(CONFIGS),$(eval $(call compile_rule,$(c))))

# check-NAME: build one configuration and run its suites. The previous
# test log is removed first, so the summary never counts a stale run.
define check_rule
check-$(1):
	@rm -f "$(TOP)/$(DIR_$(1))/meson-logs/testlog.json"
$(call build_cmds,$(1),$(TESTS_$(1)))
	$(ENV_$(1)) $(MESON) test -C "$(TOP)/$(DIR_$(1))" --print-errorlogs \
	    --num-processes $(TEST_PROCS) $(SUITES_$(1)) $(MESON_TEST_ARGS)
endef
$(foreach c,$(CONFIGS),$(eval $(call check_rule,$(c))))

# check-valgrind: the default build under valgrind. meson names the log of a
# wrapped run testlog-valgrind.json; it is copied to testlog.json, the log
# that the summary of `make check` counts.
define valgrind_rule
.PHONY: check-valgrind
check-valgrind:
	@rm -f "$(TOP)/$(DIR_valgrind)/meson-logs/testlog.json" \
	    "$(TOP)/$(DIR_valgrind)/meson-logs/testlog-valgrind.json"
$(call build_cmds,valgrind,$(TESTS_valgrind))
	rc=0; $(ENV_valgrind) $(MESON) test -C "$(TOP)/$(DIR_valgrind)" \
	    --print-errorlogs --num-processes $(TEST_PROCS) $(SUITES_valgrind) \
	    $(MESON_TEST_ARGS) || rc=$$$$?; \
	cp "$(TOP)/$(DIR_valgrind)/meson-logs/testlog-valgrind.json" \
	    "$(TOP)/$(DIR_valgrind)/meson-logs/testlog.json" 2>/dev/null; \
	exit $$$$rc
endef
$(eval $(valgrind_rule))

# One part of `make check`: run it, never stop the others, record a row.
define check_part
	echo; echo "==== make check-$(1): $(DESC_$(1))"; \
	if $(MAKE) --no-print-directory check-$(1); then st=ok; else st=FAILED; rc=1; fi; \
	record "$(1)" "$(DIR_$(1))" "$$st" "$(DESC_$(1))";
endef

# record NAME DIR STATUS DESC: count the results in DIR's meson test log;
# a part that ran no test at all has failed too (a suite went missing).
check: deps
	@+rc=0; rows=""; tp=0; tf=0; ts=0; \
	record() { \
	    log="$(TOP)/$$2/meson-logs/testlog.json"; p=0; f=0; s=0; \
	    if [ -f "$$log" ]; then \
	        all=$$(grep -c '"result": ' "$$log" || true); \
	        p=$$(grep -cE '"result": "(OK|EXPECTEDFAIL)"' "$$log" || true); \
	        s=$$(grep -c '"result": "SKIP"' "$$log" || true); \
	        f=$$((all - p - s)); \
	    fi; \
	    st=$$3; note=""; \
	    if [ -z "$(DRY_RUN)" ] && [ "$$st" = ok ] && [ $$((p + f + s)) -eq 0 ]; then \
	        st=FAILED; rc=1; f=1; note=" (ran no test)"; \
	    elif [ "$$st" != ok ] && [ "$$f" -eq 0 ]; then \
	        f=1; note=" (setup, build or test run failed; see above)"; \
	    fi; \
	    tp=$$((tp + p)); tf=$$((tf + f)); ts=$$((ts + s)); \
	    rows="$$rows$$(printf '  %-7s %-6s %3d passed, %2d failed, %2d skipped  %s%s' \
	        "$$1" "$$st" "$$p" "$$f" "$$s" "$$4" "$$note")\n"; \
	}; \
	$(foreach p,$(CHECK_PARTS),$(call check_part,$(p))) \
	echo; \
	echo "==================== make check: summary ===================="; \
	printf '%b' "$$rows"; \
	echo "============================================================="; \
	if [ $$rc -eq 0 ]; then echo "make check: all parts passed"; \
	else echo "make check: FAILED (see the parts marked FAILED above)"; fi; \
	echo "$$tp passed, $$tf failed, $$ts skipped"; \
	exit $$rc

install: all
	@want="$(abspath $(PREFIX))"; \
	if ! grep -qF "\"name\": \"prefix\", \"value\": \"$$want\"" \
	        "$(BUILD)/meson-info/intro-buildoptions.json" 2>/dev/null; then \
	    echo "$(MESON) configure $(DIR_default) --prefix=$$want"; \
	    $(MESON) configure "$(BUILD)" --prefix="$$want"; \
	fi
	$(MESON) install -C "$(BUILD)" $(if $(DESTDIR),--destdir "$(abspath $(DESTDIR))")

clean:
	rm -rf $(foreach c,$(CONFIGS),"$(TOP)/$(DIR_$(c))")

# The benchmark: package step first (the peers), then build, then run from
# the source tree so that results land in bench/results/.
deps-bench:
ifeq ($(NO_DEPS),)
	@if [ "$$(id -u)" -eq 0 ]; then bash "$(DEPS_SCRIPT)" bench; \
	else bash "$(DEPS_SCRIPT)" bench || exit 1; fi
endif

define bench_rule
bench: deps-bench
$(call build_cmds,bench)
	@mkdir -p "$(TOP)/bench/results"
	cd "$(TOP)" && "$(TOP)/$(DIR_bench)/bench/spindle-bench" $(if $(QUICK),--quick) \
	    --out "$(TOP)/bench/results" $(BENCH_ARGS)
endef
$(eval $(bench_rule))

# ---------------------------------------------------------------------------
# Long runs, outside `make check`.

.PHONY: fuzz stress stress-tsan
fuzz: compile-fuzz
	$(ASAN_ENV) "$(TOP)/tests/fuzz/run-fuzz.sh" \
	    "$(TOP)/$(DIR_fuzz)/tests/fuzz/fuzz-api" "$(TOP)/tests/fuzz/corpus" \
	    "$(TOP)/$(DIR_fuzz)/tests/fuzz" $(FUZZ_SECONDS)

STRESS_SCALE ?= 20
STRESS_TSAN_SCALE ?= 20
STRESS_TESTS := stress-auto stress-poll stress-epoll stress-io_uring
stress: compile-default
	SPINDLE_STRESS_SCALE=$(STRESS_SCALE) SPINDLE_TEST_WATCHDOG_S=1800 \
	    $(MESON) test -C "$(TOP)/$(DIR_default)" --print-errorlogs -v \
	    --num-processes 1 --timeout-multiplier 4 $(STRESS_TESTS)
stress-tsan: compile-tsan
	SPINDLE_STRESS_SCALE=$(STRESS_TSAN_SCALE) $(TSAN_ENV) \
	    env SPINDLE_TEST_WATCHDOG_S=1800 \
	    $(MESON) test -C "$(TOP)/$(DIR_tsan)" --print-errorlogs -v \
	    --num-processes 1 --timeout-multiplier 4 $(STRESS_TESTS)
