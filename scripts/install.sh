#!/bin/sh
# Installs appstrate after verifying its signature with minisign:
#
#   curl -fsSL <base URL>/install.sh | sh
#
# It downloads appstrate-<target>.tar.gz and its .minisig from the base URL, verifies the signature with
# the public key below, and only then installs appstrate and appstrate-runner. A missing or bad
# signature stops it; nothing unverified is installed.
#
# Environment:
#   APPSTRATE_BASE_URL     where the release files are (default: the URL this installer was published with)
#   APPSTRATE_INSTALL_DIR  where to install (default: $HOME/.local/bin)
#   APPSTRATE_TARGET       Rust target triple of the tarball (default: detected)
#   MINISIGN               the minisign command (default: minisign)
set -eu

# Filled in by scripts/release.sh with the release's public key and base URL.
APPSTRATE_PUBLIC_KEY=''
DEFAULT_BASE_URL=''

say() { printf '%s\n' "$*"; }
fail() { printf 'appstrate install: %s\n' "$*" >&2; exit 1; }

minisign=${MINISIGN:-minisign}
if ! command -v "$minisign" >/dev/null 2>&1; then
    fail "minisign: command not found. This installer verifies the appstrate binary with minisign before \
installing it. Install minisign first (brew install minisign, apt install minisign, or apk add minisign), \
then run the installer again."
fi
[ -n "$APPSTRATE_PUBLIC_KEY" ] ||
    fail "this copy of install.sh has no public key: use the install.sh published with a release (scripts/release.sh writes it)"
base_url=${APPSTRATE_BASE_URL:-$DEFAULT_BASE_URL}
[ -n "$base_url" ] || fail "set APPSTRATE_BASE_URL to the address of the release files"
base_url=${base_url%/}

if [ -n "${APPSTRATE_TARGET:-}" ]; then
    target=$APPSTRATE_TARGET
else
    case "$(uname -m)" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) fail "no release for the $(uname -m) architecture; build from source (cargo build --release)" ;;
    esac
    case "$(uname -s)" in
        Linux) target=$arch-unknown-linux-gnu ;;
        Darwin) target=$arch-apple-darwin ;;
        *) fail "no release for $(uname -s); build from source (cargo build --release)" ;;
    esac
fi

if command -v curl >/dev/null 2>&1; then
    fetch() { curl -fsSL --proto '=http,https' -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
    fetch() { wget -q -O "$2" "$1"; }
else
    fail "neither curl nor wget is installed"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
tarball=appstrate-$target.tar.gz

say "Downloading $base_url/$tarball"
fetch "$base_url/$tarball" "$tmp/$tarball" || fail "could not download $base_url/$tarball"
fetch "$base_url/$tarball.minisig" "$tmp/$tarball.minisig" ||
    fail "refusing to install: no signature at $base_url/$tarball.minisig (the release must be signed)"

if ! "$minisign" -V -P "$APPSTRATE_PUBLIC_KEY" -m "$tmp/$tarball" -x "$tmp/$tarball.minisig" >"$tmp/verify.log" 2>&1; then
    fail "refusing to install: the signature of $tarball does not verify with the Appstrate public key \
$APPSTRATE_PUBLIC_KEY (minisign: $(tr '\n' ' ' <"$tmp/verify.log")). The download was altered, or it was not signed \
by this key."
fi
say "Signature verified ($APPSTRATE_PUBLIC_KEY)"

mkdir "$tmp/x"
tar -xzf "$tmp/$tarball" -C "$tmp/x" || fail "$tarball is not a valid tarball"
src=$(find "$tmp/x" -mindepth 2 -maxdepth 2 -type f -name appstrate | head -n 1)
[ -n "$src" ] || fail "$tarball holds no appstrate binary"
src=$(dirname "$src")

dest=${APPSTRATE_INSTALL_DIR:-${HOME:?HOME is not set}/.local/bin}
mkdir -p "$dest"
for b in appstrate appstrate-runner; do
    [ -f "$src/$b" ] || fail "$tarball holds no $b binary"
    # Replace atomically, so that a running appstrate keeps its file.
    cp "$src/$b" "$dest/.$b.new"
    chmod 755 "$dest/.$b.new"
    mv -f "$dest/.$b.new" "$dest/$b"
done

version=$("$dest/appstrate" --version) || fail "the installed $dest/appstrate does not run"
say "Installed $version in $dest"
case ":${PATH:-}:" in
    *":$dest:"*) ;;
    *) say "Add $dest to your PATH (for example: export PATH=\"$dest:\$PATH\")" ;;
esac
say "Next: appstrate dev"
