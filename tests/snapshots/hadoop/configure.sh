#!/bin/bash
# stratus: configures Hadoop cluster demo from its master, once every node answers SSH and
# again whenever workers are added or the workers file is rewritten. Runs as ubuntu
# on demo-master; stratus has just written .stratus/workers (one worker address per
# line) and, with the profile's intra_cluster_key, the cluster's own SSH key.
set -euo pipefail
cd "$HOME"

# The state directory and helper paths can be moved for the profile's tests.
readonly STATE=${STRATUS_STATE_DIR:-/var/lib/stratus}
readonly BOOT_TIMEOUT=1200
readonly REGISTER_TIMEOUT=600
readonly WORKERS_FILE=.stratus/workers
readonly INTRA_KEY="$HOME/.ssh/stratus_cluster_ed25519"

fail() {
    echo "hadoop-configure: $*" >&2
    exit 1
}

# 1. The master's own boot: it may still be installing Java and Hadoop.
if command -v cloud-init > /dev/null 2>&1; then
    timeout "$BOOT_TIMEOUT" cloud-init status --wait > /dev/null 2>&1 || true
fi
deadline=$((SECONDS + BOOT_TIMEOUT))
while [ ! -e "$STATE/boot-finished" ]; do
    if [ -e "$STATE/boot-failed" ]; then
        echo "hadoop-configure: the master's boot failed ($(cat "$STATE/boot-failed")); the end of /var/log/stratus-boot.log:" >&2
        sudo tail -n 20 /var/log/stratus-boot.log >&2 || true
        exit 1
    fi
    ((SECONDS < deadline)) || fail "the master's boot did not finish within ${BOOT_TIMEOUT}s"
    sleep 5
done
# shellcheck source=/dev/null
. "${STRATUS_HADOOP_LIB:-/usr/local/lib/stratus/hadoop.sh}"
load_env
export PATH="$HADOOP_HOME/bin:$PATH"

# 2. Hadoop's workers file, on the addresses the nodes reach each other at.
workers=()
while read -r address; do
    [ -n "$address" ] || continue
    valid_address "$address" || fail "$WORKERS_FILE holds something that is not an address: $address"
    workers+=("$address")
done < "$WORKERS_FILE"
count=${#workers[@]}
if ((count > 0)); then
    printf '%s\n' "${workers[@]}"
fi | sudo tee "$HADOOP_CONF_DIR/workers" > /dev/null

# 3. The master's configuration, with no more replicas per block than there are workers.
replication=$HDFS_REPLICATION
if ((count > 0 && count < replication)); then
    replication=$count
fi
master=$(own_address)
sudo "${STRATUS_HADOOP_CONFIG:-/usr/local/sbin/stratus-hadoop-config}" "$master" "$replication"

# 4. The intra-cluster key: the master (and Hadoop's start-*.sh scripts) log in to every node
#    with it.
if [ -f "$INTRA_KEY" ]; then
    config="$HOME/.ssh/config"
    touch "$config"
    chmod 600 "$config"
    sed -i '/^# BEGIN stratus intra-cluster$/,/^# END stratus intra-cluster$/d' "$config"
    {
        echo '# BEGIN stratus intra-cluster'
        echo "Host $master ${workers[*]}"
        echo "    IdentityFile $INTRA_KEY"
        echo '    StrictHostKeyChecking accept-new'
        echo '# END stratus intra-cluster'
    } >> "$config"
    for worker in "${workers[@]}"; do
        ssh -n -o BatchMode=yes -o ConnectTimeout=10 "$worker" true \
            || fail "the master cannot log in to worker $worker with the intra-cluster key"
    done
fi

# 5. Every worker registered: its DataNode with the NameNode, its NodeManager with the
#    ResourceManager.
deadline=$((SECONDS + REGISTER_TIMEOUT))
while :; do
    live=$(hdfs dfsadmin -report -live 2> /dev/null | grep -c '^Name:' || true)
    running=$(yarn node -list -states RUNNING 2> /dev/null | grep -cw 'RUNNING' || true)
    if ((live >= count && running >= count)); then
        break
    fi
    if ((SECONDS >= deadline)); then
        echo "hadoop-configure: after ${REGISTER_TIMEOUT}s, $live of $count DataNodes are live and $running of $count NodeManagers are running" >&2
        exit 1
    fi
    sleep 5
done
echo "HDFS: $live of $count DataNodes live; YARN: $running of $count NodeManagers running"

# 6. The user's home directory in HDFS.
hdfs dfs -mkdir -p "/user/$(id -un)"
