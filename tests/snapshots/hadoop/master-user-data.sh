#!/bin/bash
# stratus: user-data of a master of Hadoop cluster demo (owner alice, request
# req-0123456789abcdef), the same for every master: they launch in one call. cloud-init runs it once,
# as root, at first boot. It installs Java and
# Hadoop unless the image has them, writes the helper scripts, and then
# - on the master: writes Hadoop's configuration for its own address, formats HDFS and starts the
#   NameNode, the ResourceManager and the JobHistory server;
# - on a worker: waits until stratus names the master (a file pushed over SSH once every node
#   answers), then writes its configuration and starts a DataNode and a NodeManager.
# Nothing secret belongs here: anything on the instance can read its user-data.
# A failure anywhere (functions included: errtrace) leaves boot-failed for the configure step.
set -Eeuo pipefail
umask 022

readonly STATE=/var/lib/stratus
mkdir -p "$STATE" /etc/stratus /usr/local/lib/stratus
exec > >(tee -a /var/log/stratus-boot.log) 2>&1
trap 'echo "line $LINENO failed" > "$STATE/boot-failed"' ERR
echo "stratus: booting a master of demo"

role=master
hadoop_version=3.4.1
hadoop_home=/opt/hadoop
hadoop_user=ubuntu
data_dir=/var/lib/hadoop
replication=3
# These go into an environment file that both bash and systemd read: plain characters only.
for value in "$hadoop_version" "$hadoop_home" "$hadoop_user" "$data_dir" "$replication"; do
    if [[ ! $value =~ ^[A-Za-z0-9_./:-]+$ ]]; then
        echo "stratus: unsafe profile value: $value" >&2
        exit 1
    fi
done
user_home=$(getent passwd "$hadoop_user" | cut -d: -f6)
if [ -z "$user_home" ]; then
    echo "stratus: the image has no user $hadoop_user" >&2
    exit 1
fi

# Helpers shared by the boot, the worker start and the configure step.
cat > /usr/local/lib/stratus/hadoop.sh <<'LIB'
# stratus's Hadoop helpers (sourced).

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
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
    . "${STRATUS_HADOOP_ENV:-/etc/stratus/hadoop.env}"
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

LIB
# shellcheck source=/dev/null
. /usr/local/lib/stratus/hadoop.sh

# Hadoop's site files for a master address, written atomically; run at boot on the master, by a
# worker once it knows the master, and by the configure step (which also sets the replication).
cat > /usr/local/sbin/stratus-hadoop-config <<'CONFIG'
#!/bin/bash
# stratus-hadoop-config MASTER [REPLICATION]: writes Hadoop's core, hdfs, yarn and mapred site
# files for a cluster whose master has the private address MASTER.
set -euo pipefail
# shellcheck source=/dev/null
. "${STRATUS_HADOOP_LIB:-/usr/local/lib/stratus/hadoop.sh}"
load_env
master=${1:?usage: stratus-hadoop-config MASTER_ADDRESS [REPLICATION]}
replication=${2:-$HDFS_REPLICATION}
valid_address "$master" || die "not an address: $master"
[[ $replication =~ ^[1-9][0-9]*$ ]] || die "not a number of replicas: $replication"
# YARN hands out three quarters of the memory, and every core.
memory_mb=$(awk '/^MemTotal:/ { printf "%d", $2 * 3 / 4 / 1024 }' /proc/meminfo)
vcores=$(nproc)

write() {
    cat > "$HADOOP_CONF_DIR/$1.tmp"
    mv -f "$HADOOP_CONF_DIR/$1.tmp" "$HADOOP_CONF_DIR/$1"
}

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
  <property><name>yarn.nodemanager.resource.memory-mb</name><value>$memory_mb</value></property>
  <property><name>yarn.nodemanager.resource.cpu-vcores</name><value>$vcores</value></property>
  <property><name>yarn.scheduler.maximum-allocation-mb</name><value>$memory_mb</value></property>
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
  <property><name>mapreduce.jobhistory.address</name><value>$master:10020</value></property>
  <property><name>mapreduce.jobhistory.webapp.address</name><value>0.0.0.0:19888</value></property>
</configuration>
XML
CONFIG
chmod 0755 /usr/local/sbin/stratus-hadoop-config

# A worker's start, once stratus has pushed the master's address.
cat > /usr/local/sbin/stratus-hadoop-worker-start <<'WORKER'
#!/bin/bash
# stratus-hadoop-worker-start: started by stratus-hadoop-worker.path once stratus has pushed the
# master's address; configures this worker for it and starts the DataNode and the NodeManager.
set -euo pipefail
# shellcheck source=/dev/null
. "${STRATUS_HADOOP_LIB:-/usr/local/lib/stratus/hadoop.sh}"
load_env
file="$HADOOP_USER_HOME/.stratus/hadoop-master"
master=$(tr -d '[:space:]' < "$file")
valid_address "$master" || die "$file does not hold an address"
"${STRATUS_HADOOP_CONFIG:-/usr/local/sbin/stratus-hadoop-config}" "$master"
systemctl enable hadoop-datanode.service hadoop-nodemanager.service
systemctl restart hadoop-datanode.service hadoop-nodemanager.service
WORKER
chmod 0755 /usr/local/sbin/stratus-hadoop-worker-start

