# layerfs — build, test and try it out. Everything runs as root on Linux
# with /dev/fuse (tests also mount the kernel's overlayfs as the oracle).

CARGO   ?= cargo
PREFIX  ?= /usr/local
DEMO    ?= layers-fixtures/demo
BIN      = target/release/layerfs

.PHONY: all build test stress demo bench install uninstall lint fmt clean

all: build

build:
	$(CARGO) build --release

# Unit tests, then the mount tests against the kernel's overlayfs.
test:
	$(CARGO) test --all-targets -- --test-threads=4

# The stress test for STRESS_SECS (default 300) and the crash test for
# CRASH_RUNS kills (default 500), with fresh seeds (docs/reliability.md);
# `make test` runs short versions.
STRESS_SECS ?= 300
CRASH_RUNS  ?= 500
stress:
	LAYERFS_STRESS_SECS=$(STRESS_SECS) LAYERFS_STRESS_SEED=$$(date +%s) \
		$(CARGO) test --release --test stress -- --nocapture
	LAYERFS_CRASH_RUNS=$(CRASH_RUNS) LAYERFS_CRASH_SEED=$$(date +%s) \
		$(CARGO) test --release --test crash -- --nocapture

# Mount the bundled demo layers read-only, show them, unmount; then pack
# them as an OCI image, import it, explain it, run a command in it, commit
# the change and run that (layers-fixtures/demo-image.sh).
demo: build
	@set -e; \
	mnt=$$(mktemp -d /tmp/layerfs-demo.XXXXXX); \
	lower=$$(ls -d $(DEMO)/*/ | sort -r | sed 's:/$$::' | paste -sd: -); \
	trap '$(BIN) umount "$$mnt" 2>/dev/null || true; rmdir "$$mnt"' EXIT; \
	echo "+ layerfs mount -o lowerdir=$$lower $$mnt"; \
	$(BIN) mount -o lowerdir=$$lower "$$mnt"; \
	echo "+ ls -la $$mnt"; ls -la "$$mnt"; \
	echo "+ find $$mnt | sort"; (cd "$$mnt" && find . | sort); \
	echo "+ cat etc/os-release"; cat "$$mnt/etc/os-release"; \
	echo "+ df -h $$mnt"; df -h "$$mnt"; \
	echo "+ layerfs umount $$mnt"
	layers-fixtures/demo-image.sh $(BIN) $(DEMO)

# Benchmark against the kernel's overlayfs and fuse-overlayfs in one run
# (docs/performance.md), then `layerfs import` against umoci and tar; root,
# a few minutes. Not part of `make test`.
bench: build
	python3 bench/run.py --bin $(BIN)
	python3 bench/import.py --bin $(BIN)

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/layerfs
	# mount(8) runs /sbin/mount.fuse.layerfs for `-t fuse.layerfs` and fstab.
	install -d $(DESTDIR)/sbin
	ln -sf $(PREFIX)/bin/layerfs $(DESTDIR)/sbin/mount.fuse.layerfs

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/layerfs $(DESTDIR)/sbin/mount.fuse.layerfs

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
