#!/usr/bin/env bash
# The test lab: N hosts as network namespaces on a private bridge, each with its own real
# OpenSSH sshd and its own dockerd, plus a real registry (distribution) with a locally built
# busybox image. Needs root. Follows ../shared/LAB-NOTES.md:
#
#  - the guard route `blackhole 10.200.0.0/16 metric 9999` goes in before any namespace, so no
#    lab packet can ever leave through the machine's default route, and comes out last, only
#    when no socket to the lab range is left;
#  - namespaces get no default route; dockerd runs only inside them; nothing is pulled from a
#    public registry;
#  - every daemon's PID is recorded and stopped by PID at `down`;
#  - an nftables table counts (and drops) packets to the lab range leaving by any interface other
#    than lo and the lab bridge: `down` fails if that counter is not 0.
#
# Usage:
#   tests/lab/lab.sh up [N]        start N hosts (default 4); writes $FERRY_LAB_DIR/lab.env
#   tests/lab/lab.sh down          stop everything started by `up`
#   tests/lab/lab.sh cut N | restore N          take host N's link down / up (bridge side)
#   tests/lab/lab.sh drop N | undrop N          silently drop host N's SSH traffic (nft in its namespace)
#   tests/lab/lab.sh sshd-stop N | sshd-start N stop / start host N's sshd
#   tests/lab/lab.sh noregistry N | registry N  refuse / allow host N's connections to the registries
#   tests/lab/lab.sh pg-stop | pg-start         stop PostgreSQL (its data stays) / start it again
#   tests/lab/lab.sh pg-db NAME                 a fresh, empty database NAME owned by role ferry; prints its URL
#   tests/lab/lab.sh psql DB SQL                runs SQL in DB as the superuser (unix socket), prints -At output
set -euo pipefail

T=${FERRY_LAB_DIR:-/tmp/ferry-lab}
BRIDGE=br-ferry
NET=10.200.0
GUARD="blackhole 10.200.0.0/16 metric 9999"
REGISTRY=$NET.1:5000
PG_PORT=5432                  # PostgreSQL on the bridge address only, TLS from the lab CA
SECURE_REGISTRY=$NET.1:5001   # the same storage behind TLS (the lab's own CA) and htpasswd
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "lab: $*" >&2; }
# alive PID: running and not a zombie (a daemon's zombie lingers when its parent does not reap).
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat"; }
# stop PID: TERM, wait up to 10 s, then KILL.
stop() {
  local pid=$1
  alive "$pid" || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
ns() { echo "ferry-h$1"; }
ip_of() { echo "$NET.$((10 + $1))"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "lab: needs root (network namespaces, sshd, dockerd). Run the tests as root: scripts/test (or sudo scripts/test)" >&2
    exit 2
  fi
}

guard_up() {
  ip route replace $GUARD
  nft -f - <<EOF
table inet ferry_lab_leak
delete table inet ferry_lab_leak
table inet ferry_lab_leak {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr 10.200.0.0/16 oifname != { "lo", "$BRIDGE" } counter drop
  }
}
EOF
}

leak_count() {
  nft list table inet ferry_lab_leak 2>/dev/null | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1
}

start_sshd_in() { # N: (re)start sshd inside host N's namespaces (its mount namespace keeps /run private)
  local n=$1 d=$T/net/h$1
  nsenter -t "$(cat "$d/holder.pid")" -m -u -n /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
  for _ in $(seq 50); do [ -s "$d/sshd.pid" ] && alive "$(cat "$d/sshd.pid")" && return 0; sleep 0.1; done
  log "sshd on h$n did not start"; cat "$d/sshd.log" >&2; return 1
}

