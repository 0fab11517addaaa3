#!/bin/bash
# stratus: user-data of a master of Hadoop cluster demo (owner alice, request
# req-0123456789abcdef), the same for every master: they launch in one call. cloud-init runs it once,
# as root, at first boot, and it returns within seconds:
# 1. it prints the host keys to the console, framed as cloud-init frames them (cloud-init's own
#    keys-to-console runs only once the user-data has returned; stratus pins them from there);
# 2. it writes the helper scripts and the install's settings;
# 3. it starts the install, stratus-install.service, and does not wait for it.
# The install (Java and Hadoop unless the image has them; then on the master: the configuration,
# HDFS's format and the daemons; on a worker: a path unit that starts its daemons once stratus
# names the master) reports its phase in /var/lib/stratus/phase: `installing java`, ..., `done`
# or `failed: why`. stratus waits for `done` (the profile's boot_timeout_secs) before configuring.
# Nothing secret belongs here: anything on the instance can read its user-data.
# STRATUS_ROOT (unset on a node) moves every path under a directory, for the profile's tests.
set -Eeuo pipefail
umask 022

R=${STRATUS_ROOT:-}
STATE=${STRATUS_STATE_DIR:-$R/var/lib/stratus}
ssh_dir=${STRATUS_SSH_DIR:-/etc/ssh}

# 1. The host keys, before anything else.
echo "-----BEGIN SSH HOST KEY KEYS-----"
for key in "$ssh_dir"/ssh_host_*_key.pub; do
    if [ -f "$key" ]; then
        cat "$key"
    fi
done
echo "-----END SSH HOST KEY KEYS-----"

mkdir -p "$STATE" "$R/etc/stratus" "$R/usr/local/lib/stratus" "$R/usr/local/sbin" \
    "$R/etc/systemd/system" "$R/var/log"
trap 'echo "failed: the user-data, line $LINENO" > "$STATE/phase"' ERR
exec > >(tee -a "$R/var/log/stratus-boot.log") 2>&1
echo "stratus: booting a master of demo"

