#!/usr/bin/env bash
# Builds a release: the .deb (cargo-deb, from [package.metadata.deb] in
# Cargo.toml), the standalone archive pagodirecto-<version>-x86_64-linux.tar.gz
# (binary, unit, default config, README) and SHA256SUMS, in target/dist/.
# Prints the .deb's size and installed footprint (target: .deb < 30 MB) and
# runs lintian on it.
#
#   packaging/build-release.sh                 # version from Cargo.toml
#   DEB_VERSION=1.2.3-1 packaging/build-release.sh
#
# Needs cargo-deb (cargo install cargo-deb --locked) and, for the check,
# lintian. Build on the oldest Debian you support: the binary needs the glibc
# it was linked against.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
dist="$target_dir/dist"
rm -rf "$dist"
mkdir -p "$dist"

# --dbgsym: the release profile keeps line tables (for backtraces); they go
# into a separate pagodirecto-dbgsym .ddeb, and the .deb's binary is stripped.
cargo deb --locked --dbgsym ${DEB_VERSION:+--deb-version "$DEB_VERSION"} --output "$dist/"
deb=$(ls "$dist"/pagodirecto_*.deb)

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name="pagodirecto-$version-x86_64-linux"
stage="$dist/$name"
mkdir -p "$stage"
# The same stripped binary the .deb carries.
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/pagodirecto > "$stage/pagodirecto"
chmod 755 "$stage/pagodirecto"
cp systemd/pagodirecto.service packaging/pagodirecto.toml README.md "$stage/"
tar -C "$dist" --owner=0 --group=0 --numeric-owner --sort=name -czf "$dist/$name.tar.gz" "$name"
rm -rf "$stage"
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