host_up() { # N
  local n=$1 name ip d
  name=$(ns "$n"); ip=$(ip_of "$n"); d=$T/net/h$n
  mkdir -p "$d/docker-lib" /var/lib/docker
  ip netns add "$name"
  ip link add "vh$n" type veth peer name eth0 netns "$name"
  ip link set "vh$n" master $BRIDGE up
  ip -n "$name" addr add "$ip/24" dev eth0
  ip -n "$name" link set eth0 up
  ip -n "$name" link set lo up                    # and no default route, on purpose
  [ -f "$d/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey" -C "$name"
  # A second host key, RSA: a host recorded by it alone must not look "changed" to ferry.
  [ -f "$d/hostkey_rsa" ] || ssh-keygen -q -t rsa -b 2048 -N '' -f "$d/hostkey_rsa" -C "$name"
  cat > "$d/sshd_config" <<EOF
ListenAddress $ip:22
ListenAddress 127.0.0.1:22
HostKey $d/hostkey
HostKey $d/hostkey_rsa
PidFile $d/sshd.pid
AuthorizedKeysFile $T/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 200
MaxSessions 50
LogLevel VERBOSE
EOF
  # A holder process keeps the host's private mount and UTS namespaces alive: its own /root
  # (the machine's .bashrc runs pyenv), its own /run (docker.sock, /run/sshd) and hostname.
  cat > "$d/inner.sh" <<EOF
#!/bin/sh
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=700 tmpfs /root
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd
hostname $name
mount --bind $d/docker-lib /var/lib/docker
dockerd --bip 172.31.$n.1/24 --insecure-registry $REGISTRY --insecure-registry $SECURE_REGISTRY --pidfile /run/docker.pid > $d/dockerd.log 2>&1 &
echo \$! > $d/dockerd.pid
exec sleep infinity
EOF
  chmod +x "$d/inner.sh"
  # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd then finds no cgroups.
  setsid nohup nsenter --net=/run/netns/"$name" unshare -m -u "$d/inner.sh" > "$d/holder.log" 2>&1 < /dev/null &
  echo $! > "$d/holder.pid"
  for _ in $(seq 50); do [ -s "$d/dockerd.pid" ] && break; sleep 0.1; done
  start_sshd_in "$n"
}

# SSH certificates (issue 17): a host CA and a user CA, and three more sshd in h3's namespaces,
# each with an Ed25519 host key certified by the host CA: 2201 valid (principals h3 and its
# address; it also trusts the user CA and has no authorized keys), 2202 expired, 2203 for
# another name. The client key's copy in ssh/cert/ carries a user certificate for root.
CERT_PORTS="2201 2202 2203"
cert_up() {
  local n=3 d=$T/net/h3 ip port principals validity c
  ip=$(ip_of $n)
  mkdir -p "$T/ssh/cert"
  [ -f "$T/ssh/host_ca" ] || ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/host_ca" -C ferry-lab-host-ca
  [ -f "$T/ssh/user_ca" ] || ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/user_ca" -C ferry-lab-user-ca
  cp "$T/ssh/client_key" "$T/ssh/client_key.pub" "$T/ssh/cert/"
  chmod 600 "$T/ssh/cert/client_key"
  ssh-keygen -q -s "$T/ssh/user_ca" -I ferry-lab-user -n root -V -5m:+1d "$T/ssh/cert/client_key.pub"
  for port in $CERT_PORTS; do
    c=$d/cert$port
    mkdir -p "$c"
    [ -f "$c/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$c/hostkey" -C "h3-$port"
    case $port in
      2201) principals="h3,$ip"; validity=-5m:+1d ;;
      2202) principals="h3,$ip"; validity=20200101:20200102 ;;
      2203) principals=other.lab; validity=-5m:+1d ;;
    esac
    TZ=UTC ssh-keygen -q -s "$T/ssh/host_ca" -I "h3-$port" -h -n "$principals" -V "$validity" "$c/hostkey.pub"
    {
      echo "ListenAddress $ip:$port"
      echo "HostKey $c/hostkey"
      echo "HostCertificate $c/hostkey-cert.pub"
      echo "PidFile $c/sshd.pid"
      if [ "$port" = 2201 ]; then
        echo "TrustedUserCAKeys $T/ssh/user_ca.pub"
        echo "AuthorizedKeysFile none"
      else
        echo "AuthorizedKeysFile $T/ssh/authorized_keys"
      fi
      printf '%s\n' "PermitRootLogin prohibit-password" "PubkeyAuthentication yes" "PasswordAuthentication no" \
        "KbdInteractiveAuthentication no" "UsePAM no" "StrictModes no" "PrintMotd no" "LogLevel VERBOSE"
    } > "$c/sshd_config"
    nsenter -t "$(cat "$d/holder.pid")" -m -u -n /usr/sbin/sshd -f "$c/sshd_config" -E "$c/sshd.log"
    for _ in $(seq 50); do [ -s "$c/sshd.pid" ] && alive "$(cat "$c/sshd.pid")" && break; sleep 0.1; done
    [ -s "$c/sshd.pid" ] || { log "sshd on h3:$port did not start"; cat "$c/sshd.log" >&2; return 1; }
  done
}

