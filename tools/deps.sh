#!/bin/sh
# Install those of the Debian packages named as arguments that are missing.
# As root this uses apt-get (updating the package lists if the first try
# fails, as on a fresh machine); otherwise it prints the command and fails.
missing=""
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "procman: missing Debian packages:$missing" >&2
  echo "procman: install them with: sudo apt-get install -y$missing" >&2
  exit 1
fi
echo "procman: installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q $missing >/dev/null 2>&1 ||
  { apt-get update -q && apt-get install -y -q $missing; }
