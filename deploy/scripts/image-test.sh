#!/usr/bin/env bash
# Build the container image from the repository's Dockerfile and run it, on a machine with no
# container engine and no registry (as root):
#
#   1. debootstrap a minimal Debian with python3, python3-venv and ca-certificates from the
#      mirror that apt uses here, and import it into buildah as the base image (cached);
#   2. buildah build the unchanged Dockerfile with --build-arg BASE_IMAGE=<that base>;
#   3. run the image's ENTRYPOINT with `demo --listen 0.0.0.0:9464` the way a runtime would: its
#      own network namespace, as the image's USER, in its WORKDIR, with its ENV, on a read-only
#      root filesystem with a tmpfs /tmp and a host directory as the state volume;
#   4. check /healthz, /readyz, /metrics, /api/jobs and the status page, the image's own HEALTHCHECK, the UID and
#      capabilities of the process, that the root filesystem refuses writes, that the store was
#      written to the volume, and a clean exit on the image's STOPSIGNAL.
#
# Environment:
#   IMAGE_TEST_CACHE   cache directory (default /var/tmp/backup-watcher-image-cache): the base
#                      rootfs tarball and buildah's storage, so reruns skip debootstrap
#                      (build layers are not reused, see the build step); delete it to start afresh
#   IMAGE_TEST_MIRROR  Debian mirror (default: the first one apt's sources name for the suite)
#   IMAGE_TEST_SUITE   Debian suite of the base (default bookworm)
#   IMAGE_TEST_STORAGE_DRIVER  buildah storage driver (default overlay where the kernel and the
#                      cache's filesystem allow it, else vfs)
# Needs: debootstrap, buildah (installed with apt-get when missing), util-linux, python3.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${IMAGE_TEST_CACHE:-/var/tmp/backup-watcher-image-cache}
suite=${IMAGE_TEST_SUITE:-bookworm}
packages=python3,python3-venv,ca-certificates
image=localhost/backup-watcher:test
listen_port=9464

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "run as root (debootstrap, chroot and mount namespaces need it)"

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v buildah >/dev/null || missing+=(buildah)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for tool in python3 unshare nsenter chroot ip; do
    command -v "$tool" >/dev/null || fail "$tool is needed"
done

mkdir -p "$cache"
# A storage of our own. overlay is fast; vfs (a full copy per layer, several times slower) works
# on any filesystem, including an overlay root, where overlay cannot stack.
if [[ -z ${IMAGE_TEST_STORAGE_DRIVER:-} ]]; then
    IMAGE_TEST_STORAGE_DRIVER=vfs
    if grep -qw overlay /proc/filesystems && [[ $(stat -f -c %T "$cache") != overlayfs ]]; then
        IMAGE_TEST_STORAGE_DRIVER=overlay
    fi
fi
driver=$IMAGE_TEST_STORAGE_DRIVER
bah() {
    buildah --root "$cache/storage-$driver" --runroot "$cache/run-$driver" --storage-driver "$driver" "$@"
}

# The mirror that apt uses for the suite, from sources.list and deb822 .sources files.
apt_mirror() {
    python3 - "$suite" <<'EOF'
import glob, sys

suite = sys.argv[1]
entries = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        words = line.split("#", 1)[0].split()
        if words[:1] == ["deb"]:
            words = [w for w in words[1:] if not w.startswith("[")]
            if len(words) >= 2:
                entries.append((words[0], [words[1]]))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path, encoding="utf-8").read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
            for uri in fields.get("uris", []):
                entries.append((uri, fields.get("suites", [])))
for uri, suites in entries:
    if suite in suites and uri.startswith(("http://", "https://")):
        print(uri)
        break
else:
    sys.exit(f"apt has no http(s) source for {suite}")
EOF
}

# --- 1. the base image --------------------------------------------------------------------------
mirror=${IMAGE_TEST_MIRROR:-$(apt_mirror)}
key=$(printf '%s\n' "$suite" "$packages" "$mirror" | sha256sum | cut -c1-12)
base=localhost/backup-watcher-base:$suite-$key
tarball=$cache/base-$suite-$key.tar

if bah inspect --type image "$base" >/dev/null 2>&1; then
    log "base image $base is cached"
else
    if [[ ! -s $tarball ]]; then
        # Use apt's proxy, if it has one, for debootstrap's downloads too.
        proxy=$(apt-config dump Acquire::http::Proxy | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p')
        if [[ -n $proxy && -z ${http_proxy:-} ]]; then
            export http_proxy=$proxy
        fi
        rootfs=$cache/rootfs.tmp
        rm -rf "$rootfs"
        log "debootstrap $suite from $mirror with $packages"
        started=$(date +%s)
        debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
            >"$cache/debootstrap.log" 2>&1 || fail "debootstrap failed, see $cache/debootstrap.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/var/log/* "$rootfs"/tmp/*
        tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
            -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
        log "debootstrap took $(($(date +%s) - started)) s"
    fi
    log "importing $tarball as $base"
    ctr=$(bah from --pull-never scratch)
    bah add "$ctr" "$tarball" / >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd '["python3"]' "$ctr"
    bah commit --quiet --rm "$ctr" "$base" >/dev/null
fi

# --- 2. the build -------------------------------------------------------------------------------
build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "REVISION=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)")

