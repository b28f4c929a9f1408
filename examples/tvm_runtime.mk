# Shared by the C++ examples: which TVM runtime to compile and link against for ARCH, and
# copies of it beside the binary. A Makefile sets NAME, includes this file, then builds
# $(OUT)/<binary> from $(RUNTIME_LIBS) with $(CXX) $(CXXFLAGS) -I$(TVM_INCLUDE) ... $(LDFLAGS) $(LDLIBS).
#   make                    native x86-64 build, TVM runtime from the project's .venv
#   make ARCH=aarch64       cross-compiled with aarch64-linux-gnu-g++, TVM runtime from
#                           build/aarch64/ (scripts/setup_arm.sh fetches it from the aarch64 wheels)
# The binary lands in $(OUT)/ beside copies of libtvm_runtime.so and libtvm_ffi.so (rpath
# $ORIGIN), so that folder is self-contained: copy it to a board and run it there.
.DEFAULT_GOAL := all
ARCH ?= x86_64
REPO ?= $(abspath ../..)
OUT ?= $(REPO)/build/$(NAME)/$(ARCH)
PYTHON ?= $(if $(wildcard $(REPO)/.venv/bin/python),$(REPO)/.venv/bin/python,python3)

ifeq ($(ARCH),aarch64)
CXX := aarch64-linux-gnu-g++
CXX_PKG := g++-aarch64-linux-gnu (scripts/setup_arm.sh)
AARCH64_ROOT ?= $(REPO)/build/aarch64
TVM_INCLUDE ?= $(AARCH64_ROOT)/include
TVM_RUNTIME_LIB ?= $(AARCH64_ROOT)/lib/libtvm_runtime.so
TVM_EXTRA_LIB ?= $(AARCH64_ROOT)/lib/libtvm_runtime_extra.so
TVM_FFI_LIB ?= $(AARCH64_ROOT)/lib/libtvm_ffi.so
else ifeq ($(ARCH),x86_64)
CXX_PKG := g++
SITE := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TVM_INCLUDE ?= $(SITE)/tvm_ffi/include
TVM_RUNTIME_LIB ?= $(SITE)/tvm/lib/libtvm_runtime.so
TVM_EXTRA_LIB ?= $(SITE)/tvm/lib/libtvm_runtime_extra.so
TVM_FFI_LIB ?= $(SITE)/tvm_ffi/lib/libtvm_ffi.so
else
$(error ARCH must be x86_64 or aarch64, got $(ARCH))
endif

CXXFLAGS ?= -O2 -std=c++17 -Wall
LDFLAGS += -Wl,-rpath,'$$ORIGIN' -Wl,--no-as-needed
LDLIBS += -ltvm_runtime -ltvm_ffi -ldl -lpthread
RUNTIME_LIBS := $(OUT)/libtvm_runtime.so $(OUT)/libtvm_ffi.so

.PHONY: all clean check-deps
check-deps:
	@command -v $(CXX) >/dev/null || { echo "error: $(CXX) not found; install the Debian package $(CXX_PKG)" >&2; exit 2; }
	@test -f $(TVM_INCLUDE)/tvm/ffi/extra/module.h || { echo "error: TVM FFI headers not found in $(TVM_INCLUDE) (ARCH=aarch64: run scripts/setup_arm.sh; x86_64: make setup at the repo root)" >&2; exit 2; }
	@test -f $(TVM_RUNTIME_LIB) || { echo "error: $(TVM_RUNTIME_LIB) not found (ARCH=aarch64: run scripts/setup_arm.sh)" >&2; exit 2; }

$(OUT)/libtvm_runtime.so: $(TVM_RUNTIME_LIB) | check-deps
	@mkdir -p $(OUT)
	cp $< $@
$(OUT)/libtvm_ffi.so: $(TVM_FFI_LIB) | check-deps
	@mkdir -p $(OUT)
	cp $< $@
$(OUT)/libtvm_runtime_extra.so: $(TVM_EXTRA_LIB) | check-deps
	@test -f $< || { echo "error: $< not found (ARCH=aarch64: run scripts/setup_arm.sh)" >&2; exit 2; }
	@mkdir -p $(OUT)
	cp $< $@

clean:
	rm -rf $(OUT)