role=master
hadoop_version=3.5.0
hadoop_home=/opt/hadoop
hadoop_user=ubuntu
data_dir=/var/lib/hadoop
replication=3
java_package=openjdk-17-jre-headless
preinstalled=true
lean=false
sha512=''
image_build=false
sources=(https://dlcdn.apache.org/hadoop/common https://archive.apache.org/dist/hadoop/common )
checksums=(https://downloads.apache.org/hadoop/common https://archive.apache.org/dist/hadoop/common )
# These go into an environment file that both bash and systemd read: plain characters only.
for value in "$hadoop_version" "$hadoop_home" "$hadoop_user" "$data_dir" "$replication" \
    "$java_package" "$preinstalled" "$lean"; do
    if [[ ! $value =~ ^[A-Za-z0-9_./:+-]+$ ]]; then
        echo "failed: unsafe profile value: $value" > "$STATE/phase"
        exit 1
    fi
done
if [[ ! $sha512 =~ ^([0-9a-fA-F]{128})?$ ]]; then
    echo "failed: vars.hadoop_sha512 is not a SHA-512 (128 hex digits)" > "$STATE/phase"
    exit 1
fi
for value in "${sources[@]}" "${checksums[@]}"; do
    if [[ ! $value =~ ^(https://|s3://)[A-Za-z0-9._~:/%+@-]+$ ]]; then
        echo "failed: not an https:// or s3:// source: $value" > "$STATE/phase"
        exit 1
    fi
done
if ((${#sources[@]} == 0)); then
    echo "failed: vars.hadoop_sources is empty" > "$STATE/phase"
    exit 1
fi
user_home=$(getent passwd "$hadoop_user" | cut -d: -f6)
if [ -z "$user_home" ]; then
    echo "failed: the image has no user $hadoop_user" > "$STATE/phase"
    exit 1
fi

# 2. Helpers shared by the install, the worker start and the configure step.
cat > "$R/usr/local/lib/stratus/hadoop.sh" <<'LIB'
# stratus's Hadoop helpers (sourced).

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# phase TEXT: this node's install phase, for stratus (the one line of the phase file) and for
# people (the phases file keeps every one, with its time).
phase() {
    local state=${STRATUS_STATE_DIR:-${STRATUS_ROOT:-}/var/lib/stratus}
    mkdir -p "$state"
    printf '%s\n' "$*" > "$state/phase.tmp"
    mv -f "$state/phase.tmp" "$state/phase"
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >> "$state/phases"
    echo "stratus: phase: $*"
}

# retry ATTEMPTS DELAY COMMAND...: runs COMMAND until it succeeds, at most ATTEMPTS times.
retry() {
    local attempts=$1 delay=$2 i
    shift 2
    for ((i = 1; i <= attempts; i++)); do
        if "$@"; then
            return 0
        fi
        echo "attempt $i of $attempts failed: $*" >&2
        if ((i < attempts)); then
            sleep "$delay"
        fi
    done
    return 1
}

# The environment every Hadoop command and daemon runs with.
load_env() {
    set -a
    # shellcheck source=/dev/null
    . "${STRATUS_HADOOP_ENV:-${STRATUS_ROOT:-}/etc/stratus/hadoop.env}"
    set +a
}

# as_hadoop_user COMMAND...: runs COMMAND as the user the daemons run as.
as_hadoop_user() {
    runuser -u "$HADOOP_USER" -- env JAVA_HOME="$JAVA_HOME" HADOOP_HOME="$HADOOP_HOME" \
        HADOOP_CONF_DIR="$HADOOP_CONF_DIR" HADOOP_LOG_DIR="$HADOOP_LOG_DIR" \
        HADOOP_PID_DIR="$HADOOP_PID_DIR" "$@"
}

# The instance metadata service, version 2 (a session token first).
imds() {
    local token
    token=$(curl -fsS --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
        http://169.254.169.254/latest/api/token) || return 1
    curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" \
        "http://169.254.169.254/latest/meta-data/$1"
}

# This node's private IPv4 address.
own_address() {
    local address
    address=$(imds local-ipv4 2>/dev/null) || address=$(hostname -I | awk '{ print $1 }')
    printf '%s\n' "$address"
}

# An IPv4 address or a DNS name, and nothing that could break a file it is written into.
valid_address() {
    [[ $1 =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]
}

# memory_plan NODE_KB WORKER_KB: the memory (MiB) of this node's daemons and of YARN, from
# MemTotal (kB) of this node and of the smallest worker. Every figure leaves room for the rest:
# the system keeps an eighth (at least 1 GiB), each daemon's JVM 256 MiB beyond its heap, and
# the containers get what is left, in multiples of the scheduler's 512 MiB; a task's heap is
# 80% of its container (YARN kills a container that outgrows its size, not the node).
# shellcheck disable=SC2034 # Its results are globals, for the caller.
memory_plan() {
    local node=$(($1 / 1024)) worker=$(($2 / 1024)) reserve daemon
    reserve=$((node / 8 > 1024 ? node / 8 : 1024))
    # The master's daemons.
    namenode_heap=$(clamp $((node / 4 / 256 * 256)) 512 8192)
    resourcemanager_heap=$(clamp $((node / 8 / 256 * 256)) 512 4096)
    historyserver_heap=$((node >= 12288 ? 1024 : 512))
    # A worker's daemons, and what its NodeManager offers.
    daemon=$((node >= 12288 ? 1024 : 512))
    datanode_heap=$daemon
    nodemanager_heap=$daemon
    nodemanager_mb=$(((node - reserve - 2 * (daemon + 256)) / 512 * 512))
    if ((nodemanager_mb < 1024)); then
        echo "stratus: $node MiB is too little for a worker; YARN is given 1024 MiB" >&2
        nodemanager_mb=1024
    fi
    # The containers, sized for the smallest worker: what the scheduler allows, and MapReduce's.
    reserve=$((worker / 8 > 1024 ? worker / 8 : 1024))
    daemon=$((worker >= 12288 ? 1024 : 512))
    max_allocation_mb=$(((worker - reserve - 2 * (daemon + 256)) / 512 * 512))
    if ((max_allocation_mb < 1024)); then
        max_allocation_mb=1024
    fi
    map_mb=$(clamp $((max_allocation_mb / 4 / 512 * 512)) 512 2048)
    reduce_mb=$(clamp $((2 * map_mb)) 512 $((max_allocation_mb < 4096 ? max_allocation_mb : 4096)))
    am_mb=$map_mb
    map_heap=$((map_mb * 8 / 10))
    reduce_heap=$((reduce_mb * 8 / 10))
    am_heap=$((am_mb * 8 / 10))
}

# clamp N LOW HIGH
clamp() {
    if (($1 < $2)); then
        echo "$2"
    elif (($1 > $3)); then
        echo "$3"
    else
        echo "$1"
    fi
}

# mem_total_kb: MemTotal of this node, in kB.
mem_total_kb() {
    awk '/^MemTotal:/ { print $2 }' "${STRATUS_MEMINFO:-/proc/meminfo}"
}
LIB
# shellcheck source=/dev/null
. "$R/usr/local/lib/stratus/hadoop.sh"
trap 'phase "failed: the user-data, line $LINENO"' ERR

# Hadoop's site files for a master address, written atomically; run by the install on the
# master, by a worker once it knows the master, and by the configure step (which also sets the
# replication and the smallest worker's memory).
cat > "$R/usr/local/sbin/stratus-hadoop-config" <<'CONFIG'
#!/bin/bash
# stratus-hadoop-config MASTER [REPLICATION [WORKER_MEMTOTAL_KB]]: writes Hadoop's core, hdfs,
# yarn and mapred site files, and the daemons' heaps, for a cluster whose master has the private
# address MASTER. The memory comes from this node's MemTotal and the smallest worker's (default:
# this node's).
# shellcheck disable=SC2154 # memory_plan, in hadoop.sh, sets the sizes.
set -euo pipefail
# shellcheck source=/dev/null
. "${STRATUS_HADOOP_LIB:-${STRATUS_ROOT:-}/usr/local/lib/stratus/hadoop.sh}"
load_env
master=${1:?usage: stratus-hadoop-config MASTER_ADDRESS [REPLICATION [WORKER_MEMTOTAL_KB]]}
replication=${2:-$HDFS_REPLICATION}
valid_address "$master" || die "not an address: $master"
[[ $replication =~ ^[1-9][0-9]*$ ]] || die "not a number of replicas: $replication"
own_kb=$(mem_total_kb)
[[ $own_kb =~ ^[1-9][0-9]*$ ]] || die "no MemTotal in ${STRATUS_MEMINFO:-/proc/meminfo}"
worker_kb=${3:-$own_kb}
[[ $worker_kb =~ ^[1-9][0-9]*$ ]] || die "not a MemTotal in kB: $worker_kb"
memory_plan "$own_kb" "$worker_kb"
vcores=$(nproc)

write() {
    cat > "$HADOOP_CONF_DIR/$1.tmp"
    mv -f "$HADOOP_CONF_DIR/$1.tmp" "$HADOOP_CONF_DIR/$1"
}

# Read by the daemons' units (systemd) and by hadoop-env.sh.
write stratus-daemons.env <<ENV
HDFS_NAMENODE_OPTS=-Xmx${namenode_heap}m
YARN_RESOURCEMANAGER_OPTS=-Xmx${resourcemanager_heap}m
MAPRED_HISTORYSERVER_OPTS=-Xmx${historyserver_heap}m
HDFS_DATANODE_OPTS=-Xmx${datanode_heap}m
YARN_NODEMANAGER_OPTS=-Xmx${nodemanager_heap}m
ENV

write core-site.xml <<XML
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by stratus-hadoop-config; rewritten by stratus. -->
<configuration>
  <property><name>fs.defaultFS</name><value>hdfs://$master:8020</value></property>
  <property><name>hadoop.tmp.dir</name><value>$DATA_DIR/tmp</value></property>
</configuration>
XML

write hdfs-site.xml <<XML
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by stratus-hadoop-config; rewritten by stratus. -->
<configuration>
  <property><name>dfs.replication</name><value>$replication</value></property>
  <property><name>dfs.namenode.name.dir</name><value>file://$DATA_DIR/name</value></property>
  <property><name>dfs.datanode.data.dir</name><value>file://$DATA_DIR/data</value></property>
  <property><name>dfs.namenode.rpc-bind-host</name><value>0.0.0.0</value></property>
  <property><name>dfs.namenode.servicerpc-bind-host</name><value>0.0.0.0</value></property>
  <property><name>dfs.namenode.http-bind-host</name><value>0.0.0.0</value></property>
  <!-- Workers register by address: a VPC without DNS hostnames must work too. -->
  <property><name>dfs.namenode.datanode.registration.ip-hostname-check</name><value>false</value></property>
</configuration>
XML

write yarn-site.xml <<XML
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by stratus-hadoop-config; rewritten by stratus. -->
<configuration>
  <property><name>yarn.resourcemanager.hostname</name><value>$master</value></property>
  <property><name>yarn.resourcemanager.bind-host</name><value>0.0.0.0</value></property>
  <property><name>yarn.nodemanager.aux-services</name><value>mapreduce_shuffle</value></property>
  <property><name>yarn.nodemanager.env-whitelist</name><value>JAVA_HOME,HADOOP_COMMON_HOME,HADOOP_HDFS_HOME,HADOOP_CONF_DIR,CLASSPATH_PREPEND_DISTCACHE,HADOOP_YARN_HOME,HADOOP_HOME,PATH,LANG,TZ,HADOOP_MAPRED_HOME</value></property>
  <property><name>yarn.nodemanager.resource.memory-mb</name><value>$nodemanager_mb</value></property>
  <property><name>yarn.nodemanager.resource.cpu-vcores</name><value>$vcores</value></property>
  <property><name>yarn.scheduler.minimum-allocation-mb</name><value>512</value></property>
  <property><name>yarn.scheduler.maximum-allocation-mb</name><value>$max_allocation_mb</value></property>
  <property><name>yarn.nodemanager.pmem-check-enabled</name><value>true</value></property>
  <property><name>yarn.nodemanager.vmem-check-enabled</name><value>false</value></property>
  <property><name>yarn.log-aggregation-enable</name><value>true</value></property>
  <property><name>yarn.log.server.url</name><value>http://$master:19888/jobhistory/logs</value></property>
</configuration>
XML

write mapred-site.xml <<XML
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by stratus-hadoop-config; rewritten by stratus. -->
<configuration>
  <property><name>mapreduce.framework.name</name><value>yarn</value></property>
  <property><name>mapreduce.application.classpath</name><value>$HADOOP_HOME/share/hadoop/mapreduce/*:$HADOOP_HOME/share/hadoop/mapreduce/lib/*</value></property>
  <property><name>yarn.app.mapreduce.am.env</name><value>HADOOP_MAPRED_HOME=$HADOOP_HOME</value></property>
  <property><name>mapreduce.map.env</name><value>HADOOP_MAPRED_HOME=$HADOOP_HOME</value></property>
  <property><name>mapreduce.reduce.env</name><value>HADOOP_MAPRED_HOME=$HADOOP_HOME</value></property>
  <property><name>yarn.app.mapreduce.am.resource.mb</name><value>$am_mb</value></property>
  <property><name>yarn.app.mapreduce.am.command-opts</name><value>-Xmx${am_heap}m</value></property>
  <property><name>mapreduce.map.memory.mb</name><value>$map_mb</value></property>
  <property><name>mapreduce.map.java.opts</name><value>-Xmx${map_heap}m</value></property>
  <property><name>mapreduce.reduce.memory.mb</name><value>$reduce_mb</value></property>
  <property><name>mapreduce.reduce.java.opts</name><value>-Xmx${reduce_heap}m</value></property>
  <property><name>mapreduce.jobhistory.address</name><value>$master:10020</value></property>
  <property><name>mapreduce.jobhistory.webapp.address</name><value>0.0.0.0:19888</value></property>
</configuration>
XML
CONFIG
chmod 0755 "$R/usr/local/sbin/stratus-hadoop-config"

# A worker's start, once stratus has pushed the master's address.
cat > "$R/usr/local/sbin/stratus-hadoop-worker-start" <<'WORKER'
#!/bin/bash
# stratus-hadoop-worker-start: started by stratus-hadoop-worker.path once stratus has pushed the
# master's address; configures this worker for it and starts the DataNode and the NodeManager.
set -euo pipefail
# shellcheck source=/dev/null
. "${STRATUS_HADOOP_LIB:-${STRATUS_ROOT:-}/usr/local/lib/stratus/hadoop.sh}"
load_env
file="$HADOOP_USER_HOME/.stratus/hadoop-master"
master=$(tr -d '[:space:]' < "$file")
valid_address "$master" || die "$file does not hold an address"
"${STRATUS_HADOOP_CONFIG:-${STRATUS_ROOT:-}/usr/local/sbin/stratus-hadoop-config}" "$master"
systemctl enable hadoop-datanode.service hadoop-nodemanager.service
systemctl restart hadoop-datanode.service hadoop-nodemanager.service
WORKER
chmod 0755 "$R/usr/local/sbin/stratus-hadoop-worker-start"

# The install, run by stratus-install.service.
cat > "$R/usr/local/sbin/stratus-hadoop-install" <<'INSTALL'
#!/bin/bash
# stratus-hadoop-install: run once, at first boot, by stratus-install.service (started by the
# user-data). Installs Java and Hadoop unless the image has them, then on the master writes the
# configuration, formats HDFS and starts the NameNode, the ResourceManager and the JobHistory
# server; on a worker, a path unit starts its daemons once stratus names the master. With
# IMAGE_BUILD=true it installs only, removes the host keys, and starts nothing. Each step is a
# phase in /var/lib/stratus/phase; the last is `done`, or `failed: why`.
# shellcheck disable=SC2153 # The settings (ROLE, ...) come from install.env.
set -Eeuo pipefail
umask 022
R=${STRATUS_ROOT:-}
# shellcheck source=/dev/null
. "$R/usr/local/lib/stratus/hadoop.sh"
set -a
# shellcheck source=/dev/null
. "${STRATUS_INSTALL_ENV:-$R/etc/stratus/install.env}"
set +a
delay=${STRATUS_RETRY_DELAY:-15}
read -ra sources <<< "$HADOOP_SOURCES"
read -ra checksums <<< "$HADOOP_CHECKSUMS"
step=starting
trap 'phase "failed: $step (line $LINENO)"' ERR

# fail WHY: the install's end, with its reason.
fail() {
    phase "failed: $*"
    exit 1
}

# next TEXT: the next phase.
next() {
    step=$*
    phase "$*"
}

# fetch URL DEST: one download, over HTTPS; an s3://BUCKET/KEY from the bucket's endpoint in
# this node's region, signed with the instance profile's credentials when the node has one (else
# the bucket's policy must let the node read, e.g. through the VPC's S3 endpoint).
fetch() {
    local url=$1 dest=$2 rest bucket region role creds
    if [[ $url != s3://* ]]; then
        curl -fsSL --connect-timeout 20 --retry 3 --retry-delay 5 -o "$dest" "$url"
        return
    fi
    rest=${url#s3://}
    bucket=${rest%%/*}
    region=$(imds placement/region) || return 1
    url="https://$bucket.s3.$region.amazonaws.com/${rest#*/}"
    role=$(imds iam/security-credentials/ 2> /dev/null | head -n 1) || role=
    if [ -z "$role" ]; then
        curl -fsSL --connect-timeout 20 --retry 3 --retry-delay 5 -o "$dest" "$url"
        return
    fi
    creds=$(imds "iam/security-credentials/$role") || return 1
    # The credentials go to curl on its standard input, never on its command line.
    printf 'user = "%s:%s"\nheader = "x-amz-security-token: %s"\n' \
        "$(field AccessKeyId "$creds")" "$(field SecretAccessKey "$creds")" \
        "$(field Token "$creds")" |
        curl -K - --aws-sigv4 "aws:amz:$region:s3" -fsSL --connect-timeout 20 --retry 3 \
            --retry-delay 5 -o "$dest" "$url"
}

# field NAME JSON: a string field of the metadata service's JSON.
field() {
    sed -n "s/.*\"$1\" *: *\"\([^\"]*\)\".*/\1/p" <<< "$2" | head -n 1
}

# install_java_and_hadoop: from the sources, in order, each retried.
install_java_and_hadoop() {
    local tarball expected source got=
    next "installing java"
    export DEBIAN_FRONTEND=noninteractive
    retry 5 "$delay" apt-get -q -y -o DPkg::Lock::Timeout=600 update ||
        fail "apt-get update failed"
    retry 5 "$delay" apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends \
        "$JAVA_PACKAGE" curl ca-certificates || fail "apt-get could not install $JAVA_PACKAGE"

    tarball="hadoop-$HADOOP_VERSION.tar.gz"
    if [ "$HADOOP_LEAN" = true ]; then
        tarball="hadoop-$HADOOP_VERSION-lean.tar.gz"
    fi
    mkdir -p "$R/var/tmp"
    cd "$R/var/tmp"
    expected=$HADOOP_SHA512
    if [ -z "$expected" ]; then
        next "fetching the checksum of $tarball"
        for source in "${checksums[@]}"; do
            if retry 3 "$delay" fetch "$source/hadoop-$HADOOP_VERSION/$tarball.sha512" \
                "$tarball.sha512"; then
                expected=$(grep -oE '[0-9a-fA-F]{128}' "$tarball.sha512" | head -n 1 || true)
            fi
            if [ -n "$expected" ]; then
                break
            fi
        done
        [ -n "$expected" ] ||
            fail "no checksum of $tarball from $HADOOP_CHECKSUMS (pin vars.hadoop_sha512)"
    fi
    for source in "${sources[@]}"; do
        next "downloading hadoop from $source"
        if ! retry 3 "$delay" fetch "$source/hadoop-$HADOOP_VERSION/$tarball" "$tarball"; then
            continue
        fi
        if echo "$expected  $tarball" | sha512sum -c --status -; then
            got=$source
            break
        fi
        echo "stratus: $tarball from $source does not have SHA-512 $expected" >&2
        rm -f "$tarball"
    done
    [ -n "$got" ] || fail "no source had $tarball with its SHA-512 (tried $HADOOP_SOURCES)"
    next "unpacking hadoop"
    mkdir -p "$HADOOP_HOME"
    tar -xzf "$tarball" -C "$HADOOP_HOME" --strip-components=1
    rm -f "$tarball" "$tarball.sha512"
    echo "hadoop $HADOOP_VERSION" > "$HADOOP_HOME/.stratus-installed"
    cd /
}

# unit NAME DESCRIPTION COMMAND...: a systemd service running a Hadoop daemon in the foreground.
unit() {
    local name=$1 description=$2
    shift 2
    cat > "$R/etc/systemd/system/$name.service" <<UNIT
[Unit]
Description=$description (stratus)
After=network-online.target
Wants=network-online.target

[Service]
User=$HADOOP_USER
EnvironmentFile=$R/etc/stratus/hadoop.env
EnvironmentFile=-$HADOOP_HOME/etc/hadoop/stratus-daemons.env
ExecStart=$*
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
}

# 1. Java and Hadoop: from the image (baked by `stratus admin image build`, or the site's own
#    with vars.hadoop_preinstalled), else from the sources.
next "checking the image"
if [ "$HADOOP_PREINSTALLED" = true ]; then
    [ -x "$HADOOP_HOME/bin/hdfs" ] ||
        fail "vars.hadoop_preinstalled is true, but $HADOOP_HOME/bin/hdfs is not there"
    command -v java > /dev/null || fail "vars.hadoop_preinstalled is true, but there is no java"
elif [ -x "$HADOOP_HOME/bin/hdfs" ] && command -v java > /dev/null &&
    [ "$(cat "$HADOOP_HOME/.stratus-installed" 2> /dev/null)" = "hadoop $HADOOP_VERSION" ]; then
    echo "stratus: the image has hadoop $HADOOP_VERSION and java"
else
    install_java_and_hadoop
fi

next "setting up hadoop"
java_home=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
cat > "$R/etc/stratus/hadoop.env" <<ENV
HADOOP_VERSION=$HADOOP_VERSION
HADOOP_HOME=$HADOOP_HOME
HADOOP_CONF_DIR=$HADOOP_HOME/etc/hadoop
HADOOP_LOG_DIR=$DATA_DIR/logs
HADOOP_PID_DIR=$DATA_DIR/pid
HADOOP_USER=$HADOOP_USER
HADOOP_USER_HOME=$HADOOP_USER_HOME
HDFS_REPLICATION=$HDFS_REPLICATION
DATA_DIR=$DATA_DIR
JAVA_HOME=$java_home
ENV
load_env
group=$(id -gn "$HADOOP_USER")
install -d -o "$HADOOP_USER" -g "$group" "$DATA_DIR" "$DATA_DIR/tmp" "$DATA_DIR/logs" \
    "$DATA_DIR/pid"

# For Hadoop's own scripts (start-dfs.sh logs in to the nodes with the intra-cluster key) and for
# login shells.
if ! grep -q '^# stratus$' "$HADOOP_CONF_DIR/hadoop-env.sh"; then
    cat >> "$HADOOP_CONF_DIR/hadoop-env.sh" <<ENV
# stratus
export JAVA_HOME=$java_home
export HADOOP_LOG_DIR=$DATA_DIR/logs
export HADOOP_PID_DIR=$DATA_DIR/pid
export HADOOP_SSH_OPTS="-o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=10s -i $HADOOP_USER_HOME/.ssh/stratus_cluster_ed25519"
if [ -f "$HADOOP_CONF_DIR/stratus-daemons.env" ]; then
    set -a
    . "$HADOOP_CONF_DIR/stratus-daemons.env"
    set +a
fi
ENV
fi
mkdir -p "$R/etc/profile.d"
cat > "$R/etc/profile.d/hadoop.sh" <<PROFILE
export JAVA_HOME=$java_home
export HADOOP_HOME=$HADOOP_HOME
export HADOOP_CONF_DIR=$HADOOP_CONF_DIR
export PATH="\$PATH:$HADOOP_HOME/bin:$HADOOP_HOME/sbin"
PROFILE

# 2. An image build ends here: nothing started, and no host keys (each instance makes its own).
#    The image keeps this `done`: an instance of it forgets it at its first boot, before sshd
#    starts, so that stratus waits for that instance's own install.
if [ "$IMAGE_BUILD" = true ]; then
    next "removing the host keys"
    cat > "$R/etc/systemd/system/stratus-forget-phase.service" <<UNIT
[Unit]
Description=Forget the phase of the image build (stratus)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target ssh.socket ssh.service
ConditionPathExists=$STRATUS_STATE_DIR/baked

[Service]
Type=oneshot
ExecStart=/bin/rm -f $STRATUS_STATE_DIR/phase $STRATUS_STATE_DIR/phases $STRATUS_STATE_DIR/baked

[Install]
WantedBy=sysinit.target
UNIT
    systemctl enable stratus-forget-phase.service
    touch "$STRATUS_STATE_DIR/baked"
    rm -f "$STRATUS_SSH_DIR"/ssh_host_*
    phase "done"
    exit 0
fi

# 3. The daemons.
if [ "$ROLE" = master ]; then
    unit hadoop-namenode "HDFS NameNode" "$HADOOP_HOME/bin/hdfs" namenode
    unit hadoop-resourcemanager "YARN ResourceManager" "$HADOOP_HOME/bin/yarn" resourcemanager
    unit hadoop-historyserver "MapReduce JobHistory server" "$HADOOP_HOME/bin/mapred" historyserver
    next "configuring hadoop"
    "$R/usr/local/sbin/stratus-hadoop-config" "$(own_address)"
    if [ ! -e "$DATA_DIR/name/current/VERSION" ]; then
        next "formatting hdfs"
        as_hadoop_user "$HADOOP_HOME/bin/hdfs" namenode -format -nonInteractive \
            -clusterId "$CLUSTER"
    fi
    next "starting the namenode, the resourcemanager and the historyserver"
    systemctl daemon-reload
    systemctl enable --now hadoop-namenode.service hadoop-resourcemanager.service \
        hadoop-historyserver.service
else
    unit hadoop-datanode "HDFS DataNode" "$HADOOP_HOME/bin/hdfs" datanode
    unit hadoop-nodemanager "YARN NodeManager" "$HADOOP_HOME/bin/yarn" nodemanager
    # The configure step pushes the master's address to .stratus/hadoop-master (the profile's
    # [[files]]); the path unit starts this worker as soon as it is there, even if it came first.
    next "waiting for stratus to name the master"
    cat > "$R/etc/systemd/system/stratus-hadoop-worker.path" <<UNIT
[Unit]
Description=Wait for stratus to name the master (stratus)

[Path]
PathExists=$HADOOP_USER_HOME/.stratus/hadoop-master

[Install]
WantedBy=multi-user.target
UNIT
    cat > "$R/etc/systemd/system/stratus-hadoop-worker.service" <<UNIT
[Unit]
Description=Configure this worker for its master and start its daemons (stratus)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=$R/usr/local/sbin/stratus-hadoop-worker-start
UNIT
    systemctl daemon-reload
    systemctl enable --now stratus-hadoop-worker.path
fi
phase "done"
INSTALL
chmod 0755 "$R/usr/local/sbin/stratus-hadoop-install"

# The install's settings, read by the unit (systemd) and by the install (bash): plain values.
cat > "$R/etc/stratus/install.env" <<ENV
ROLE=$role
CLUSTER=demo
IMAGE_BUILD=$image_build
HADOOP_VERSION=$hadoop_version
HADOOP_HOME=$R$hadoop_home
HADOOP_USER=$hadoop_user
HADOOP_USER_HOME=$user_home
DATA_DIR=$R$data_dir
HDFS_REPLICATION=$replication
JAVA_PACKAGE=$java_package
HADOOP_PREINSTALLED=$preinstalled
HADOOP_LEAN=$lean
HADOOP_SHA512=$sha512
HADOOP_SOURCES="${sources[*]}"
HADOOP_CHECKSUMS="${checksums[*]}"
STRATUS_ROOT=$R
STRATUS_STATE_DIR=$STATE
STRATUS_SSH_DIR=$ssh_dir
ENV

# 3. The install, detached: the user-data returns now, and cloud-init goes on.
cat > "$R/etc/systemd/system/stratus-install.service" <<UNIT
[Unit]
Description=Install and start Hadoop (stratus; its phase is in $STATE/phase)
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=infinity
EnvironmentFile=$R/etc/stratus/install.env
ExecStart=$R/usr/local/sbin/stratus-hadoop-install
UNIT
phase "waiting for the install to start"
systemctl daemon-reload
systemctl start --no-block stratus-install.service
echo "stratus: the install runs in stratus-install.service (journalctl -u stratus-install)"