# This machine's pip index settings, when it has any that the build can reach (file:// indexes
# are directories on the host, so they are left out).
pip_setting() {
    local env_name=$1 key=$2 value
    value=${!env_name:-}
    if [[ -z $value ]] && python3 -m pip --version >/dev/null 2>&1; then
        value=$(python3 -m pip config list 2>/dev/null \
            | sed -n "s/^[a-z:]*\.$key='\(.*\)'$/\1/p" | head -n1)
    fi
    local kept=() word
    for word in $value; do
        [[ $word == file:* || $word == /* ]] || kept+=("$word")
    done
    echo "${kept[*]}"
}
for setting in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url PIP_TRUSTED_HOST:trusted-host; do
    value=$(pip_setting "${setting%%:*}" "${setting#*:}")
    if [[ -n $value ]]; then
        build_args+=(--build-arg "${setting%%:*}=$value")
    fi
done

# This machine's CA bundle (it may hold a proxy's CA) replaces the base image's during the build,
# and pip is told to use it: TLS stays verified.
ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
volumes=()
if [[ -s $ca_bundle ]]; then
    volumes+=(--volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")
    build_args+=(--build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi

log "building $image on $base (storage driver $driver)"
started=$(date +%s)
# No --layers: with every step of the builder stage cached, Debian's buildah (1.28) bind-mounts an
# earlier layer of that stage for `RUN --mount=...,from=builder` (the project's wheel is then missing),
# so a rerun on unchanged code failed. Each build runs every step; the base rootfs stays cached.
bah build --quiet --isolation chroot --format docker "${build_args[@]}" "${volumes[@]}" \
    --file "$repo/Dockerfile" --tag "$image" "$repo" >"$cache/build.log" 2>&1 \
    || { tail -n 40 "$cache/build.log" >&2; fail "build failed, see $cache/build.log"; }
build_seconds=$(($(date +%s) - started))
image_size=$(bah images --format '{{.Size}}' "$image" | head -n1)
base_size=$(bah images --format '{{.Size}}' "$base" | head -n1)
log "built in $build_seconds s: $image is $image_size (base $base_size)"

# --- 3. the run ---------------------------------------------------------------------------------
work=$(mktemp -d)
ctr=
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if [[ -n $ctr ]]; then
        bah umount "$ctr" >/dev/null 2>&1 || true
        bah rm "$ctr" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

ctr=$(bah from --pull-never --quiet "$image")
root=$(bah mount "$ctr")

# The image's config as shell arrays: ENV, USER, WORKDIR, VOLUME, ENTRYPOINT, HEALTHCHECK, STOPSIGNAL.
bah inspect --type image "$image" | python3 -c '
import json, shlex, sys

config = json.load(sys.stdin)["Docker"]["config"]
def array(name, values):
    print(name + "=(" + " ".join(shlex.quote(v) for v in values) + ")")
test = (config.get("Healthcheck") or {}).get("Test") or []
if test[:1] == ["CMD-SHELL"]:
    test = ["/bin/sh", "-c", test[1]]
elif test[:1] == ["CMD"]:
    test = test[1:]
array("image_env", config.get("Env") or [])
array("image_entrypoint", config.get("Entrypoint") or [])
array("image_healthcheck", test)
array("image_volumes", sorted(config.get("Volumes") or {}))
array("image_ports", sorted(config.get("ExposedPorts") or {}))
print("image_user=" + shlex.quote(config.get("User") or "0"))
print("image_workdir=" + shlex.quote(config.get("WorkingDir") or "/"))
print("image_stopsignal=" + shlex.quote(config.get("StopSignal") or "SIGTERM"))
' >"$work/config.sh"
image_env=() image_entrypoint=() image_healthcheck=() image_volumes=() image_ports=()
image_user='' image_workdir='' image_stopsignal=''
# shellcheck source=/dev/null
. "$work/config.sh"

[[ $image_user =~ ^[0-9]+(:[0-9]+)?$ && ${image_user%%:*} -ne 0 ]] \
    || fail "USER is '$image_user', not a numeric non-root UID"
uid=${image_user%%:*}
gid=${image_user#*:}
[[ $image_user == *:* ]] || gid=$uid
((${#image_volumes[@]} == 1)) || fail "expected one VOLUME, got: ${image_volumes[*]}"
volume=${image_volumes[0]}
[[ " ${image_ports[*]} " == *" $listen_port/tcp "* ]] || fail "port $listen_port is not exposed"
((${#image_healthcheck[@]})) || fail "the image has no HEALTHCHECK"

state=$work/state
mkdir -p "$state"
chown "$uid:$gid" "$state"
cat >"$work/enter.sh" <<'EOF'
set -euo pipefail
root=$1 state=$2 volume=$3 user=$4 workdir=$5
shift 5
ip link set lo up
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,size=1m tmpfs "$root/dev"
for node in null zero full random urandom; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mount -t tmpfs -o mode=1777,size=64m tmpfs "$root/tmp"
mount --bind "$state" "$root$volume"
mount -o remount,bind,ro "$root"
exec chroot --userspec="$user" --groups="${user#*:}" "$root" \
    /usr/bin/env -i -C "$workdir" "$@"
EOF

# As `docker run -e WATCHER_STORE_PATH=... IMAGE demo --listen ...`: the demo keeps its store
# in a fresh temporary directory unless told otherwise.
run_env=("${image_env[@]}" "WATCHER_STORE_PATH=$volume/state.sqlite3")
log "running ${image_entrypoint[*]} demo --listen 0.0.0.0:$listen_port as $uid:$gid, read-only root"
unshare --mount --net --propagation private -- bash "$work/enter.sh" \
    "$root" "$state" "$volume" "$uid:$gid" "$image_workdir" \
    "${run_env[@]}" "${image_entrypoint[@]}" demo --listen "0.0.0.0:$listen_port" \
    >"$work/watcher.log" 2>&1 &
pid=$!
# Until unshare has run, the PID is still in this shell's namespaces.
for _ in {1..100}; do
    [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) != "$(readlink /proc/$$/ns/net)" ]] && break
    sleep 0.1
done

# --- 4. the checks ------------------------------------------------------------------------------
show_log() { echo "--- watcher output (last 40 lines)" >&2; tail -n 40 "$work/watcher.log" >&2; }
in_container() { nsenter --target "$pid" --net "$@"; }
probe() {
    # probe PATH EXPECTED_SUBSTRING TIMEOUT_SECONDS: GET until 200 (and the body has the text).
    in_container python3 - "$pid" "$listen_port" "$@" <<'EOF'
import os, sys, time, urllib.error, urllib.request

pid, port, path, expected = sys.argv[1:5]
timeout = float(sys.argv[5])
deadline = time.monotonic() + timeout
last = "no answer"
while time.monotonic() < deadline:
    if not os.path.exists(f"/proc/{pid}"):
        sys.exit(f"GET {path}: the watcher has exited")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            body = answer.read().decode()
            if expected in body:
                print(f"GET {path}: {answer.status}, {len(body)} bytes")
                sys.exit(0)
            last = f"{answer.status} without {expected!r}"
    except (OSError, urllib.error.URLError) as error:
        last = str(error)
    time.sleep(1)
sys.exit(f"GET {path}: {last} after {timeout:.0f} s")
EOF
}

probe /healthz "" 60 || { show_log; fail "/healthz did not answer 200"; }
probe /metrics azure_backup_watcher_build_info 30 || { show_log; fail "/metrics"; }
probe /readyz "" 120 || { show_log; fail "/readyz did not become ready"; }
probe /api/jobs "" 10 || { show_log; fail "/api/jobs"; }
# The status page's templates and stylesheet are in the installed package.
probe / "Running jobs" 10 || { show_log; fail "the status page"; }
probe /static/watcher.css "prefers-color-scheme" 10 || { show_log; fail "the status page's stylesheet"; }

status=$(cat "/proc/$pid/status")
grep -qE "^Uid:\s+$uid\s+$uid\s+$uid\s+$uid$" <<<"$status" \
    || fail "process runs as $(grep ^Uid: <<<"$status"), not $uid"
grep -qE "^Gid:\s+$gid\s+$gid\s+$gid\s+$gid$" <<<"$status" \
    || fail "process runs with $(grep ^Gid: <<<"$status"), not $gid"
grep -qE '^CapEff:\s+0+$' <<<"$status" || fail "process has capabilities: $(grep ^CapEff: <<<"$status")"
echo "process $pid: uid $uid, gid $gid, no effective capabilities"

# The image's own HEALTHCHECK command, run inside the container as its user, in its directory.
nsenter --target "$pid" --mount --net --root --wd -S "$uid" -G "$gid" \
    /usr/bin/env -i "${image_env[@]}" "${image_healthcheck[@]}" \
    || fail "the image's HEALTHCHECK failed"
echo "HEALTHCHECK passed"

if nsenter --target "$pid" --mount --root /usr/bin/touch /opt/.write-probe 2>"$work/probe.err"; then
    fail "the root filesystem accepted a write"
fi
grep -q 'Read-only file system' "$work/probe.err" || fail "write probe: $(cat "$work/probe.err")"
echo "root filesystem is read-only"

store=$(find "$state" -maxdepth 1 -name state.sqlite3 -type f -user "$uid")
[[ -n $store ]] || { show_log; fail "no store $volume/state.sqlite3 owned by $uid"; }
echo "store written to the volume: $volume/state.sqlite3, $(stat -c %s "$store") bytes"

started=$(date +%s)
kill -s "${image_stopsignal#SIG}" "$pid"
code=0
wait "$pid" || code=$?
pid=
((code == 0)) || { show_log; fail "exit status $code after $image_stopsignal"; }
echo "clean exit after $image_stopsignal in $(($(date +%s) - started)) s"

printf '\nimage %s: %s (base %s), built in %d s; all run checks passed\n' \
    "$image" "$image_size" "$base_size" "$build_seconds"