host_down() { # N
  local n=$1 d=$T/net/h$1 c
  for c in "$d"/cert*/; do
    [ -s "$c/sshd.pid" ] && stop "$(cat "$c/sshd.pid")"
    rm -f "$c/sshd.pid"
  done
  if [ -s "$d/dockerd.pid" ] && alive "$(cat "$d/dockerd.pid")"; then
    nsenter -t "$(cat "$d/dockerd.pid")" -m -n sh -c 'ids=$(docker ps -aq 2>/dev/null); [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1' || true
    stop "$(cat "$d/dockerd.pid")"
  fi
  [ -s "$d/sshd.pid" ] && stop "$(cat "$d/sshd.pid")"
  [ -s "$d/holder.pid" ] && stop "$(cat "$d/holder.pid")"
  # Whatever else lives in the namespace (sshd's per-session processes, their commands) would
  # keep it, and its veth, alive after `ip netns del`.
  local pids; pids=$(ip netns pids "$(ns "$n")" 2>/dev/null || true)
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null || true; sleep 0.2; kill -9 $pids 2>/dev/null || true
  fi
  ip netns del "$(ns "$n")" 2>/dev/null || true
  ip link del "vh$n" 2>/dev/null || true
  rm -f "$d/dockerd.pid" "$d/sshd.pid" "$d/holder.pid"
}

registry_up() {
  mkdir -p "$T/registry/data"
  cat > "$T/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $T/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
  secret: ferry-lab
EOF
  setsid nohup docker-registry serve "$T/registry/config.yml" > "$T/registry/log" 2>&1 < /dev/null &
  echo $! > "$T/registry/pid"
  for _ in $(seq 50); do curl -fsS "http://$REGISTRY/v2/" > /dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://$REGISTRY/v2/" > /dev/null 2>&1 || { log "registry did not start"; cat "$T/registry/log" >&2; return 1; }
  secure_registry_up
}

# The same storage behind TLS with a CA of the lab's own, and htpasswd (user tester).
secure_registry_up() {
  local d=$T/registry2
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=ferry lab CA' \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2> /dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$NET.1" \
    -keyout "$d/tls.key" -out "$d/tls.csr" 2> /dev/null
  printf 'subjectAltName=IP:%s\n' "$NET.1" > "$d/san.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/san.ext" -out "$d/tls.crt" 2> /dev/null
  htpasswd -Bbn tester s3cret-lab > "$d/htpasswd"
  sed -e "s#addr: $REGISTRY#addr: $SECURE_REGISTRY#" "$T/registry/config.yml" > "$d/config.yml"
  cat >> "$d/config.yml" <<EOF
  tls:
    certificate: $d/tls.crt
    key: $d/tls.key
auth:
  htpasswd:
    realm: ferry-lab
    path: $d/htpasswd
EOF
  setsid nohup docker-registry serve "$d/config.yml" > "$d/log" 2>&1 < /dev/null &
  echo $! > "$d/pid"
  for _ in $(seq 50); do
    curl -fsS --cacert "$d/ca.crt" -u tester:s3cret-lab "https://$SECURE_REGISTRY/v2/" > /dev/null 2>&1 && return 0; sleep 0.1
  done
  log "TLS registry did not start"; cat "$d/log" >&2; return 1
}

# PostgreSQL: Debian's binaries (any major: the newest under /usr/lib/postgresql), but a cluster
# of the lab's own in $T/postgres, run as user postgres. Debian's own cluster ("15 main") cannot
# start here (no systemd) and is left alone. It listens on the bridge address only (hosts reach it
# through the bridge, nothing outside the lab can) and on a unix socket that only the superuser
# uses (tests tamper rows and create databases through it). TLS from the lab CA; the role ferry
# logs in with a password (scram-sha-256), with or without TLS, so both can be tested.
PG=$T/postgres
pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] || { log "PostgreSQL is missing (no /usr/lib/postgresql/*/bin/pg_ctl): apt-get install postgresql"; return 1; }
  echo "$d"
}
as_postgres() { (cd "$PG" && runuser -u postgres -- "$@"); }   # cd: its cwd must be readable by postgres
# A password of [0-9a-f] only: it goes into URLs without percent-encoding.
new_password() { openssl rand -hex 20; }
pg_url() { # DB: the role ferry's URL for database DB (verify-full against the lab CA)
  echo "postgres://ferry:$(cat "$PG/ferry.password")@$NET.1:$PG_PORT/$1?sslmode=verify-full&sslrootcert=$T/registry2/ca.crt"
}
pg_sql() { # DB SQL...: as the superuser over the socket, -At, stopping at the first error
  local db=$1 bin sql args=(); shift
  bin=$(pg_bin)
  for sql in "$@"; do args+=(-c "$sql"); done
  "$bin/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PG/sock" -p $PG_PORT -U postgres -d "$db" "${args[@]}"
}

