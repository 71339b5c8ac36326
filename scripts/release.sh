#!/usr/bin/env bash
# Builds the release binaries (appstrate, appstrate-runner, appstrate-sidecar, appstrate-operator) and
# packs one tarball per target, each signed with minisign, plus the installer to publish next to them:
#
#   MINISIGN_SECRET_KEY=~/.minisign/appstrate.key bash scripts/release.sh
#
# Output in RELEASE_DIR (default dist/):
#   appstrate-<target>.tar.gz           appstrate-<version>-<target>/{appstrate,appstrate-runner,…}
#   appstrate-<target>.tar.gz.minisig   its signature (trusted comment: "appstrate <version> <target>")
#   SHA256SUMS                          checksums of the tarballs
#   install.sh                          scripts/install.sh with the public key (and base URL) filled in
#
# Environment:
#   MINISIGN_SECRET_KEY   path of the minisign secret key (required). Create one with
#                         `minisign -G -p appstrate.pub -s appstrate.key`.
#   MINISIGN_PASSWORD     its password, given to minisign on standard input (empty: a key made with -W)
#   MINISIGN_PUBLIC_KEY   the public key (the base64 line); default: recreated from the secret key
#   RELEASE_TARGETS       space-separated Rust target triples (default: the host's)
#   RELEASE_BASE_URL      where the files will be published; written into install.sh as its default
#   RELEASE_DIR           output directory (default: dist)
#   RELEASE_BIN_DIR       take the four binaries from this directory instead of building them (one target
#                         only; for tests and for binaries built elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'release: %s\n' "$*" >&2; exit 1; }

command -v minisign >/dev/null 2>&1 ||
    die "minisign is not installed (apt install minisign, brew install minisign or apk add minisign)"
[ -n "${MINISIGN_SECRET_KEY:-}" ] ||
    die "MINISIGN_SECRET_KEY is not set: the path of the minisign secret key that signs the release"
[ -r "$MINISIGN_SECRET_KEY" ] || die "MINISIGN_SECRET_KEY=$MINISIGN_SECRET_KEY is not a readable file"

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "cannot read the workspace version from Cargo.toml"
host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p') || true
targets=${RELEASE_TARGETS:-$host}
[ -n "$targets" ] || die "RELEASE_TARGETS is empty and rustc does not name the host target"
out=${RELEASE_DIR:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bins="appstrate appstrate-runner appstrate-sidecar appstrate-operator"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# minisign reads the key's password from standard input when that is not a terminal.
pw_file=$work/password
printf '%s\n' "${MINISIGN_PASSWORD:-}" >"$pw_file"

# The public key that install.sh will trust.
pubkey=${MINISIGN_PUBLIC_KEY:-}
if [ -z "$pubkey" ]; then
    minisign -R -s "$MINISIGN_SECRET_KEY" -p "$work/key.pub" >/dev/null 2>&1 <"$pw_file" ||
        die "cannot read the public key from $MINISIGN_SECRET_KEY (wrong MINISIGN_PASSWORD?); or set MINISIGN_PUBLIC_KEY"
    pubkey=$(sed -n '2p' "$work/key.pub")
fi
case "$pubkey" in
    RW*) ;;
    *) die "MINISIGN_PUBLIC_KEY must be the base64 line of a minisign public key (it starts with RW)" ;;
esac

sign() { # file trusted-comment
    minisign -S -s "$MINISIGN_SECRET_KEY" -m "$1" -x "$1.minisig" -t "$2" <"$pw_file" >/dev/null 2>&1 ||
        die "signing $1 with $MINISIGN_SECRET_KEY failed (wrong MINISIGN_PASSWORD?)"
}

for target in $targets; do
    if [ -n "${RELEASE_BIN_DIR:-}" ]; then
        bin_dir=$RELEASE_BIN_DIR
    else
        printf '==> cargo build --release --target %s\n' "$target" >&2
        cargo build --release --locked --target "$target" \
            -p api-server -p runner -p sidecar -p operator --bin appstrate --bin appstrate-runner \
            --bin appstrate-sidecar --bin appstrate-operator >&2
        bin_dir=target/$target/release
    fi
    name=appstrate-$version-$target
    stage=$(mktemp -d)
    mkdir "$stage/$name"
    for b in $bins; do
        [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable"
        cp "$bin_dir/$b" "$stage/$name/$b"
    done
    cp README.md "$stage/$name/"
    tarball=$out/appstrate-$target.tar.gz
    tar -C "$stage" -czf "$tarball" "$name"
    rm -rf "$stage"
    sign "$tarball" "appstrate $version $target"
    printf '==> %s\n' "$tarball" >&2
done

(cd "$out" && sha256sum appstrate-*.tar.gz >SHA256SUMS)
sign "$out/SHA256SUMS" "appstrate $version checksums"

# The installer to publish: the repository's, with this release's public key and base URL.
sed -e "s|^APPSTRATE_PUBLIC_KEY=.*|APPSTRATE_PUBLIC_KEY='$pubkey'|" \
    -e "s|^DEFAULT_BASE_URL=.*|DEFAULT_BASE_URL='${RELEASE_BASE_URL:-}'|" \
    scripts/install.sh >"$out/install.sh"
chmod +x "$out/install.sh"
printf '==> release %s in %s (public key %s)\n' "$version" "$out" "$pubkey" >&2
