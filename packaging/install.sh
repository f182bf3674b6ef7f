#!/bin/sh
# Installs the engine from this directory (the tarball of `make dist`) and says each step:
# binaries to $PREFIX/bin (default /usr/local), the systemd units to /etc/systemd/system
# (naming $PREFIX/bin/engined), /etc/engine/daemon.json unless there is one, man pages,
# shell completions and the dashboards. DESTDIR installs under another root (a package build,
# a test). Starts nothing: the last line says how.
set -eu
PREFIX=${PREFIX:-/usr/local}
ROOT=${DESTDIR:-}
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "install.sh: $*"; }

say "binaries -> $ROOT$PREFIX/bin"
install -d "$ROOT$PREFIX/bin"
for b in "$here"/bin/*; do install -m 0755 "$b" "$ROOT$PREFIX/bin/"; done

say "systemd units -> $ROOT/etc/systemd/system (ExecStart=$PREFIX/bin/engined)"
install -d "$ROOT/etc/systemd/system"
for u in engine.service engine.socket; do
    sed "s|/usr/bin/engined|$PREFIX/bin/engined|" "$here/systemd/$u" >"$ROOT/etc/systemd/system/$u"
    chmod 0644 "$ROOT/etc/systemd/system/$u"
done

if [ -e "$ROOT/etc/engine/daemon.json" ]; then
    say "configuration: $ROOT/etc/engine/daemon.json is there, kept"
else
    say "configuration -> $ROOT/etc/engine/daemon.json (every option at its default)"
    install -d "$ROOT/etc/engine"
    install -m 0644 "$here/daemon.json" "$ROOT/etc/engine/daemon.json"
fi

say "man pages -> $ROOT$PREFIX/share/man/man1, man8"
install -d "$ROOT$PREFIX/share/man/man1" "$ROOT$PREFIX/share/man/man8"
for p in "$here"/man/*.1; do install -m 0644 "$p" "$ROOT$PREFIX/share/man/man1/"; done
for p in "$here"/man/*.8; do install -m 0644 "$p" "$ROOT$PREFIX/share/man/man8/"; done

say "completions -> bash, zsh and fish directories under $ROOT$PREFIX/share"
install -d "$ROOT$PREFIX/share/bash-completion/completions" "$ROOT$PREFIX/share/zsh/vendor-completions" \
    "$ROOT$PREFIX/share/fish/vendor_completions.d"
install -m 0644 "$here/completions/engine.bash" "$ROOT$PREFIX/share/bash-completion/completions/engine"
install -m 0644 "$here/completions/_engine" "$ROOT$PREFIX/share/zsh/vendor-completions/_engine"
install -m 0644 "$here/completions/engine.fish" "$ROOT$PREFIX/share/fish/vendor_completions.d/engine.fish"

say "dashboards -> $ROOT$PREFIX/share/engine/dashboards"
install -d "$ROOT$PREFIX/share/engine"
rm -rf "$ROOT$PREFIX/share/engine/dashboards"
cp -r "$here/dashboards" "$ROOT$PREFIX/share/engine/dashboards"

say "done; start it with: systemctl daemon-reload && systemctl enable --now engine.socket engine.service"