pg_start() {
  local bin t0 t1=0 i pid
  bin=$(pg_bin)
  rm -f "$PG/pid"
  t0=$(date +%s%N)
  # `-W`: pg_ctl does not wait (it would look every 100 ms); this loop looks every 20 ms, and at
  # what matters, a connection on the bridge address, as the tests and ferry make it.
  if ! as_postgres "$bin/pg_ctl" -D "$PG/data" -l "$PG/server.log" -W -o "-p $PG_PORT -k $PG/sock \
      -c listen_addresses=$NET.1 -c ssl=on -c ssl_cert_file=$PG/server.crt -c ssl_key_file=$PG/server.key" \
      start > "$PG/pg_ctl.log" 2>&1; then
    log "PostgreSQL did not start (pg_ctl start failed):"; cat "$PG/pg_ctl.log" "$PG/server.log" >&2; return 1
  fi
  for i in $(seq 1500); do                        # 30 s at most
    "$bin/pg_isready" -q -h $NET.1 -p $PG_PORT -d postgres && { t1=$(date +%s%N); break; }
    pid=$(head -1 "$PG/data/postmaster.pid" 2>/dev/null || true)
    if [ "$i" -gt 25 ] && { [ -z "$pid" ] || ! alive "$pid"; }; then break; fi   # it died
    sleep 0.02
  done
  pid=$(head -1 "$PG/data/postmaster.pid" 2>/dev/null || true)
  [ -n "$pid" ] && echo "$pid" > "$PG/pid"
  if [ -z "$pid" ] || ! "$bin/pg_isready" -q -h $NET.1 -p $PG_PORT -d postgres || ! pg_sql postgres 'select 1' > /dev/null; then
    log "PostgreSQL (PID ${pid:-none}) does not accept connections on $NET.1:$PG_PORT; its log:"
    cat "$PG/pg_ctl.log" "$PG/server.log" >&2; return 1
  fi
  log "PostgreSQL accepts connections on $NET.1:$PG_PORT $(( (t1 - t0) / 1000000 )) ms after pg_ctl start (a query answers after $(( ($(date +%s%N) - t0) / 1000000 )) ms)"
}

pg_stop() { # keeps the data; a server that will not stop is killed by its PID
  local bin
  [ -s "$PG/pid" ] || return 0
  bin=$(pg_bin)
  as_postgres "$bin/pg_ctl" -D "$PG/data" -m fast -w -t 20 stop > /dev/null 2>&1 || true
  stop "$(cat "$PG/pid")"
  rm -f "$PG/pid"
}

postgres_up() {
  local bin d=$T/registry2 t0
  t0=$(date +%s%N)
  bin=$(pg_bin)
  rm -rf "$PG"
  mkdir -p "$PG/data" "$PG/sock"
  chown postgres: "$PG/data" "$PG/sock"; chmod 700 "$PG/data"
  # The server's certificate, signed by the lab CA (the TLS registry's): the bridge address and a name.
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=pg.ferry.lab" \
    -keyout "$PG/server.key" -out "$PG/server.csr" 2> /dev/null
  printf 'subjectAltName=IP:%s,DNS:pg.ferry.lab\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' "$NET.1" > "$PG/san.ext"
  openssl x509 -req -in "$PG/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$PG/san.ext" -out "$PG/server.crt" 2> /dev/null
  chown postgres: "$PG/server.key"; chmod 600 "$PG/server.key"
  # A CA that signed nothing here: verify-full against it must fail.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=not the ferry lab CA' \
    -keyout "$PG/other-ca.key" -out "$PG/other-ca.crt" 2> /dev/null
  (umask 077; new_password > "$PG/superuser.password"; new_password > "$PG/ferry.password")
  chown postgres: "$PG/superuser.password"         # initdb reads it as postgres
  : > "$PG/server.log"; chown postgres: "$PG/server.log"
  if ! as_postgres "$bin/initdb" -D "$PG/data" -U postgres -A scram-sha-256 --pwfile="$PG/superuser.password" \
      -E UTF8 --locale=C -N > "$PG/initdb.log" 2>&1; then
    log "PostgreSQL initdb failed:"; cat "$PG/initdb.log" >&2; return 1
  fi
  cat > "$PG/data/pg_hba.conf" <<EOF
# The lab's (lab.sh): the superuser over the socket; everyone else by password from the lab net.
local   all  postgres                  trust
hostssl all  all       $NET.0/24       scram-sha-256
host    all  all       $NET.0/24       scram-sha-256
EOF
  chown postgres: "$PG/data/pg_hba.conf"; chmod 600 "$PG/data/pg_hba.conf"
  pg_start
  # The password goes in through stdin, never in argv (it is [0-9a-f]: nothing to quote).
  "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG/sock" -p $PG_PORT -U postgres -d postgres > /dev/null <<EOF
CREATE ROLE ferry LOGIN PASSWORD '$(cat "$PG/ferry.password")';
CREATE DATABASE ferry OWNER ferry;
EOF
  log "PostgreSQL up in $(( ($(date +%s%N) - t0) / 1000000 )) ms (postgres_up)"
}

