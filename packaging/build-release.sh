#!/usr/bin/env bash
# Builds a release: the .deb (cargo-deb, from [package.metadata.deb] in
# Cargo.toml), the standalone archive pagodirecto-<version>-x86_64-linux.tar.gz
# (binary, unit, default config, README) and SHA256SUMS, in target/dist/.
# Prints the .deb's size and installed footprint (target: .deb < 30 MB) and
# runs lintian on it.
#
#   PAGODIRECTO_SIGNING_KEY=/path/release-signing.key packaging/build-release.sh
#   UNSIGNED=1 packaging/build-release.sh      # a local build, no key
#   DEB_VERSION=1.2.3-1 packaging/build-release.sh
#   PAGODIRECTO_VERSION=1.3.0-beta.1 ...       # the version the binary reports
#                                              # and the archive is named after
#                                              # (default: Cargo.toml's)
#
# The tar.gz is what `pagodirecto update` downloads, and it refuses one
# without a valid signature: PAGODIRECTO_SIGNING_KEY (a zipsign private key)
# signs it with examples/sign_release.rs (docs/update.md). Without a key the
# script stops before building unless UNSIGNED=1.
#
# Needs cargo-deb (cargo install cargo-deb --locked) and, for the check,
# lintian. Build on the oldest Debian you support: the binary needs the glibc
# it was linked against.
set -euo pipefail

if [ -n "${PAGODIRECTO_SIGNING_KEY:-}" ]; then
    if [ ! -r "$PAGODIRECTO_SIGNING_KEY" ]; then
        echo "PAGODIRECTO_SIGNING_KEY=$PAGODIRECTO_SIGNING_KEY: no such readable file" >&2
        exit 1
    fi
    signing_key=$(realpath "$PAGODIRECTO_SIGNING_KEY")
elif [ "${UNSIGNED:-}" = 1 ]; then
    signing_key=
    echo "UNSIGNED=1: the archive will not be signed, and pagodirecto update will refuse it" >&2
else
    echo "no signing key: set PAGODIRECTO_SIGNING_KEY to the release's zipsign private key (docs/update.md), or UNSIGNED=1 for an unsigned local build that pagodirecto update refuses" >&2
    exit 1
fi

cd "$(dirname "$0")/.."

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
dist="$target_dir/dist"
rm -rf "$dist"
mkdir -p "$dist"

# --dbgsym: the release profile keeps line tables (for backtraces); they go
# into a separate pagodirecto-dbgsym .ddeb, and the .deb's binary is stripped.
cargo deb --locked --dbgsym ${DEB_VERSION:+--deb-version "$DEB_VERSION"} --output "$dist/"
deb=$(ls "$dist"/pagodirecto_*.deb)

version=${PAGODIRECTO_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
name="pagodirecto-$version-x86_64-linux"
stage="$dist/$name"
mkdir -p "$stage"
# The same stripped binary the .deb carries.
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/pagodirecto > "$stage/pagodirecto"
chmod 755 "$stage/pagodirecto"
cp systemd/pagodirecto.service packaging/pagodirecto.toml README.md "$stage/"
tar -C "$dist" --owner=0 --group=0 --numeric-owner --sort=name -czf "$dist/$name.tar.gz" "$name"
rm -rf "$stage"
if [ -n "$signing_key" ]; then
    # The signature's context is the file name: sign the final name.
    cargo run --quiet --locked --release --example sign_release -- sign "$signing_key" "$dist/$name.tar.gz"
fi
(cd "$dist" && sha256sum -- *.deb *.ddeb "$name.tar.gz" > SHA256SUMS)

deb_bytes=$(stat -c %s "$deb")
installed_kib=$(dpkg-deb --field "$deb" Installed-Size)
echo
echo "$(basename "$deb"): $((deb_bytes / 1024)) KiB ($deb_bytes bytes); installed footprint: $installed_kib KiB"
echo "$name.tar.gz: $(( $(stat -c %s "$dist/$name.tar.gz") / 1024 )) KiB"
if [ "$deb_bytes" -ge $((30 * 1000 * 1000)) ]; then
    echo "the .deb is over the 30 MB target" >&2
    exit 1
fi
if command -v lintian >/dev/null; then
    echo "lintian:"
    lintian --tag-display-limit 0 "$deb"
fi
cat "$dist/SHA256SUMS"
