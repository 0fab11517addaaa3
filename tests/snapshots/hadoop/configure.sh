#!/bin/bash
# stratus: configures Hadoop cluster demo from its master, once every node answers SSH and
# again whenever workers are added or the workers file is rewritten. Runs as ubuntu
# on demo-master; stratus has just written .stratus/workers (one worker address per
# line) and, with the profile's intra_cluster_key, the cluster's own SSH key.
set -euo pipefail
cd "$HOME"

# The state directory and helper paths can be moved for the profile's tests.
readonly STATE=${STRATUS_STATE_DIR:-/var/lib/stratus}
readonly REGISTER_TIMEOUT=600
readonly WORKERS_FILE=.stratus/workers
readonly INTRA_KEY="$HOME/.ssh/stratus_cluster_ed25519"

fail() {
    echo "hadoop-configure: $*" >&2
    exit 1
}

# 1. The master's install: stratus waited for its phase `done` (the profile's boot_timeout_secs)
#    before running this; a master that is not there is an error, not something to wait for.
phase=$(tail -n 1 "$STATE/phase" 2> /dev/null || true)
if [ "$phase" != "done" ]; then
    echo "hadoop-configure: the master's install has not finished (phase: ${phase:-none}); the end of its log (journalctl -u stratus-install):" >&2
    sudo journalctl -u stratus-install.service -n 20 --no-pager >&2 || true
    exit 1
fi
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

# 3. The intra-cluster key: the master (and Hadoop's start-*.sh scripts) log in to every node
#    with it. Each worker tells its memory on the way: containers are sized for the smallest.
worker_kb=
if [ -f "$INTRA_KEY" ]; then
    config="$HOME/.ssh/config"
    touch "$config"
    chmod 600 "$config"
    sed -i '/^# BEGIN stratus intra-cluster$/,/^# END stratus intra-cluster$/d' "$config"
    {
        echo '# BEGIN stratus intra-cluster'
        echo "Host $(own_address) ${workers[*]}"
        echo "    IdentityFile $INTRA_KEY"
        echo '    StrictHostKeyChecking accept-new'
        echo '# END stratus intra-cluster'
    } >> "$config"
    for worker in "${workers[@]}"; do
        kb=$(ssh -n -o BatchMode=yes -o ConnectTimeout=10 "$worker" \
            "awk '/^MemTotal:/ { print \$2 }' /proc/meminfo") ||
            fail "the master cannot log in to worker $worker with the intra-cluster key"
        [[ $kb =~ ^[1-9][0-9]*$ ]] || fail "worker $worker did not tell its memory: $kb"
        if [ -z "$worker_kb" ] || ((kb < worker_kb)); then
            worker_kb=$kb
        fi
    done
fi

# 4. The master's configuration, with no more replicas per block than there are workers (one
#    worker: one replica, and nothing survives that worker's loss), and containers that fit the
#    smallest worker. The ResourceManager reads its limits at start: restarted if they changed.
replication=$HDFS_REPLICATION
if ((count > 0 && count < replication)); then
    replication=$count
fi
master=$(own_address)
before=$(cat "$HADOOP_CONF_DIR/yarn-site.xml" 2> /dev/null || true)
sudo "${STRATUS_HADOOP_CONFIG:-/usr/local/sbin/stratus-hadoop-config}" "$master" "$replication" \
    ${worker_kb:+"$worker_kb"}
if [ "$before" != "$(cat "$HADOOP_CONF_DIR/yarn-site.xml")" ]; then
    sudo systemctl restart hadoop-resourcemanager.service
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