pg_db() { # NAME: drops and creates database NAME, owned by ferry; prints its URL
  local name=${1:-}
  [[ $name =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || { log "pg-db: a database name is [a-z_][a-z0-9_]* (got '$name')"; exit 2; }
  PGOPTIONS="-c client_min_messages=warning" pg_sql postgres "DROP DATABASE IF EXISTS $name WITH (FORCE)" \
    "CREATE DATABASE $name OWNER ferry" > /dev/null   # no NOTICE that it did not exist
  pg_url "$name"
}

image_up() { # builds busybox-static into an image and pushes ferry/busybox:1.0 with curl only
  local r=$T/rootfs
  rm -rf "$r"; mkdir -p "$r/bin" "$r/www" "$r/tmp" "$r/etc"
  cp /bin/busybox "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
  echo '<h1>hello from the ferry lab</h1>' > "$r/www/index.html"
  echo 'root:x:0:0:root:/:/bin/sh' > "$r/etc/passwd"; echo 'root:x:0:' > "$r/etc/group"
  tar -C "$r" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$T/rootfs.tar" .
  "$HERE/push-image.sh" "$REGISTRY" ferry/busybox 1.0 "$T/rootfs.tar"
  web_images_up
  caddy_image_up
}

# ferry/caddy:2.6.2, the proxy image (issue 15): Debian's caddy binary with the libraries `ldd`
# names, plus busybox-static for `sh` and `wget` (the public caddy:2 image is Alpine and has
# both; ferry needs them inside the proxy). Env, Cmd and folders as in the public image, so that
# a test against this image behaves like one against caddy:2.
caddy_image_up() {
  local r=$T/caddy-rootfs lib
  rm -rf "$r"; mkdir -p "$r/bin" "$r/usr/bin" "$r/etc/caddy" "$r/data" "$r/config" "$r/tmp" "$r/srv"
  chmod 1777 "$r/tmp"
  cp /usr/bin/caddy "$r/usr/bin/caddy"
  for lib in $(ldd /usr/bin/caddy | grep -o '/[^ ]*'); do
    mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"
  done
  cp /bin/busybox "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
  printf ':80 {\n\troot * /srv\n\tfile_server\n}\n' > "$r/etc/caddy/Caddyfile"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"; echo 'root:x:0:' > "$r/etc/group"
  tar -C "$r" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$T/caddy.tar" .
  CONFIG='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","XDG_CONFIG_HOME=/config","XDG_DATA_HOME=/data"],"Cmd":["caddy","run","--config","/etc/caddy/Caddyfile","--adapter","caddyfile"],"ExposedPorts":{"80/tcp":{},"443/tcp":{},"443/udp":{},"2019/tcp":{}},"WorkingDir":"/srv"}' \
    "$HERE/push-image.sh" "$REGISTRY" ferry/caddy 2.6.2 "$T/caddy.tar"
  rm -rf "$r"
}

# The deploy tests' app, ferry/web: busybox httpd serving /www/index.html, in fourteen tags.
#   1.0, 1.1, 2.0  healthy, answering "ferry web 1.0" / "ferry web 1.1" / "ferry web 2.0"
#   bad       httpd exits at once with an error on stderr (a broken build)
#   health    has a HEALTHCHECK that passes once httpd answers
#   sick      has a HEALTHCHECK that never passes (its /up answers: only the HEALTHCHECK fails it)
#   noup      httpd runs and answers "ferry web noup", but has no /up (404): it never gets
#             healthy behind the proxy (issue 15)
#   r1 … r7   healthy like 1.0, each answering "ferry web rN" (so each is its own image): seven
#             deployments of different images for the retention test (issue 16); not versions,
#             so `latest` and the version listings of ferry/web do not see them
# Every version whose httpd runs has `/up` (answers "up VERSION"; not noup) for the proxy's health
# gate, and `/cgi-bin/slow`, a CGI that sleeps 3 s and then answers "ferry web VERSION": a
# request in flight while the proxy switches, for the drain tests.
web_images_up() {
  local r=$T/rootfs v
  local plain='{"Env":["PATH=/bin"],"Cmd":["httpd","-f","-p","80","-h","/www"]}'
  local check='"Healthcheck":{"Test":["CMD-SHELL","wget -q -O /dev/null http://127.0.0.1/ || exit 1"],"Interval":500000000,"Timeout":2000000000,"Retries":2}'
  local never='"Healthcheck":{"Test":["CMD-SHELL","exit 1"],"Interval":500000000,"Timeout":2000000000,"Retries":2}'
  for v in 1.0 1.1 2.0 bad health sick noup r1 r2 r3 r4 r5 r6 r7; do
    echo "ferry web $v" > "$r/www/index.html"
    rm -f "$r/www/up"; rm -rf "$r/www/cgi-bin"
    [ "$v" = noup ] || echo "up $v" > "$r/www/up"
    mkdir -p "$r/www/cgi-bin"
    # busybox httpd adds the status line; the CGI gives the header block, then the body.
    cat > "$r/www/cgi-bin/slow" <<EOF
#!/bin/sh
/bin/sleep 3
printf 'Content-Type: text/plain\r\n\r\n'
echo "ferry web $v"
EOF
    chmod 755 "$r/www/cgi-bin/slow"
    rm -f "$r/bin/httpd"; ln -s busybox "$r/bin/httpd"
    if [ "$v" = bad ]; then
      rm "$r/bin/httpd" "$r/www/up"; rm -rf "$r/www/cgi-bin"
      printf '#!/bin/sh\necho "httpd: cannot load /etc/web.conf: no such file (broken build)" >&2\nexit 3\n' > "$r/bin/httpd"
      chmod 755 "$r/bin/httpd"
    fi
    tar -C "$r" --sort=name --mtime=@0 --owner=0 --group=0 -cf "$T/web-$v.tar" .
    case $v in
      health) CONFIG="${plain%\}},$check}" ;;
      sick) CONFIG="${plain%\}},$never}" ;;
      *) CONFIG=$plain ;;
    esac
    CONFIG=$CONFIG "$HERE/push-image.sh" "$REGISTRY" ferry/web "$v" "$T/web-$v.tar"
  done
  rm -f "$r/www/up"; rm -rf "$r/www/cgi-bin"
  rm -f "$r/bin/httpd"; ln -s busybox "$r/bin/httpd"
  many_tags_up
}

