#!/bin/sh
# A throwaway PostgreSQL cluster for procman.pg's tests: Unix socket only
# (no TCP), in a temporary directory, owned by the 'postgres' user when
# run as root (initdb refuses root).
#   tools/pg-cluster.sh start DIR   -> prints the conninfo
#   tools/pg-cluster.sh restart DIR  -> a crash (stop -m immediate) and a start
#   tools/pg-cluster.sh stop DIR
set -eu
cmd=$1
dir=$2
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
start_server() {
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses='' -k $dir -c max_connections=50 -c fsync=on" start >/dev/null
}
case "$cmd" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1
    start_server
    echo "host=$dir dbname=postgres user=postgres"
    ;;
  restart)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    start_server
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|restart|stop DIR" >&2
    exit 2
    ;;
esac