# Java and Hadoop.
export DEBIAN_FRONTEND=noninteractive
apt_get() {
    apt-get -q -y -o DPkg::Lock::Timeout=600 "$@"
}
retry 5 15 apt_get update
retry 5 15 apt_get install --no-install-recommends openjdk-11-jre-headless curl ca-certificates
mirrors=(https://dlcdn.apache.org/hadoop/common https://archive.apache.org/dist/hadoop/common )
tarball="hadoop-$hadoop_version.tar.gz"
# download PATH DEST: PATH from the first mirror that has it.
download() {
    local mirror
    for mirror in "${mirrors[@]}"; do
        if curl -fsSL --connect-timeout 20 --retry 3 --retry-delay 5 -o "$2" "$mirror/$1"; then
            return 0
        fi
    done
    return 1
}
cd /var/tmp
retry 3 30 download "hadoop-$hadoop_version/$tarball" "$tarball"
sha512=''
if [ -z "$sha512" ]; then
    retry 3 30 curl -fsSL --connect-timeout 20 -o "$tarball.sha512" \
        "https://archive.apache.org/dist/hadoop/common/hadoop-$hadoop_version/$tarball.sha512"
    sha512=$(grep -oE '[0-9a-fA-F]{128}' "$tarball.sha512" | head -n 1)
fi
echo "$sha512  $tarball" | sha512sum -c -
mkdir -p "$hadoop_home"
tar -xzf "$tarball" -C "$hadoop_home" --strip-components=1
rm -f "$tarball" "$tarball.sha512"
cd /
java_home=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")

cat > /etc/stratus/hadoop.env <<ENV
HADOOP_VERSION=$hadoop_version
HADOOP_HOME=$hadoop_home
HADOOP_CONF_DIR=$hadoop_home/etc/hadoop
HADOOP_LOG_DIR=$data_dir/logs
HADOOP_PID_DIR=$data_dir/pid
HADOOP_USER=$hadoop_user
HADOOP_USER_HOME=$user_home
HDFS_REPLICATION=$replication
DATA_DIR=$data_dir
JAVA_HOME=$java_home
ENV
load_env
group=$(id -gn "$hadoop_user")
install -d -o "$hadoop_user" -g "$group" "$data_dir" "$data_dir/tmp" "$data_dir/logs" "$data_dir/pid"

# For Hadoop's own scripts (start-dfs.sh logs in to the nodes with the intra-cluster key) and for
# login shells.
if ! grep -q '^# stratus$' "$HADOOP_CONF_DIR/hadoop-env.sh"; then
    cat >> "$HADOOP_CONF_DIR/hadoop-env.sh" <<ENV
# stratus
export JAVA_HOME=$java_home
export HADOOP_LOG_DIR=$data_dir/logs
export HADOOP_PID_DIR=$data_dir/pid
export HADOOP_SSH_OPTS="-o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=10s -i $user_home/.ssh/stratus_cluster_ed25519"
ENV
fi
cat > /etc/profile.d/hadoop.sh <<PROFILE
export JAVA_HOME=$java_home
export HADOOP_HOME=$hadoop_home
export HADOOP_CONF_DIR=$hadoop_home/etc/hadoop
export PATH="\$PATH:$hadoop_home/bin:$hadoop_home/sbin"
PROFILE

# unit NAME DESCRIPTION COMMAND...: a systemd service running a Hadoop daemon in the foreground.
unit() {
    local name=$1 description=$2
    shift 2
    cat > "/etc/systemd/system/$name.service" <<UNIT
[Unit]
Description=$description (stratus)
After=network-online.target
Wants=network-online.target

[Service]
User=$hadoop_user
EnvironmentFile=/etc/stratus/hadoop.env
ExecStart=$*
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
}

if [ "$role" = master ]; then
    unit hadoop-namenode "HDFS NameNode" "$hadoop_home/bin/hdfs" namenode
    unit hadoop-resourcemanager "YARN ResourceManager" "$hadoop_home/bin/yarn" resourcemanager
    unit hadoop-historyserver "MapReduce JobHistory server" "$hadoop_home/bin/mapred" historyserver
    /usr/local/sbin/stratus-hadoop-config "$(own_address)"
    if [ ! -e "$data_dir/name/current/VERSION" ]; then
        as_hadoop_user "$hadoop_home/bin/hdfs" namenode -format -nonInteractive \
            -clusterId demo
    fi
    systemctl daemon-reload
    systemctl enable --now hadoop-namenode.service hadoop-resourcemanager.service \
        hadoop-historyserver.service
else
    unit hadoop-datanode "HDFS DataNode" "$hadoop_home/bin/hdfs" datanode
    unit hadoop-nodemanager "YARN NodeManager" "$hadoop_home/bin/yarn" nodemanager
    # The configure step pushes the master's address to .stratus/hadoop-master (the profile's
    # [[files]]); the path unit starts this worker as soon as it is there, even if it came first.
    cat > /etc/systemd/system/stratus-hadoop-worker.path <<UNIT
[Unit]
Description=Wait for stratus to name the master (stratus)

[Path]
PathExists=$user_home/.stratus/hadoop-master

[Install]
WantedBy=multi-user.target
UNIT
    cat > /etc/systemd/system/stratus-hadoop-worker.service <<UNIT
[Unit]
Description=Configure this worker for its master and start its daemons (stratus)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/stratus-hadoop-worker-start
UNIT
    systemctl daemon-reload
    systemctl enable --now stratus-hadoop-worker.path
fi

echo "finished $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$STATE/boot-finished"
echo "stratus: the master booted"