# ferry/many: one image under 250 version tags (and a few that are not versions), for tag
# listing and ordering: 0.0.0 … 19.9.0, v20.0 … v20.24, 21.0.0.0 … 21.0.0.24.
many_tags_up() {
  local m=$T/many-manifest.json i tags=()
  "$HERE/push-image.sh" "$REGISTRY" ferry/many 0.0.0 "$T/web-1.0.tar"
  curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/ferry/many/manifests/0.0.0" -o "$m"
  for i in $(seq 1 199); do tags+=("$((i / 10)).$((i % 10)).0"); done
  for i in $(seq 0 24); do tags+=("v20.$i" "21.0.0.$i"); done
  tags+=(latest main sha-3f9a1c7 22.0.0-rc.1)
  printf '%s\n' "${tags[@]}" | xargs -P 8 -I{} curl -fsS -X PUT -o /dev/null \
    -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' --data-binary "@$m" \
    "http://$REGISTRY/v2/ferry/many/manifests/{}"
}

# Users whose login shell is bash, dash, sh or fish (whose single quotes read `\\` and `\'`): a
# remote command must mean the same for all. They are in the docker group, so they can deploy.
SHELL_USERS="ferry-bash:/bin/bash ferry-dash:/bin/dash ferry-sh:/bin/sh ferry-fish:/usr/bin/fish"

users_up() {
  local pair user shell
  : > "$T/users"
  for pair in $SHELL_USERS; do
    user=${pair%%:*}; shell=${pair#*:}
    mkdir -p "$T/home/$user"
    if id "$user" > /dev/null 2>&1; then
      # Left by a lab that died before its `down`: its home folder may be gone; take it over.
      usermod -d "$T/home/$user" -s "$shell" "$user"
    else
      useradd -M -d "$T/home/$user" -s "$shell" "$user"
    fi
    usermod -p '*' "$user"                        # UsePAM no: a locked password (!) refuses login
    if getent group docker > /dev/null; then usermod -aG docker "$user"; fi
    chown "$user" "$T/home/$user"
    echo "$user" >> "$T/users"
  done
}

users_down() {
  local user
  [ -f "$T/users" ] || return 0
  while read -r user; do userdel "$user" 2>/dev/null || true; done < "$T/users"
  rm -f "$T/users"
}

write_inventory() { # N: lab.toml (environment lab = h1..h3, faulty = h1, h2, h4) and known_hosts
  local n=$1 i
  : > "$T/known_hosts"
  for i in $(seq "$n"); do
    echo "$(ip_of "$i") $(cut -d' ' -f1,2 "$T/net/h$i/hostkey.pub")" >> "$T/known_hosts"
  done
  echo "127.0.0.1 $(cut -d' ' -f1,2 "$T/net/h1/hostkey.pub")" >> "$T/known_hosts"   # target "inner"
  {
    echo "[defaults]"
    echo "user = \"root\""
    echo "identity = \"ssh/client_key\""
    echo "known_hosts = \"known_hosts\""
    echo
    echo "[environments.lab]"
    echo "targets = [\"h1\", \"h2\", \"h3\"]"
    echo
    echo "[environments.faulty]"
    echo "targets = [\"h1\", \"h2\", \"h4\"]"
    echo
    echo "[environments.all]"
    echo "targets = [\"h*\"]"
    for i in $(seq "$n"); do
      echo
      echo "[targets.h$i]"
      echo "host = \"$(ip_of "$i")\""
      echo "roles = [\"web\"]"
    done
    # Reachable only through h1: its own loopback (nothing listens on 127.0.0.1:22 outside).
    echo
    echo "[targets.inner]"
    echo "host = \"127.0.0.1\""
    echo "jump = \"h1\""
    echo
    echo "[environments.inner]"
    echo "targets = [\"inner\"]"
    # One environment per user: they share h1's address, and an environment never holds one
    # host twice.
    for pair in $SHELL_USERS; do
      echo
      echo "[targets.${pair%%:*}]"
      echo "host = \"$(ip_of 1)\""
      echo "user = \"${pair%%:*}\""
      echo
      echo "[environments.${pair%%:*}]"
      echo "targets = [\"${pair%%:*}\"]"
    done
    echo
    echo "[feeds.lab]"
    echo "url = \"http://$REGISTRY\""
  } > "$T/lab.toml"
}

up() {
  need_root
  local n=${1:-4} i
  if [ -f "$T/lab.env" ]; then log "a lab is already up in $T (run down first)"; exit 1; fi
  if ip link show $BRIDGE > /dev/null 2>&1 || [ -n "$(ip netns list | grep '^ferry-h')" ]; then
    log "another ferry lab is up (bridge $BRIDGE or namespaces ferry-h* exist): FERRY_LAB_DIR=DIR $0 down"; exit 1
  fi
  mkdir -p "$T/ssh" "$T/net" /run/netns
  chmod 755 "$T" "$T/ssh"                         # the shell users read authorized_keys
  guard_up                                        # before any namespace exists
  ip link add $BRIDGE type bridge
  ip addr add $NET.1/24 dev $BRIDGE
  ip link set $BRIDGE up
  [ -f "$T/ssh/client_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/client_key" -C ferry-lab
  [ -f "$T/ssh/other_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/other_key" -C not-authorized
  cp "$T/ssh/client_key.pub" "$T/ssh/authorized_keys"; chmod 644 "$T/ssh/authorized_keys"
  registry_up
  postgres_up                                     # after the registry: its CA signs the server's cert
  users_up
  for i in $(seq "$n"); do host_up "$i"; done
  [ "$n" -ge 3 ] && cert_up
  image_up
  write_inventory "$n"
  for i in $(seq "$n"); do                        # dockerd answers in each host
    for _ in $(seq 100); do
      nsenter -t "$(cat "$T/net/h$i/holder.pid")" -m -n docker info > /dev/null 2>&1 && break; sleep 0.2
    done
  done
  {
    echo "FERRY_LAB_DIR=$T"
    echo "FERRY_LAB_HOSTS=$n"
    echo "FERRY_LAB_REGISTRY=$REGISTRY"
    echo "FERRY_LAB_SECURE_REGISTRY=$SECURE_REGISTRY"
    echo "FERRY_LAB_PROXY_IMAGE=$REGISTRY/ferry/caddy:2.6.2"
    echo "FERRY_LAB_PG_URL=$(pg_url ferry)"
    echo "FERRY_LAB_PG_SOCKET=$PG/sock"
  } > "$T/lab.env.new"
  chmod 600 "$T/lab.env.new"                      # the role ferry's password is in its URL
  mv "$T/lab.env.new" "$T/lab.env"                # whole or not at all: lab.env means "up"
  log "up: $n hosts ($NET.11-$NET.$((10 + n))), registry $REGISTRY, inventory $T/lab.toml"
}

down() {
  need_root
  local i n
  n=$(ls -d "$T"/net/h* 2>/dev/null | wc -l || true)   # none when `up` failed before the hosts
  for i in $(seq "$n"); do host_down "$i" & done
  wait
  for pidfile in "$T/registry/pid" "$T/registry2/pid"; do
    [ -s "$pidfile" ] && stop "$(cat "$pidfile")"
    rm -f "$pidfile"
  done
  pg_stop                                         # before the bridge (its listening address) goes
  ip link del $BRIDGE 2>/dev/null || true
  users_down
  local leaks; leaks=$(leak_count); leaks=${leaks:-0}
  nft delete table inet ferry_lab_leak 2>/dev/null || true
  # The guard goes last, and only when no socket to the lab range is left.
  for _ in $(seq 20); do [ -z "$(ss -Htn dst 10.200.0.0/16)" ] && break; sleep 0.1; done
  # What is left now has no process behind it (e.g. a FIN that a test's dropped link never
  # acknowledged): destroy it rather than let it retransmit once the guard is gone.
  ss -K dst 10.200.0.0/16 > /dev/null 2>&1 || true
  if [ -n "$(ss -Htn dst 10.200.0.0/16)" ]; then
    log "sockets to the lab range remain; keeping the guard route:"; ss -tn dst 10.200.0.0/16 >&2
  else
    ip route del $GUARD 2>/dev/null || true
  fi
  rm -f "$T/lab.env"
  if [ "$leaks" != 0 ]; then log "LEAK: $leaks packets to the lab range tried to leave by another interface"; exit 1; fi
  log "down"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  # Not `grep -q`: under pipefail, grep leaving early can fail `ip` with SIGPIPE.
  cut) ip route show | grep "^blackhole 10.200.0.0/16" > /dev/null || { log "guard route missing"; exit 1; }
       ip link set "vh$2" down ;;
  restore) ip link set "vh$2" up
           ip neigh flush to "$(ip_of "$2")" dev $BRIDGE 2>/dev/null || true ;;  # a FAILED ARP entry would refuse at once
  drop) ip netns exec "$(ns "$2")" nft -f - <<EOF
table inet ferry_cut {
  chain input { type filter hook input priority 0; policy accept; tcp dport 22 drop; }
  chain output { type filter hook output priority 0; policy accept; tcp sport 22 drop; }
}
EOF
        ;;
  undrop) ip netns exec "$(ns "$2")" nft delete table inet ferry_cut ;;
  # What a target can do with the registry out of reach (a rollback to an image it kept).
  noregistry) ip netns exec "$(ns "$2")" nft -f - <<EOF
table inet ferry_noreg {
  chain output { type filter hook output priority 0; policy accept; ip daddr $NET.1 tcp dport { 5000, 5001 } reject with tcp reset; }
}
EOF
        ;;
  registry) ip netns exec "$(ns "$2")" nft delete table inet ferry_noreg ;;
  sshd-stop) stop "$(cat "$T/net/h$2/sshd.pid")" ;;
  sshd-start) rm -f "$T/net/h$2/sshd.pid"; start_sshd_in "$2" ;;
  leaks) leak_count ;;
  pg-stop) pg_stop ;;
  pg-start) [ -s "$PG/pid" ] && alive "$(cat "$PG/pid")" && { log "PostgreSQL is already running"; exit 1; }
            pg_start ;;
  pg-db) pg_db "${2:-}" ;;
  psql) [ $# -eq 3 ] || { log "usage: lab.sh psql DB SQL"; exit 2; }
        pg_sql "$2" "$3" ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
